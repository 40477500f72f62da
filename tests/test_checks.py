"""Payload and item checks (``nb2task.validation``), in process: no notebook runs.

Structure is always checked (nb2task relies on it); the STAC item schema only with
``--check-schema`` (the default), ``schema=False`` being ``--no-check-schema``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stactask.exceptions import InvalidInput
from stactask.payload import Payload
from support import make_payload, sample_item, write_notebook

from nb2task import validation
from nb2task.errors import InvalidItemError
from nb2task.validation import check_items, check_payload


def item_with(**changes: Any) -> dict[str, Any]:
    """sample_item("a") with top-level keys replaced (None: removed)."""
    item = sample_item("a")
    for key, value in changes.items():
        if value is None:
            item.pop(key)
        else:
            item[key] = value
    return item


# --- The payload itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"type": "FeatureCollection"},
            "not a Cirrus process payload: it has neither 'features' nor 'process'",
        ),
        (
            {"Parameters": {"url": "s3://b/in.json"}, "process": [{}]},
            "not a Cirrus process payload: it has no 'features' "
            "(this looks like a Step Functions/Batch event, not a payload)",
        ),
        (
            {"type": "Feature", "features": [], "process": [{}]},
            "a payload must be a FeatureCollection",
        ),
    ],
    ids=["no-features", "batch-event", "not-a-feature-collection"],
)
def test_what_is_not_a_payload(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_payload(Payload(document))
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("process", "message"),
    [
        (
            {
                "collection_matchers": [
                    {"type": "jsonpath", "pattern": ".*", "collection_name": "c"}
                ]
            },
            "collection_matchers[0]: '.*' is not a JSONPath expression",
        ),
        (
            {"upload_options": {"collections": {"c": ".*"}}},
            "upload_options.collections['c']: '.*' is not a JSONPath expression",
        ),
        (
            {"collection_matchers": [{"type": "regex", "pattern": "x", "collection_name": "c"}]},
            "collection_matchers[0]: unknown type 'regex'",
        ),
        (
            {"collection_matchers": [{"type": "catch_all"}]},
            "collection_matchers[0]: no collection_name",
        ),
    ],
    ids=["matcher-regex", "collections-regex", "unknown-matcher", "no-collection-name"],
)
def test_bad_collection_matchers_are_invalid_input(process: dict[str, Any], message: str) -> None:
    """stactask would only fail on these after the notebook ran, when it assigns
    collections: checked up front."""
    with pytest.raises(InvalidInput) as raised:
        check_payload(Payload(make_payload(**process)))
    assert str(raised.value).startswith(message)


def test_good_collection_matchers_pass() -> None:
    payload = make_payload(
        collection_matchers=[
            {"type": "jsonpath", "pattern": "$[?(@.id =~ 'S2.*')]", "collection_name": "s2"},
            {"type": "catch_all", "collection_name": "other"},
        ],
        upload_options={"collections": {"legacy": "$[?(@.id == 'item-1')]"}},
    )
    check_payload(Payload(payload))


# --- Items: structure always, schema when asked ----------------------------------------------


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (item_with(type="Collection"), "payload feature 0 is not a STAC item: its type is not"),
        ("item-1", "payload feature 0 is not a STAC item: its type is not 'Feature'"),
        (item_with(id=None), "payload feature 0 is not a STAC item: no string 'id'"),
        (item_with(id=7), "payload feature 0 is not a STAC item: no string 'id'"),
        (
            item_with(stac_extensions="proj"),
            "payload feature 0 (id 'a'): stac_extensions must be a list of strings",
        ),
        (item_with(assets=[]), "payload feature 0 (id 'a'): 'assets' must be an object"),
        (
            item_with(assets={"data": {"title": "no href"}}),
            "payload feature 0 (id 'a'): asset 'data' has no string 'href'",
        ),
        (
            item_with(assets={"data": {"href": 42}}),
            "payload feature 0 (id 'a'): asset 'data' has no string 'href'",
        ),
        (
            item_with(assets={"data": "s3://b/k.tif"}),
            "payload feature 0 (id 'a'): asset 'data' has no string 'href'",
        ),
    ],
    ids=[
        "not-feature",
        "a-string",
        "no-id",
        "int-id",
        "extensions-not-list",
        "assets-list",
        "asset-without-href",
        "href-not-string",
        "asset-is-href",
    ],
)
@pytest.mark.parametrize("schema", [True, False], ids=["validate", "no-validate"])
def test_bad_structure_is_invalid_with_or_without_validate(
    feature: Any, message: str, schema: bool
) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_payload(Payload(make_payload(features=[feature])), schema=schema)
    assert str(raised.value).startswith(message)


def test_duplicate_item_ids_are_invalid_with_or_without_validate() -> None:
    features = [sample_item("a"), sample_item("b"), sample_item("a")]
    for schema in (True, False):
        with pytest.raises(InvalidInput, match=r"^payload feature 2: item id 'a' appears twice$"):
            check_payload(Payload(make_payload(features=features)), schema=schema)


SCHEMA_ERRORS = [
    (item_with(bbox=[]), "bbox: "),
    (item_with(geometry=None), ""),  # no geometry at all: the message names no field
    (item_with(properties={"datetime": "yesterday"}), "properties.datetime: "),
    (item_with(links=[{"rel": "self"}]), "links.0: 'href' is a required property"),
]


@pytest.mark.parametrize(
    ("feature", "where"), SCHEMA_ERRORS, ids=["bbox", "geometry", "datetime", "link"]
)
def test_schema_errors_only_with_validate(feature: dict[str, Any], where: str) -> None:
    payload = Payload(make_payload(features=[sample_item("ok"), feature]))
    with pytest.raises(InvalidInput) as raised:
        check_payload(payload)
    assert str(raised.value).startswith(
        f"payload feature 1 (id 'a') is not a valid STAC item: {where}"
    )
    check_payload(payload, schema=False)  # --no-check-schema: structure only


def test_schema_accepts_what_cirrus_does() -> None:
    """Any 1.x stac_version, extensions not fetched, and a collection without a
    collection link (Cirrus assigns collections without adding the link)."""
    item = sample_item("a")
    item.update(
        stac_version="1.0.0",
        stac_extensions=["https://stac-extensions.github.io/eo/v9.9.9/schema.json"],
        collection="anything",
    )
    check_payload(Payload(make_payload(features=[item])))


@pytest.mark.parametrize(
    ("count", "shipped"),
    [(1, False), (30, False), (1, True)],
    ids=["jsonschema", "compiled", "shipped"],
)
def test_schema_error_message_is_the_same_for_many_items(
    count: int, shipped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator generated ahead of time (nb2task/item_schema.py) runs first; without
    it (another pystac), past validation.COMPILE_FROM_ITEMS items one compiled at run
    time does. The message always comes from jsonschema and names the item."""
    assert count == 1 or count >= validation.COMPILE_FROM_ITEMS
    monkeypatch.setattr(validation, "_compiled", {})  # no compiled schema yet
    calls: list[Any] = []
    ahead = validation._shipped_validator()
    assert ahead is not None
    watched = lambda candidate: calls.append(candidate) or ahead(candidate)  # noqa: E731
    monkeypatch.setattr(validation, "_shipped_validator", lambda: watched if shipped else None)
    items = [sample_item(f"i{n}") for n in range(count)]
    items[-1]["bbox"] = []
    with pytest.raises(InvalidItemError) as raised:
        check_items(items, "emitted item", InvalidItemError)
    assert str(raised.value) == (
        f"emitted item {count - 1} (id 'i{count - 1}') is not a valid STAC item: "
        "bbox: [] is too short"
    )
    assert len(calls) == (count if shipped else 0)
    compiled = not shipped and count >= validation.COMPILE_FROM_ITEMS
    assert ("item" in validation._compiled) == compiled


