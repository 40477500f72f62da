"""Checks of STAC items and payloads: the one place for them, for input and output alike.

``check_payload`` is what a payload must be before anything runs (the task checks it
as it is made, whatever ``--no-validate`` says); ``check_item`` is what every item must
be, in the input payload or emitted by the notebook. Structure is always checked: nb2task relies on
it. The STAC core schema is checked unless ``--no-check-schema``.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from pathlib import Path
from typing import Any

from stactask.exceptions import InvalidInput
from stactask.payload import Payload


def check_payload(payload: Payload, schema: bool = True) -> None:
    """Raise InvalidInput unless ``payload`` is a Cirrus process payload nb2task can run.

    stactask's own ``Payload.validate`` has run (it raises TypeError/ValueError, which
    the task turns into InvalidInput); this adds what stactask leaves to later.
    """
    # As in stactask, a payload without features is one with no items; but a document
    # with neither features nor process, or a Step Functions event, was never a payload.
    if "features" not in payload and ("Parameters" in payload or "error" in payload):
        raise InvalidInput(
            "not a Cirrus process payload: it has no 'features' "
            "(this looks like a Step Functions/Batch event, not a payload)"
        )
    if "features" not in payload and "process" not in payload:
        raise InvalidInput("not a Cirrus process payload: it has neither 'features' nor 'process'")
    if payload.get("type", "FeatureCollection") != "FeatureCollection":
        raise InvalidInput("a payload must be a FeatureCollection")
    _check_collection_expressions(payload)
    check_items(payload.items_as_dicts, "payload feature", InvalidInput, schema=schema)


def check_items(items: list[Any], label: str, error: type[Exception], schema: bool = True) -> None:
    """Raise ``error`` unless every item is a STAC item (its schema too, if ``schema``)
    and no id appears twice. ``label`` names them in messages: "<label> <index>"."""
    ids: set[str] = set()
    for index, item in enumerate(items):
        check_structure(item, f"{label} {index}", error)
        if item["id"] in ids:
            raise error(f"{label} {index}: item id '{item['id']}' appears twice")
        ids.add(item["id"])
    if schema:
        check_schemas(items, label, error)


# Ids and collections end up in paths, keys and logs: no NUL, newline or other control.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_structure(item: Any, label: str, error: type[Exception]) -> None:
    """What nb2task itself relies on: a Feature with a string id, string hrefs, and
    ``stac_extensions`` (if any) a list of strings."""
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise error(f"{label} is not a STAC item: its type is not 'Feature'")
    if not isinstance(item.get("id"), str) or not item["id"]:
        raise error(f"{label} is not a STAC item: no string 'id'")
    label = f"{label} (id {item['id']!r})"
    if _CONTROL.search(item["id"]) or any(part in (".", "..") for part in item["id"].split("/")):
        raise error(f"{label}: an id must not hold control characters or '.'/'..' path parts")
    collection = item.get("collection")
    if collection is not None and (
        not isinstance(collection, str) or _CONTROL.search(collection) or "/" in collection
    ):
        raise error(f"{label}: 'collection' must be a name (no '/' or control characters)")
    extensions = item.get("stac_extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise error(f"{label}: stac_extensions must be a list of strings")
    assets = item.get("assets", {})
    if not isinstance(assets, dict):
        raise error(f"{label}: 'assets' must be an object")
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            raise error(f"{label}: asset '{key}' has no string 'href'")


# Past this many items, compiling the schema to Python (~0.13 s, once per process)
# pays for itself: 0.2 ms per item against jsonschema's ~5 ms.
COMPILE_FROM_ITEMS = 25


def check_schemas(items: list[dict[str, Any]], label: str, error: type[Exception]) -> None:
    """Validate items against the STAC core item schema, offline.

    Core schema only: pystac ships it, so this works offline; extension schemas would
    be fetched from the network. Items of any 1.x version are checked against the
    shipped version's schema. Without a `collection` link, `collection` is left out
    of the check: Cirrus assigns it without the link the schema would demand.
    """
    fast = _shipped_validator() or _compiled.get("item")
    if fast is None and len(items) >= COMPILE_FROM_ITEMS:
        fast = compile_item_schema()
    for index, item in enumerate(items):
        candidate = _candidate(item)
        if fast is not None:
            try:
                fast(candidate)
                continue
            except Exception:  # noqa: BLE001 - the message comes from jsonschema, below
                pass
        first = next(iter(_item_validator().iter_errors(candidate)), None)
        if first is not None:
            where = ".".join(str(p) for p in first.absolute_path)
            raise error(
                f"{label} {index} (id {item['id']!r}) is not a valid STAC item: "
                f"{where + ': ' if where else ''}{first.message}"
            )


def _candidate(item: dict[str, Any]) -> dict[str, Any]:
    candidate = {**item, "stac_version": _core_version(), "stac_extensions": []}
    links = candidate.get("links")
    if isinstance(links, list) and not any(
        isinstance(link, dict) and link.get("rel") == "collection" for link in links
    ):
        candidate.pop("collection", None)
    return candidate


@cache
def _core_version() -> str:
    shipped = _shipped()
    if shipped is not None:
        return str(shipped.STAC_VERSION)  # without importing pystac.validation (~60 ms)
    from pystac.validation.local_validator import VERSION

    return str(VERSION)


# The item schema of the installed pystac, compiled to Python ahead of time: loading it
# costs ~1 ms where reading pystac's schemas and compiling them costs ~0.2 s a process.
GENERATED = Path(__file__).with_name("item_schema.py")


@cache
def _shipped() -> Any:
    """nb2task/item_schema.py, if generated from the installed pystac's schema."""
    import pystac

    from . import item_schema

    return item_schema if pystac.__version__ == item_schema.PYSTAC_VERSION else None


