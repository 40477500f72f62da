"""nb2task's Jinja2 templates (``nb2task/templates``), rendered the same way everywhere.

Every value that comes from a notebook, its metadata, its parameters or a flag goes
through a serializer filter, never into a template as raw text: ``yaml`` (one YAML
scalar), ``tojson`` (JSON) or ``docker_word`` (a Dockerfile double-quoted word).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from .errors import BuildError

TEMPLATES = Path(__file__).parent / "templates"


def control_characters(text: str) -> list[str]:
    """The control characters (Unicode category Cc, newline included) in ``text``."""
    return sorted({c for c in text if unicodedata.category(c) == "Cc"})


# Characters a YAML double-quoted scalar must escape: YAML 1.1 reads NEL, U+2028 and
# U+2029 as line breaks, and a BOM inside a document is an error.
_YAML_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r",
    "\x85": "\\N", "\u2028": "\\L", "\u2029": "\\P",
}  # fmt: skip


# What a YAML reader takes as itself (PyYAML's printable set): anything else, control
# characters, U+FFFE and U+FFFF among them, is written as an escape.
_YAML_PRINTABLE = re.compile(
    "[\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def _yaml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[char])
        elif unicodedata.category(char) == "Cs":
            raise BuildError(f"{text!r} has a lone surrogate: not Unicode text")
        elif not _YAML_PRINTABLE.fullmatch(char) or char == "\ufeff":
            code = ord(char)
            out.append(f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}")
        else:
            # Written as itself, never as a \U escape: emoji stay one character.
            out.append(char)
    return '"' + "".join(out) + '"'


def yaml_scalar(value: Any) -> str:
    """``value`` as one YAML flow node on one line: strings double-quoted, so any text
    (quotes, newlines, ``#``, ``: ``, emoji, U+2028) parses back exactly."""
    if isinstance(value, str):
        return _yaml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_yaml_string(str(k))}: {yaml_scalar(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    text: str = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1)
    return text.removesuffix("\n").removesuffix("...").strip()


def docker_word(value: Any, field: str = "value") -> str:
    """``value`` as one Dockerfile double-quoted word: ``\\``, ``"`` and ``$`` escaped, so
    Docker neither ends the word nor substitutes variables; control characters refused
    (a newline would start a new instruction)."""
    text = str(value)
    bad = control_characters(text)
    if bad:
        raise BuildError(f"{field} {text!r} has control characters ({', '.join(map(repr, bad))})")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def render(template: str, values: dict[str, Any]) -> str:
    """Render one of nb2task's templates."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Dockerfiles, YAML and Markdown, not HTML
    )
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=True)
    env.filters["yaml"] = yaml_scalar
    env.filters["docker_word"] = docker_word
    # A Markdown table cell: no pipe or newline may break the row.
    env.filters["cell"] = lambda value: str(value).replace("|", "\\|").replace("\n", " ")
    return env.get_template(template).render(**values)
