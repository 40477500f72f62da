"""Secrets kept out of what a run writes: the executed notebook, its HTML, the logs.

A notebook that prints an environment secret would otherwise put it into the record,
which is uploaded. The values of secret environment variables are replaced by
``[REDACTED:NAME]`` wherever nb2task writes text: in the notebook before each save (so
the HTML, rendered from it, is clean too), and in every log line and error line.

Secret: ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, and any variable whose name
says SECRET, TOKEN, PASSWORD or KEY, with a value of at least 8 characters (shorter
values, like ``KEY_COUNT=3``, would redact innocent text).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

ALWAYS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|KEY", re.IGNORECASE)
MIN_LENGTH = 8


def secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret value -> the name of its variable, longest values first."""
    environ = os.environ if environ is None else environ
    found = {
        value: name
        for name, value in environ.items()
        if (name in ALWAYS or SECRET_NAME.search(name)) and len(value) >= MIN_LENGTH
    }
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def redact(text: str, found: dict[str, str] | None = None) -> str:
    """``text`` with every secret value replaced by ``[REDACTED:NAME]``."""
    for value, name in (secrets() if found is None else found).items():
        if value in text:
            text = text.replace(value, f"[REDACTED:{name}]")
    return text


def redact_notebook(node: Any, found: dict[str, str] | None = None) -> None:
    """Redact, in place, every piece of text in a notebook: sources, outputs (streams,
    display data, errors and tracebacks) and metadata (the injected parameters), keys as
    well as values (a MIME type, a metadata key). Consecutive stream outputs of one name
    are merged first, as Jupyter shows them: a secret printed in two flushes is whole."""
    found = secrets() if found is None else found
    if found:
        for cell in node.get("cells", []) if isinstance(node, dict) else []:
            if isinstance(cell, dict) and isinstance(cell.get("outputs"), list):
                merge_streams(cell["outputs"])
        _walk(node, found)


def merge_streams(outputs: list[Any]) -> None:
    """Merge, in place, consecutive ``stream`` outputs of the same name into one."""
    merged: list[Any] = []
    for out in outputs:
        before = merged[-1] if merged else None
        if (
            isinstance(out, dict)
            and isinstance(before, dict)
            and out.get("output_type") == before.get("output_type") == "stream"
            and out.get("name") == before.get("name")
        ):
            before["text"] = _joined(before.get("text", "")) + _joined(out.get("text", ""))
        else:
            merged.append(out)
    if len(merged) != len(outputs):
        outputs[:] = merged


def _joined(text: Any) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def appears_in(text: str, found: dict[str, str]) -> bool:
    """Whether a secret value is in ``text``, as it is or as JSON escapes it (``text``
    may be a notebook's JSON): a quick test before walking a whole notebook."""
    return any(
        value in text or json.dumps(value, ensure_ascii=False)[1:-1] in text for value in found
    )


def _walk(value: Any, found: dict[str, str]) -> Any:
    if isinstance(value, str):
        return redact(value, found)
    # Only what changed is assigned: a notebook node converts every value assigned to it.
    if isinstance(value, dict):
        for key, element in value.items():
            redacted = _walk(element, found)
            if redacted is not element:
                value[key] = redacted
        if any(isinstance(key, str) and redact(key, found) != key for key in value):
            # A secret as a key (a MIME type, a metadata key): rebuilt, order kept.
            items = [(redact(k, found) if isinstance(k, str) else k, v) for k, v in value.items()]
            value.clear()
            value.update(items)
    elif isinstance(value, list):
        for index, element in enumerate(value):
            redacted = _walk(element, found)
            if redacted is not element:
                value[index] = redacted
    return value


class RedactingFilter(logging.Filter):
    """Redacts secrets from a log record's message (and arguments) before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = secrets()
        if found:
            record.msg = redact(record.getMessage(), found)
            record.args = None
        return True
