"""nb2task's Jinja2 templates (``nb2task/templates``), rendered the same way everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


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
    # A Markdown table cell: no pipe or newline may break the row.
    env.filters["cell"] = lambda value: str(value).replace("|", "\\|").replace("\n", " ")
    return env.get_template(template).render(**values)
