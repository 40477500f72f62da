"""What a notebook sees of its payload, as a hand-written stactask Task sees it.

Items come as they went in (no STAC migration, no network, an unchanged item emitted
unchanged), the payload is readable (``read_payload``, checked against stactask's own
``Payload``), assets download from the notebook with the task's own machinery, the
validate cells run before any download and ``--no-validate`` skips them as stactask
skips ``validate()``; per-collection upload options follow the collection stactask
uses (checked against a stactask Task in the same test).
"""

from __future__ import annotations

import asyncio
import copy
import http.server
import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stactask.exceptions import InvalidInput
from support import (
    PAYLOADS,
    keys,
    load_json,
    make_payload,
    run_task,
    sample_item,
    write_notebook,
)

import nb2task
from nb2task.payload_view import PayloadView
from nb2task.stac_items import Item

FIXTURES = sorted(p for p in PAYLOADS.glob("*.json") if "features" in load_json(p))


def real_features() -> list[tuple[str, dict[str, Any]]]:
    """Every item of the real payload fixtures (STAC 1.0.0-beta.2 and 1.0.0 among them)."""
    return [
        (f"{path.stem[:40]}-{index}", feature)
        for path in FIXTURES
        for index, feature in enumerate(load_json(path)["features"])
    ]


def hand_made_features() -> list[tuple[str, dict[str, Any]]]:
    """Items that pystac would otherwise rewrite: old versions, datetime spellings,
    no ``stac_extensions``, ``proj:epsg``, a remote root."""
    base = sample_item()
    base["stac_version"] = "1.0.0"
    base["stac_extensions"] = ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"]
    base["properties"]["proj:epsg"] = 32633
    cases = {
        "proj-epsg-1.0.0": base,
        "millis": {**base, "properties": {"datetime": "2024-05-01T10:00:00.000Z"}},
        "offset": {**base, "properties": {"datetime": "2024-05-01T10:00:00+00:00"}},
        "nanos": {**base, "properties": {"datetime": "2024-05-01T10:00:00.123456789Z"}},
        "no-extensions": {k: v for k, v in base.items() if k != "stac_extensions"},
        "beta": {**base, "stac_version": "1.0.0-beta.2"},
        "range": {
            **base,
            "properties": {
                "datetime": None,
                "start_datetime": "2024-05-01T00:00:00Z",
                "end_datetime": "2024-05-02T00:00:00.5Z",
            },
        },
    }
    return list(cases.items())


ALL_FEATURES = real_features() + hand_made_features()


def write_payload(path: Path, features: list[dict[str, Any]], **process: Any) -> Path:
    path.write_text(json.dumps(make_payload(features=features, **process)))
    return path


# --- Items as they came -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "feature"), ALL_FEATURES, ids=[n for n, _ in ALL_FEATURES])
def test_an_item_read_and_written_back_is_what_came(
    tmp_path: Path, name: str, feature: dict[str, Any]
) -> None:
    path = write_payload(tmp_path / "payload.json", [feature])
    (item,) = nb2task.read_items(path)
    assert isinstance(item, Item)
    assert item.to_dict() == feature
    assert item.clone().to_dict() == feature
    (as_dict,) = nb2task.read_items(path, as_dicts=True)
    assert as_dict == feature
    if "proj:epsg" in feature["properties"]:
        assert "proj:code" not in item.properties  # pystac's migration would add it


def test_migrate_gives_the_items_as_stactasks_task_items_has_them(
    tmp_path: Path, root_server: CountingServer
) -> None:
    import pystac

    feature = dict(hand_made_features())["proj-epsg-1.0.0"]
    feature = {**feature, "links": [{"rel": "root", "href": f"{root_server.url}/catalog.json"}]}
    path = write_payload(tmp_path / "p.json", [feature])
    (item,) = nb2task.read_items(path, migrate=True)
    expected = pystac.ItemCollection.from_dict(
        {"type": "FeatureCollection", "features": [copy.deepcopy(feature)]}, preserve_dict=True
    )[0].to_dict(transform_hrefs=False)
    assert item.to_dict() == expected
    assert item.properties["proj:code"] == "EPSG:32633"
    assert root_server.requests == []


