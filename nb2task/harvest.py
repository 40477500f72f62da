"""The items a notebook emitted, checked before they become the output payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InvalidItemError
from .runtime import absolute_href
from .validation import check_items


def check_emitted(
    items: list[dict[str, Any]], kernel_cwd: Path, schema: bool = True
) -> list[dict[str, Any]]:
    """Check each emitted item (structure, unique ids; the STAC core schema unless
    ``schema`` is off), make relative local asset hrefs absolute against the notebook's
    working directory (where a relative path written by the notebook lands), and check
    that every local asset file exists."""
    check_items(items, "emitted item", InvalidItemError, schema=schema)
    for index, item in enumerate(items):
        for key, asset in item.get("assets", {}).items():
            asset["href"] = href = absolute_href(asset["href"], kernel_cwd)
            local = href.removeprefix("file://")
            if "://" not in local and not Path(local).is_file():
                raise InvalidItemError(
                    f"emitted item {index} (id {item['id']!r}): asset '{key}' file {local} "
                    "does not exist"
                )
    return items
