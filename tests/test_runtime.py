"""The notebook-side API outside any task: read_items and emit in plain Python."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
from support import make_payload, sample_item

import nb2task


def test_read_items_from_payload_item_collection_and_item(tmp_path: Path) -> None:
    item = sample_item("a")
    item["assets"] = {"data": {"href": "data/a.tif"}, "remote": {"href": "s3://b/k.tif"}}
    for name, document in {
        "payload.json": make_payload(features=[item]),
        "collection.json": {"type": "FeatureCollection", "features": [item]},
        "item.json": item,
    }.items():
        (tmp_path / name).write_text(json.dumps(document))
        [read] = nb2task.read_items(tmp_path / name)
        assert isinstance(read, pystac.Item) and read.id == "a"
        assert read.assets["data"].href == str(tmp_path / "data" / "a.tif")
        assert read.assets["remote"].href == "s3://b/k.tif"


def test_emit_outside_jupyter_shows_what_would_be_emitted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    item = pystac.Item.from_dict(sample_item("shown"))
    assert nb2task.emit([item, sample_item("dict")]) is None
    out = capsys.readouterr().out
    assert "nb2task: emitting 2 item(s)" in out and "shown" in out and "dict" in out


@pytest.mark.parametrize("bad", [42, "item", [1]])
def test_emit_rejects_what_is_not_an_item(bad: object) -> None:
    with pytest.raises(TypeError, match="emit"):
        nb2task.emit(bad)


def test_emit_rejects_values_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="not JSON serialisable"):
        nb2task.emit(sample_item(bad=object()))


def test_importing_nb2task_in_a_notebook_is_light() -> None:
    import subprocess
    import sys

    heavy = "('papermill', 'stactask', 'pystac', 'boto3')"
    code = f"import sys, nb2task; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