def test_the_shipped_item_schema_is_the_installed_pystacs() -> None:
    """nb2task/item_schema.py is what generating it now gives: after upgrading pystac or
    fastjsonschema, regenerate it (validation.write_item_schema())."""
    assert validation.GENERATED.read_text(encoding="utf-8") == validation.item_schema_source(), (
        "nb2task/item_schema.py is stale: python -c "
        '"import nb2task.validation as v; v.write_item_schema()"'
    )
    assert validation._shipped() is not None
    good = validation._candidate(sample_item("ok"))
    assert validation._shipped_validator()(good) == good


def test_check_items_raises_the_error_it_is_given() -> None:
    with pytest.raises(InvalidItemError, match=r"^emitted item 0 is not a STAC item"):
        check_items([{"type": "Feature"}], "emitted item", InvalidItemError, schema=False)
    check_items([], "emitted item", InvalidItemError)  # nothing emitted: nothing wrong


# --- The task's schema checks: --check-schema / --no-check-schema -----------------------------


class NoExecutor:
    """Stands in for an engine: constructing a task must not run anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the executor was used ({name}) while checking the payload")


@pytest.mark.parametrize("check_schema", [True, False], ids=["check-schema", "no-check-schema"])
def test_task_checks_structure_always_and_schema_when_asked(
    tmp_path: Path, check_schema: bool
) -> None:
    from nb2task.task import NotebookTask

    task_class = NotebookTask.for_notebook(
        write_notebook(tmp_path / "t.ipynb", 'payload = "x.json"', "pass")
    )

    def make(feature: dict[str, Any]) -> Any:
        payload = make_payload(features=[feature])
        return task_class(
            payload, workdir=tmp_path / "work", check_schema=check_schema, executor=NoExecutor()
        )

    schema_invalid = item_with(bbox=[])
    if check_schema:
        with pytest.raises(InvalidInput, match="is not a valid STAC item: bbox"):
            make(schema_invalid)
    else:
        assert make(schema_invalid).parameters == {}
    with pytest.raises(InvalidInput, match="asset 'data' has no string 'href'"):
        make(item_with(assets={"data": {}}))
