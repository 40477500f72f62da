"""Collect the items a notebook emitted, from the executed notebook, and check them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from .errors import InvalidItemError
from .runtime import EMIT_MIMETYPE, absolute_href


def emitted_items(node: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every item ``nb2task.emit`` published in the executed notebook, in order."""
    items: list[dict[str, Any]] = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if EMIT_MIMETYPE in data:
                items.extend(data[EMIT_MIMETYPE]["items"])
    return items


def check_items(
    items: list[dict[str, Any]], kernel_cwd: Path, schema: bool = True
) -> list[dict[str, Any]]:
    """Check each emitted item (structure; the STAC core schema unless ``schema`` is
    off), make relative local asset hrefs absolute against the kernel's working
    directory (where a relative path written by the notebook lands), and check that
    every local asset file exists."""
    ids: set[str] = set()
    for index, item in enumerate(items):
        label = f"emitted item {index} (id {item.get('id')!r})"
        check_structure(item, label, InvalidItemError)
        if schema:
            check_schema(item, label, InvalidItemError)
        if item["id"] in ids:
            raise InvalidItemError(f"the notebook emitted item id '{item['id']}' twice")
        ids.add(item["id"])
        for key, asset in item.get("assets", {}).items():
            asset["href"] = href = absolute_href(asset["href"], kernel_cwd)
            local = href.removeprefix("file://")
            if "://" not in local and not Path(local).is_file():
                raise InvalidItemError(f"{label}: asset '{key}' file {local} does not exist")
    return items


def check_structure(item: Any, label: str, error: type[Exception]) -> None:
    """What nb2task itself relies on: a Feature with a string id, string hrefs, and
    ``stac_extensions`` (if any) a list of strings."""
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise error(f"{label} is not a STAC item: its type is not 'Feature'")
    if not isinstance(item.get("id"), str) or not item["id"]:
        raise error(f"{label} is not a STAC item: no string 'id'")
    extensions = item.get("stac_extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise error(f"{label}: stac_extensions must be a list of strings")
    assets = item.get("assets", {})
    if not isinstance(assets, dict) or not all(
        isinstance(a, dict) and isinstance(a.get("href"), str) for a in assets.values()
    ):
        raise error(f"{label}: every asset must be an object with a string 'href'")


def check_schema(item: dict[str, Any], label: str, error: type[Exception]) -> None:
    """Validate against the STAC core item schema (offline)."""
    from pystac import STACObjectType
    from pystac.errors import STACValidationError
    from pystac.validation.local_validator import VERSION
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

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
        raise error(f"{label} is not a valid STAC item: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """The first jsonschema error, with where it is: short enough for one line."""
    errors = getattr(err, "source", None)
    if isinstance(errors, list) and errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path)
        return f"{where + ': ' if where else ''}{first.message}"
    return str(err)