def test_a_changed_datetime_is_written_as_pystac_writes_it(tmp_path: Path) -> None:
    import datetime as dt

    feature = dict(hand_made_features())["millis"]
    (item,) = nb2task.read_items(write_payload(tmp_path / "p.json", [feature]))
    item.datetime = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    assert item.to_dict()["properties"]["datetime"] == "2030-01-02T00:00:00Z"
    assert item.to_dict()["stac_version"] == "1.0.0"  # the version it was read with


class CountingServer:
    """An HTTP server on loopback that counts the requests it gets (a STAC root catalog)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                body = json.dumps(
                    {
                        "type": "Catalog",
                        "id": "root",
                        "description": "d",
                        "stac_version": "1.1.0",
                        "links": [],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def root_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.server.shutdown()


def test_nothing_is_fetched_from_an_items_remote_root(
    tmp_path: Path, root_server: CountingServer
) -> None:
    import pystac

    feature = sample_item()
    feature["links"] = [
        {"rel": "root", "href": f"{root_server.url}/catalog.json", "type": "application/json"},
        {"rel": "parent", "href": f"{root_server.url}/collection.json"},
        {"rel": "self", "href": f"{root_server.url}/items/item-1.json"},
    ]
    path = write_payload(tmp_path / "payload.json", [feature])
    (item,) = nb2task.read_items(path)
    assert item.to_dict() == feature
    assert item.to_dict(transform_hrefs=True) == feature
    assert [link.href for link in item.links] == [link["href"] for link in feature["links"]]
    assert item.get_self_href() == feature["links"][2]["href"]
    assert root_server.requests == []
    # The check can fail: plain pystac fetches the root for the same calls.
    pystac.Item.from_dict(copy.deepcopy(feature)).to_dict()
    assert root_server.requests == ["/catalog.json"]


def test_a_pass_through_notebook_emits_the_items_unchanged(tmp_path: Path, engine: str) -> None:
    features = [copy.deepcopy(f) for _, f in ALL_FEATURES]
    for index, feature in enumerate(features):
        feature["id"] = f"{index:02d}-{feature['id']}"  # one payload: ids must differ
    notebook = write_notebook(
        tmp_path / "passthrough.ipynb",
        'payload = "payload.json"',
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
    )
    payload = write_payload(tmp_path / "payload.json", features)
    # Some real fixtures' items fail the STAC schema (an empty bbox): not the point here.
    output, error = run_task(notebook, payload, tmp_path / "out", check_schema=False)
    assert error is None, error
    assert output is not None
    for given, emitted in zip(features, output["features"], strict=True):
        # stactask's own post-processing sorts stac_extensions; nothing else changes.
        expected = copy.deepcopy(given)
        if "stac_extensions" in expected:
            expected["stac_extensions"].sort()
        assert emitted == expected


# --- The payload in the notebook --------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem[:40] for p in FIXTURES])
def test_read_payload_reads_what_stactask_reads(path: Path) -> None:
    from stactask.payload import Payload

    document = load_json(path)
    view = nb2task.read_payload(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stactask_payload = Payload(copy.deepcopy(document))
        assert view.process == stactask_payload.process_definition
        assert view.workflow_options == stactask_payload.workflow_options
        assert view.upload_options == stactask_payload.upload_options
        assert view.tasks == stactask_payload.task_options_dict
        assert view.collection_options == stactask_payload.collection_options
    assert view.id == document.get("id")
    assert view.workflow == view.process.get("workflow")
    assert view.items_as_dicts == nb2task.read_items(path, as_dicts=True)
    assert [i.to_dict() for i in view.items] == view.items_as_dicts
    assert dict(view.stactask_payload) == view.to_dict()


def test_read_payload_is_read_only_and_names_the_task(tmp_path: Path) -> None:
    document = make_payload(tasks={"a": {"x": 1}, "b": {"y": 2}}, workflow_options={"w": 3})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(document))
    view = nb2task.read_payload(path)
    assert view.task_name is None and view.task_options == {}  # two tasks: which is it?
    assert nb2task.read_payload(path, task_name="b").task_options == {"y": 2}
    view.process["tasks"]["a"]["x"] = 99
    view.workflow_options["w"] = 99
    assert view.tasks["a"] == {"x": 1} and view.workflow_options == {"w": 3}
    single = tmp_path / "single.json"
    single.write_text(json.dumps(make_payload(tasks={"only": {"z": 1}})))
    assert nb2task.read_payload(single).task_options == {"z": 1}
    assert isinstance(view, PayloadView) and "PayloadView" in repr(view)


def test_a_task_run_tells_the_notebook_its_task_name_and_payload(
    tmp_path: Path, engine: str
) -> None:
    notebook = write_notebook(
        tmp_path / "named.ipynb",
        'payload = "payload.json"\nlimit: int = 1',
        "import nb2task\n"
        "p = nb2task.read_payload(payload)\n"
        "item = nb2task.read_items(payload, as_dicts=True)[0]\n"
        "item['properties']['seen'] = [p.id, p.task_name, p.task_options, p.workflow,\n"
        "    p.workflow_options, p.upload_options, p.task_version]\n"
        "nb2task.emit(item)",
        metadata={"name": "named", "version": "2.1.0"},
    )
    document = make_payload(
        tasks={"named": {"limit": 2}, "other": {"q": 1}},
        workflow_options={"shared": True},
        upload_options={"path_template": "s3://b/${id}"},
    )
    output, error = run_task(notebook, document, tmp_path / "out")
    assert error is None, error
    assert output is not None
    assert output["features"][0]["properties"]["seen"] == [
        document["id"],
        "named",
        {"limit": 2},
        "test-workflow",
        {"shared": True},
        {"path_template": "s3://b/${id}"},
        "2.1.0",
    ]


def test_a_payload_without_features_is_one_with_no_items(tmp_path: Path, engine: str) -> None:
    notebook = write_notebook(
        tmp_path / "none.ipynb",
        'payload = "payload.json"',
        "import nb2task\nitems = nb2task.read_items(payload)\nassert items == []\nnb2task.emit([])",
    )
    document = make_payload()
    del document["features"]
    output, error = run_task(notebook, document, tmp_path / "out")
    assert error is None, error
    assert output is not None and output["features"] == []
    assert output["process"] == document["process"]


# --- Downloads from the notebook --------------------------------------------------------------


def test_download_assets_inside_a_running_event_loop(tmp_path: Path, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="in/a.tif", Body=b"A" * 1000)
    s3.put_object(Bucket=bucket, Key="in/b.tif", Body=b"B" * 10)
    feature = sample_item()
    feature["assets"] = {
        "a": {"href": f"s3://{bucket}/in/a.tif", "roles": ["data"]},
        "b": {"href": f"s3://{bucket}/in/b.tif"},
    }
    path = write_payload(tmp_path / "p.json", [feature])

    async def in_jupyter() -> tuple[list[Any], list[Any]]:
        items = nb2task.read_items(path)
        dicts = nb2task.read_items(path, as_dicts=True)
        return (
            nb2task.download_assets(items, ["a"], tmp_path / "dl"),
            nb2task.download_assets(dicts, "*", tmp_path / "dl2"),
        )

    items, dicts = asyncio.run(in_jupyter())
    (item,) = items
    assert isinstance(item, Item)
    local = Path(item.assets["a"].href)
    assert local.read_bytes() == b"A" * 1000 and local.is_relative_to(tmp_path / "dl")
    assert item.assets["b"].href == f"s3://{bucket}/in/b.tif"  # not asked for
    assert item.to_dict()["stac_version"] == feature["stac_version"]
    assert Path(dicts[0]["assets"]["b"]["href"]).read_bytes() == b"B" * 10
    with pytest.raises(InvalidInput, match="missing: item-1:nope"):
        nb2task.download_assets(items, ["nope"], tmp_path / "dl3")
    feature["assets"]["a"]["href"] = f"s3://{bucket}/in/gone.tif"
    with pytest.raises(InvalidInput, match="asset not found"):
        nb2task.download_assets([feature], ["a"], tmp_path / "dl4")


VALIDATE = (
    "from stactask.exceptions import InvalidInput\n"
    "import nb2task\n"
    "if nb2task.read_payload(payload).id.endswith('bad'):\n"
    "    raise InvalidInput('this payload is not for me')",
    ["nb2task-validate"],
)


def validating_notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "validating.ipynb",
        'payload = "payload.json"\nworkdir = "."',
        VALIDATE,
        "import nb2task, pathlib\n"
        "items = nb2task.read_items(payload)\n"
        "assert pathlib.Path(items[0].assets['a'].href).is_relative_to(workdir)\n"
        "nb2task.emit(items)",
        metadata={"name": "validating", "download_assets": ["a"]},
    )


def s3_payload(s3: Any, bucket: str, payload_id: str) -> dict[str, Any]:
    s3.put_object(Bucket=bucket, Key="in/a.tif", Body=b"A")
    feature = sample_item()
    feature["assets"] = {"a": {"href": f"s3://{bucket}/in/a.tif"}}
    return {**make_payload(features=[feature]), "id": payload_id}


def test_validate_cells_refuse_a_payload_before_its_assets_download(
    tmp_path: Path, s3: Any, bucket: str, engine: str
) -> None:
    notebook = validating_notebook(tmp_path)
    output, error = run_task(notebook, s3_payload(s3, bucket, "x/bad"), tmp_path / "bad")
    assert isinstance(error, InvalidInput) and "this payload is not for me" in str(error)
    assert not (tmp_path / "bad" / "input-assets").exists()

    output, error = run_task(notebook, s3_payload(s3, bucket, "x/good"), tmp_path / "good")
    assert error is None, error
    assert output is not None
    assert Path(output["features"][0]["assets"]["a"]["href"]).read_bytes() == b"A"
    record = load_json(tmp_path / "good" / "validating.executed.ipynb")
    tags = [c["metadata"].get("tags", []) for c in record["cells"]]
    assert tags.index(["injected-download"]) == tags.index(["nb2task-validate"]) + 1


def test_no_validate_skips_the_validate_cells_as_stactask_skips_validate(
    tmp_path: Path, s3: Any, bucket: str, cli: Any
) -> None:
    notebook = validating_notebook(tmp_path)
    payload = tmp_path / "bad.json"
    payload.write_text(json.dumps(s3_payload(s3, bucket, "x/bad")))
    refused = cli("run", notebook, payload, "--local", "--workdir", tmp_path / "w1")
    assert refused.returncode == 3, refused.stderr
    assert refused.last_stderr_line.startswith("stactask.exceptions.InvalidInput: ")
    skipped = cli(
        "run", notebook, payload, "--local", "--workdir", tmp_path / "w2", "--no-validate"
    )
    assert skipped.returncode == 0, skipped.stderr
    record = load_json(tmp_path / "w2" / "validating.executed.ipynb")
    assert not any("nb2task-validate" in c["metadata"].get("tags", []) for c in record["cells"])


def test_check_schema_is_its_own_switch(tmp_path: Path, cli: Any) -> None:
    notebook = write_notebook(
        tmp_path / "t.ipynb", 'payload = "payload.json"', "import nb2task\nnb2task.emit([])"
    )
    feature = sample_item()
    feature["bbox"] = []  # not a valid STAC item
    payload = write_payload(tmp_path / "payload.json", [feature])
    checked = cli("run", notebook, payload, "--local", "--workdir", tmp_path / "a")
    assert checked.returncode == 3 and "is not a valid STAC item" in checked.last_stderr_line
    assert cli("run", notebook, payload, "--local", "--workdir", tmp_path / "b",
               "--no-validate").returncode == 3  # fmt: skip
    unchecked = cli(
        "run", notebook, payload, "--local", "--workdir", tmp_path / "c", "--no-check-schema"
    )
    assert unchecked.returncode == 0, unchecked.stderr


# --- Unknown task options ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["error", "warn", "ignore", None])
def test_unknown_task_options_get_what_the_setting_says(
    tmp_path: Path, policy: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = {"name": "opts"} | ({"unknown_options": policy} if policy else {})
    notebook = write_notebook(
        tmp_path / "opts.ipynb",
        'payload = "payload.json"\nthreshold: float = 0.5',
        "import nb2task\nitem = nb2task.read_items(payload, as_dicts=True)[0]\n"
        "item['properties']['threshold'] = threshold\nnb2task.emit(item)",
        metadata=metadata,
    )
    document = make_payload(tasks={"opts": {"threshold": 0.7, "legacy_flag": True}})
    with caplog.at_level("WARNING"):
        output, error = run_task(notebook, document, tmp_path / "out")
    if policy in ("error", None):
        assert isinstance(error, InvalidInput) and "legacy_flag" in str(error)
        return
    assert error is None, error
    assert output is not None and output["features"][0]["properties"]["threshold"] == 0.7
    warned = [r for r in caplog.records if "legacy_flag" in r.getMessage()]
    assert len(warned) == (1 if policy == "warn" else 0)


def test_a_bad_unknown_options_setting_is_a_notebook_error(tmp_path: Path, cli: Any) -> None:
    notebook = write_notebook(
        tmp_path / "t.ipynb", 'payload = "p.json"', "pass", metadata={"unknown_options": "drop"}
    )
    result = cli("inspect", notebook)
    assert result.returncode == 2
    assert "unknown_options' must be one of: error, warn, ignore" in result.last_stderr_line


# --- Per-collection upload options: the collection stactask uses ------------------------------


def test_upload_options_follow_the_collection_stactask_uses(
    tmp_path: Path, s3: Any, bucket: str
) -> None:
    """A stactask Task and a notebook, on one payload whose collection_matchers assign
    another collection than the item's own: their assets land under the same keys."""
    import boto3utils
    from stactask import Task

    feature = sample_item()
    feature["collection"] = "input-collection"
    document = make_payload(
        features=[feature],
        upload_options={"path_template": f"s3://{bucket}/default/${{id}}"},
        collection_options={
            "input-collection": {
                "upload_options": {"path_template": f"s3://{bucket}/by-input/${{collection}}"}
            },
            "assigned": {
                "upload_options": {"path_template": f"s3://{bucket}/by-assigned/${{collection}}"}
            },
        },
        collection_matchers=[
            {"type": "jsonpath", "pattern": "$[?(@.id)]", "collection_name": "assigned"}
        ],
    )

    class Original(Task):
        name = "writer"
        version = "1"

        def process(self, **kwargs: Any) -> list[dict[str, Any]]:
            import pystac

            item = pystac.Item.from_dict(self.payload.items_as_dicts[0])
            out = self._workdir / "out.txt"
            out.write_text("x")
            item.assets = {"out": pystac.Asset(str(out))}
            # stactask's own client was made at import, before moto's endpoint was set.
            client = boto3utils.s3()
            uploaded = self.upload_item_assets_to_s3(item, s3_client=client)
            return [uploaded.to_dict(transform_hrefs=False)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        original = Original.handler(copy.deepcopy(document), workdir=tmp_path / "stactask")
    original_keys = keys(s3, bucket)
    for key in original_keys:
        s3.delete_object(Bucket=bucket, Key=key)

    notebook = write_notebook(
        tmp_path / "writer.ipynb",
        'payload = "payload.json"\nworkdir = "."',
        "import nb2task, pathlib\nitem = nb2task.read_items(payload)[0]\n"
        "out = pathlib.Path(workdir) / 'out.txt'\nout.write_text('x')\n"
        "item.assets = {'out': __import__('pystac').Asset(str(out))}\nnb2task.emit(item)",
        metadata={"name": "writer"},
    )
    from nb2task.publish import UrlOutput
    from nb2task.runner import Runner, RunOptions

    with Runner(notebook, RunOptions(workdir=tmp_path / "nb", upload=True)) as runner:
        output = runner.run(document, UrlOutput(tmp_path / "output.json"))
    notebook_keys = {k for k in keys(s3, bucket) if "/out.txt" in k}
    assert original_keys == {"by-input/input-collection/out.txt"}
    assert notebook_keys == original_keys
    # The run's record lands beside the outputs, not under the assigned collection.
    assert {k for k in keys(s3, bucket) if "executed" in k} == {
        "by-input/input-collection/writer.executed.ipynb"
    }
    assert output["features"][0]["collection"] == original["features"][0]["collection"]
    assert output["features"][0]["collection"] == "assigned"


def test_emit_never_fetches_even_a_plain_pystac_items_root(
    root_server: CountingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import pystac

    feature = sample_item()
    feature["links"] = [
        {"rel": "root", "href": f"{root_server.url}/catalog.json"},
        {"rel": "collection", "href": f"{root_server.url}/collection.json"},
    ]
    nb2task.emit([pystac.Item.from_dict(copy.deepcopy(feature)), feature])
    assert "emitting 2 item(s)" in capsys.readouterr().out
    assert root_server.requests == []


class FileServer(http.server.ThreadingHTTPServer):
    """Serves one folder over HTTP on loopback (assets behind https-like hrefs)."""

    def __init__(self, folder: Path) -> None:
        import functools

        handler = functools.partial(QuietHandler, directory=str(folder))
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


OLD_ITEM_KEYS = ("stac_version", "stac_extensions", "properties")


def old_item(item_id: str = "old") -> dict[str, Any]:
    """An item pystac would migrate: STAC 1.0.0 with proj:epsg."""
    feature = dict(hand_made_features())["proj-epsg-1.0.0"]
    return {**copy.deepcopy(feature), "id": item_id}


def test_downloads_over_http_give_items_back_unmigrated(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.tif").write_bytes(b"http bytes")
    server = FileServer(served)
    try:
        feature = old_item()
        feature["assets"] = {"a": {"href": f"{server.url}/a.tif"}}
        (item,) = nb2task.download_assets([feature], ["a"], tmp_path / "dl")
    finally:
        server.shutdown()
    assert Path(item["assets"]["a"]["href"]).read_bytes() == b"http bytes"
    assert {k: item[k] for k in OLD_ITEM_KEYS} == {k: feature[k] for k in OLD_ITEM_KEYS}


def test_uploaded_items_come_out_unmigrated(tmp_path: Path, s3: Any, bucket: str) -> None:
    notebook = write_notebook(
        tmp_path / "old.ipynb",
        'payload = "payload.json"\nworkdir = "."',
        "import nb2task, pathlib\nitem = nb2task.read_items(payload)[0]\n"
        "out = pathlib.Path(workdir) / 'out.txt'\nout.write_text('x')\n"
        "item.assets = {'out': __import__('pystac').Asset(str(out))}\nnb2task.emit(item)",
        metadata={"name": "old"},
    )
    feature = old_item()
    document = make_payload(
        features=[feature],
        upload_options={"path_template": f"s3://{bucket}/${{id}}", "s3_urls": True},
    )
    from nb2task.publish import UrlOutput
    from nb2task.runner import Runner, RunOptions

    with Runner(notebook, RunOptions(workdir=tmp_path / "nb", upload=True)) as runner:
        output = runner.run(document, UrlOutput(tmp_path / "output.json"))
    (emitted,) = output["features"]
    assert emitted["assets"]["out"]["href"] == f"s3://{bucket}/old/out.txt"
    assert {k: emitted[k] for k in OLD_ITEM_KEYS} == {k: feature[k] for k in OLD_ITEM_KEYS}


NO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def test_public_s3_assets_download_without_credentials(
    tmp_path: Path, s3: Any, bucket: str, cli: Any
) -> None:
    """As stac-asset reads a public archive with no credentials at all, so do nb2task's
    downloads (unsigned requests); with credentials they are signed."""
    s3.put_object(Bucket=bucket, Key="public/a.tif", Body=b"public", ACL="public-read")
    feature = sample_item()
    feature["assets"] = {"a": {"href": f"s3://{bucket}/public/a.tif"}}
    payload = write_payload(tmp_path / "payload.json", [feature])
    notebook = write_notebook(
        tmp_path / "public.ipynb",
        'payload = "payload.json"',
        "import nb2task, pathlib\nitem = nb2task.read_items(payload)[0]\n"
        "assert pathlib.Path(item.assets['a'].href).read_bytes() == b'public'\n"
        "nb2task.emit(item)",
        metadata={"download_assets": ["a"]},
    )
    result = cli(
        "run", notebook, payload, "--local", "--workdir", tmp_path / "w", env=NO_CREDENTIALS
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("policy", "allowed"), [("error", False), ("warn", True), ("ignore", True)]
)
def test_the_json_schema_allows_other_options_as_the_setting_does(
    tmp_path: Path, cli: Any, policy: str, allowed: bool
) -> None:
    notebook = write_notebook(
        tmp_path / "t.ipynb", 'payload = "p.json"\nn: int = 1', "pass",
        metadata={"unknown_options": policy},
    )  # fmt: skip
    result = cli("inspect", notebook, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["additionalProperties"] is allowed
