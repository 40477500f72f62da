"""Download and upload parity with a hand-written stactask task of our own.

``tests/parity/asset-task/original.py`` is a stactask ``Task`` as a typical Cirrus task is
written (a ``validate()``, parameters checked in ``process``, stactask's own
``download_items_assets`` and ``upload_item_assets_to_s3``); ``asset-task.ipynb`` is its
port, written following nb2task's docs only. Each fixture runs through both in one test,
upload on, against moto S3: the original through ``Task.handler``, the port through
nb2task's runner. They must give the same output payload, upload the same objects (keys,
bytes, content type), and fail with the same error; a refused payload downloads nothing.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from support import REPO, keys

HERE = REPO / "tests" / "parity" / "asset-task"
FIXTURES = HERE / "fixtures"
OBJECTS = FIXTURES / "objects"
NOTEBOOK = HERE / "asset-task.ipynb"
BUCKET_TOKEN = "@BUCKET@"  # the fixtures' bucket; each test has a fresh one
RECORD_ASSETS = ("executed-notebook", "executed-notebook-html")

# stactask warns of its own deprecated event-loop use (get_event_loop) in its sync helpers.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load_module(path: Path) -> Any:
    """A module from its file (the parity folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"parity_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORIGINAL = load_module(HERE / "original.py")
GENERATOR = load_module(HERE / "make_notebook.py")

# stactask's download error vs nb2task's 404 → InvalidInput: nb2task's classification, on
# purpose (docs/failure-semantics.md, "an asset to download that is not there").
MISSING_OBJECT = "a missing S3 object: stactask FAILED (stac-asset's error), nb2task INVALID"
# nb2task's parameter check makes an int given for a ``float`` parameter a float
# (nb2task/schema.py, Parameter._typed): scale 3 reaches the notebook as 3.0, and what it
# writes says 3.0 (in the derived file, in the item's properties) where stactask, which
# hands process() the JSON value as it is, writes 3.
KNOWN_DIFFERENCES = {"missing-object": MISSING_OBJECT}
# nb2task appends where a cell raised to an InvalidInput's message (documented in
# docs/notebook-contract.md#errors); the task's own message comes first.
CELL_SUFFIX = re.compile(r" \(notebook cell In \[\d+\], line \d+: .*\)$", re.DOTALL)


class Divergence(AssertionError):
    """The original and its port did not end the same way."""


def cases() -> list[Any]:
    params = []
    for folder in sorted(FIXTURES.glob("*/*/input.json")):
        case = folder.parent.name
        reason = KNOWN_DIFFERENCES.get(case)
        marks = [pytest.mark.xfail(strict=True, raises=Divergence, reason=reason)] if reason else []
        params.append(pytest.param(folder.parent, marks=marks, id=f"{folder.parts[-3]}-{case}"))
    return params


def load(path: Path, bucket: str) -> Any:
    return json.loads(path.read_text().replace(BUCKET_TOKEN, bucket))


def put_objects(s3: Any, bucket: str) -> None:
    """The input assets: fixtures/objects/<key> at <key>."""
    for path in sorted(OBJECTS.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=str(path.relative_to(OBJECTS)), Body=path.read_bytes())


@dataclass
class Outcome:
    """How one run ended, and what it left in the bucket and its workdir."""

    state: str  # SUCCEEDED | INVALID | FAILED, as Cirrus would record it
    payload: dict[str, Any] | None = None
    error: str = ""
    message: str = ""
    uploaded: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # key: bytes, type
    downloaded: list[str] = field(default_factory=list)  # input files found in the workdir

    def summary(self) -> str:
        if self.payload is None:
            return f"{self.state} {self.error}: {self.message}"
        return f"{self.state} {[f['id'] for f in self.payload['features']]}"


def ended(payload: dict[str, Any] | None, err: BaseException | None) -> Outcome:
    from nb2task.errors import NotebookCellError, error_name

    if err is None:
        assert payload is not None
        return Outcome("SUCCEEDED", payload=json.loads(json.dumps(payload)))
    name = error_name(err)
    message = err.evalue if isinstance(err, NotebookCellError) else str(err)
    message = CELL_SUFFIX.sub("", message)
    return Outcome(
        "INVALID" if name == "stactask.exceptions.InvalidInput" else "FAILED",
        error=name,
        message=message,
    )


def new_objects(s3: Any, bucket: str, before: set[str]) -> dict[str, tuple[bytes, str]]:
    """What a run uploaded: each new key's bytes and content type."""
    found = {}
    for key in sorted(keys(s3, bucket) - before):
        got = s3.get_object(Bucket=bucket, Key=key)
        found[key] = (got["Body"].read(), got.get("ContentType", ""))
    return found


def input_files(workdir: Path) -> list[str]:
    """Files under ``workdir`` that hold an input asset's bytes (by content)."""
    inputs = {p.read_bytes() for p in OBJECTS.rglob("*") if p.is_file()}
    if not workdir.exists():
        return []
    return sorted(
        str(p.relative_to(workdir))
        for p in workdir.rglob("*")
        if p.is_file() and p.read_bytes() in inputs
    )


def run_original(payload: dict[str, Any], workdir: Path, s3: Any, bucket: str) -> Outcome:
    """``AssetTask.handler(payload, workdir=..., upload=True)``, as stactask's own tests run a
    task."""
    # stactask's sync download helper uses the thread's event loop (get_event_loop): give it
    # one, as a fresh `task.py run` process has, whatever ran before in this process.
    asyncio.set_event_loop(asyncio.new_event_loop())
    before = keys(s3, bucket)
    try:
        result = ORIGINAL.AssetTask.handler(copy.deepcopy(payload), workdir=workdir, upload=True)
        outcome = ended(result, None)
    except Exception as err:  # noqa: BLE001 - the outcome is what is compared
        outcome = ended(None, err)
    finally:
        asyncio.get_event_loop().close()
        asyncio.set_event_loop(None)
    outcome.uploaded = new_objects(s3, bucket, before)
    outcome.downloaded = input_files(workdir)
    return outcome


def run_port(payload: dict[str, Any], workdir: Path, s3: Any, bucket: str) -> Outcome:
    """The port through nb2task's runner with upload on, as ``nb2task run`` runs it."""
    from nb2task.publish import UrlOutput
    from nb2task.runner import Runner, RunOptions

    before = keys(s3, bucket)
    with Runner(NOTEBOOK, RunOptions(workdir=workdir, upload=True)) as runner:
        try:
            result = runner.run(copy.deepcopy(payload), UrlOutput(workdir.parent / "out.json"))
            outcome = ended(result, None)
        except Exception as err:  # noqa: BLE001 - the outcome is what is compared
            outcome = ended(None, err)
    uploaded = new_objects(s3, bucket, before)
    # nb2task's run record (the executed notebook, its HTML) has no stactask counterpart.
    outcome.uploaded = {
        k: v for k, v in uploaded.items() if ".executed." not in k.rsplit("/", 1)[-1]
    }
    record = set(uploaded) - set(outcome.uploaded)
    assert all(k.rsplit("/", 1)[-1].startswith("asset-task.executed.") for k in record), record
    if outcome.payload is not None:
        assert record, "a successful run with upload on uploads its record"
        for item in outcome.payload["features"]:
            # The record's assets, linked from every output item: nb2task's own addition.
            for name in RECORD_ASSETS:
                asset = item["assets"].pop(name, None)
                assert name != "executed-notebook" or asset is not None
                if asset is not None:
                    assert "nb2task-record" in asset["roles"]
    outcome.downloaded = input_files(workdir)
    return outcome


def delete(s3: Any, bucket: str, uploaded: dict[str, Any]) -> None:
    for key in uploaded:
        s3.delete_object(Bucket=bucket, Key=key)


def compare(original: Outcome, port: Outcome) -> None:
    """Raise Divergence unless both ended the same way."""
    if original.state != port.state:
        raise Divergence(f"stactask: {original.summary()}\nnb2task:  {port.summary()}")
    # As published (JSON text, keys sorted): 3 and 3.0 are equal in Python, not in JSON.
    if json.dumps(original.payload, sort_keys=True) != json.dumps(port.payload, sort_keys=True):
        raise Divergence(
            "output payloads differ:\nstactask: "
            + json.dumps(original.payload, sort_keys=True)
            + "\nnb2task:  "
            + json.dumps(port.payload, sort_keys=True)
        )
    if original.uploaded != port.uploaded:
        differ = {
            key: (original.uploaded.get(key), port.uploaded.get(key))
            for key in sorted({*original.uploaded, *port.uploaded})
            if original.uploaded.get(key) != port.uploaded.get(key)
        }
        raise Divergence(f"uploads differ (key: (stactask, nb2task)): {differ}")
    if original.error != port.error:
        raise Divergence(f"errors differ: stactask {original.error}, nb2task {port.error}")


def expected_derived(document: dict[str, Any], bucket: str) -> dict[str, bytes]:
    """Each item's derived file, computed here from the fixture objects (not by either run)."""
    parameters = {
        "assets": ORIGINAL.DEFAULT_ASSETS,
        "scale": 1.0,
        "mode": "stats",
        **document["process"][0].get("workflow_options", {}),
        **document["process"][0].get("tasks", {}).get("asset-task", {}),
    }
    found = {}
    for item in document["features"]:
        contents = {}
        for key in parameters["assets"]:
            href = item["assets"][key]["href"].removeprefix(f"s3://{bucket}/")
            contents[key] = (OBJECTS / href).read_bytes()
        if parameters["mode"] == "concat":
            found[item["id"]] = b"".join(contents.values())
        else:
            stats = {
                k: {
                    "bytes": len(v),
                    "sha256": hashlib.sha256(v).hexdigest(),
                    "scaled": len(v) * parameters["scale"],
                }
                for k, v in contents.items()
            }
            found[item["id"]] = json.dumps(stats, sort_keys=True).encode()
    return found


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("case", cases())
def test_port_downloads_and_uploads_as_the_original(
    case: Path, tmp_path: Path, s3: Any, bucket: str
) -> None:
    document = load(case / "input.json", bucket)
    expected = load(case / "expected.json", bucket)
    put_objects(s3, bucket)

    original = run_original(document, tmp_path / "stactask", s3, bucket)
    # The same keys again for the port: the original's outputs go (its inputs stay).
    delete(s3, bucket, original.uploaded)
    port = run_port(document, tmp_path / "nb2task", s3, bucket)

    # What the original does, from the fixture: a parity pass is not two runs agreeing on
    # nothing.
    assert original.state == expected.get("state", "SUCCEEDED")
    if original.state == "SUCCEEDED":
        assert original.payload is not None
        assert sorted(original.uploaded) == expected["uploaded"]
        assert [f["collection"] for f in original.payload["features"]] == expected["collections"]
        derived = expected_derived(document, bucket)
        for item in original.payload["features"]:
            key = next(k for k in original.uploaded if f"/{item['id']}/derived." in k)
            assert original.uploaded[key][0] == derived[item["id"]]
        # STAC 1.0.0 in, 1.1.0 out (proj:epsg made proj:code): stactask migrates the items it
        # reads and the one its upload returns; nb2task uploads through that same function.
        assert [f["stac_version"] for f in original.payload["features"]] == expected[
            "stac_versions"
        ]
        assert original.downloaded and port.downloaded  # the check below can see downloads
    else:
        assert original.error == expected.get("error", original.error)
        assert expected.get("message", original.message) == original.message
        assert expected.get("names", "") in original.message
        assert original.uploaded == {}
    if original.state == "INVALID":
        # Refused before any download, in both.
        assert original.downloaded == [] and port.downloaded == []
        assert not (tmp_path / "nb2task" / "input-assets").exists()

    compare(original, port)
    if original.state != "SUCCEEDED":
        # The task's own message (validate) is the same; a parameter's names it in both.
        assert expected.get("message", port.message) == port.message
        assert expected.get("names", "") in port.message


def test_committed_notebook_is_what_the_generator_writes() -> None:
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert committed == GENERATOR.notebook(), f"rerun {HERE / 'make_notebook.py'}"
