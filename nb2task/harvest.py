"""Collect the items a notebook emitted, from the executed notebook, and check them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from .errors import InvalidItemError
from .runtime import EMIT_MIMETYPE, is_relative_local


def emitted_items(node: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every item ``nb2task.emit`` published in the executed notebook, in order."""
    items: list[dict[str, Any]] = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if EMIT_MIMETYPE in data:
                items.extend(data[EMIT_MIMETYPE]["items"])
    return items


def check_items(items: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Validate each item as STAC and make relative local asset hrefs absolute
    (against ``workdir``, where a notebook writes its outputs)."""
    ids: set[str] = set()
    for index, item in enumerate(items):
        _validate(item, index)
        if item["id"] in ids:
            raise InvalidItemError(f"the notebook emitted item id '{item['id']}' twice")
        ids.add(item["id"])
        for asset in item.get("assets", {}).values():
            if is_relative_local(asset["href"]):
                asset["href"] = str((workdir / asset["href"]).resolve())
    return items


def _validate(item: dict[str, Any], index: int) -> None:
    from pystac import STACObjectType
    from pystac.errors import STACValidationError
    from pystac.validation.local_validator import VERSION
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    label = f"emitted item {index} (id {item.get('id')!r})"
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise InvalidItemError(f"{label} is not a STAC item: its type is not 'Feature'")
    # Core schema only: pystac ships it, so this works offline; extension schemas
    # would be fetched from the network. Items of any 1.x version are checked
    # against the shipped version's schema.
    # Without a `collection` link, `collection` is left out of the check: Cirrus
    # assigns it without the link the schema would demand; publishing adds it later.
    candidate = {**item, "stac_version": VERSION, "stac_extensions": []}
    links = candidate.get("links")
    if isinstance(links, list) and not any(
        isinstance(link, dict) and link.get("rel") == "collection" for link in links
    ):
        candidate.pop("collection", None)
    try:
        JsonSchemaSTACValidator().validate_core(candidate, STACObjectType.ITEM, VERSION)
    except STACValidationError as err:
        raise InvalidItemError(f"{label} is not a valid STAC item: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """The first jsonschema error, with where it is: short enough for one line."""
    errors = getattr(err, "source", None)
    if isinstance(errors, list) and errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path)
        return f"{where + ': ' if where else ''}{first.message}"
    return str(err)