def _shipped_validator() -> Any:
    shipped = _shipped()
    return shipped.validate if shipped is not None else None


def item_schema_source() -> str:
    """The text of nb2task/item_schema.py, generated from the installed pystac's core
    item schema by fastjsonschema. Regenerate after upgrading pystac or fastjsonschema:
    ``python -c "import nb2task.validation as v; v.write_item_schema()"``."""
    import fastjsonschema
    import pystac
    from pystac.validation.local_validator import VERSION

    schemas = _schemas()
    code = fastjsonschema.compile_to_code(
        _item_schema(), handlers={"https": schemas.__getitem__}, use_default=False
    )
    entry = re.search(r"^def (\w+)\(", code, re.M)
    assert entry is not None and entry.group(1).endswith("item_json"), "unexpected code"
    return (
        '"""The STAC core item schema shipped by pystac, compiled to Python by fastjsonschema.\n\n'
        "Generated by nb2task.validation.item_schema_source(): do not edit. A test checks\n"
        'that it matches the installed pystac and fastjsonschema."""\n'
        "# ruff: noqa\n"
        "# mypy: ignore-errors\n"
        f"PYSTAC_VERSION = {pystac.__version__!r}\n"
        f"STAC_VERSION = {str(VERSION)!r}\n"
        f"{code}\n\n"
        f"validate = {entry.group(1)}\n"
    )


def write_item_schema() -> None:
    GENERATED.write_text(item_schema_source(), encoding="utf-8")


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    from pystac.validation.local_validator import get_local_schema_cache

    return get_local_schema_cache()


def _item_schema() -> dict[str, Any]:
    uri = f"https://schemas.stacspec.org/v{_core_version()}/item-spec/json-schema/item.json"
    return _schemas()[uri]


@cache
def _item_validator() -> Any:
    """The core item schema pystac ships, as a jsonschema validator built once: pystac's
    own validator checks the schema and builds its registry on every call."""
    from jsonschema.validators import validator_for
    from referencing import Registry, Resource

    registry: Any = Registry().with_resources(
        [(uri, Resource.from_contents(contents)) for uri, contents in _schemas().items()]
    )
    schema = _item_schema()
    return validator_for(schema)(schema, registry=registry)


_compiled: dict[str, Any] = {}
_compile_lock = threading.Lock()


def compile_item_schema() -> Any:
    """The item schema compiled to Python by fastjsonschema (once per process)."""
    with _compile_lock:
        if "item" not in _compiled:
            import fastjsonschema

            schemas = _schemas()
            _compiled["item"] = fastjsonschema.compile(
                _item_schema(), handlers={"https": schemas.__getitem__}, use_default=False
            )
    return _compiled["item"]


def prepare() -> None:
    """Load, or else compile in the background, the item schema (a warm process, before
    payloads come)."""
    if _shipped() is None:
        threading.Thread(target=compile_item_schema, name="nb2task-schema", daemon=True).start()


def _check_collection_expressions(payload: Payload) -> None:
    """Parse every JSONPath now: stactask would only fail after the notebook ran."""
    from jsonpath_ng.ext import parser

    mapping = payload.collection_mapping
    expressions: list[tuple[str, Any]] = [
        (f"upload_options.collections[{name!r}]", expr) for name, expr in mapping.items()
    ]
    for index, matcher in enumerate(payload.collection_matchers):
        kind = matcher.get("type")
        if kind == "jsonpath":
            expressions.append((f"collection_matchers[{index}]", matcher.get("pattern")))
        elif kind != "catch_all":
            raise InvalidInput(f"collection_matchers[{index}]: unknown type {kind!r}")
        if not matcher.get("collection_name"):
            raise InvalidInput(f"collection_matchers[{index}]: no collection_name")
    for where, expr in expressions:
        try:
            parser.parse(expr)
        except Exception:  # noqa: BLE001 - jsonpath_ng raises several types, none public
            raise InvalidInput(
                f"{where}: {expr!r} is not a JSONPath expression "
                "(stactask 0.7 wants e.g. \"$[?(@.id =~ 'S2.*')]\", not a regex)"
            ) from None
