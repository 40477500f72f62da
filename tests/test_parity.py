"""Parity with hand-written stactask tasks: each public task in tests/parity/ and its port
to a notebook, run in the same test on the same fixture (the original through stactask's
own ``Task.handler``, the notebook through nb2task's runner, as ``run --local`` does), give
the same output payload or the same error. Every notebook runs under each engine."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from support import PAYLOADS, REPO, run_task

# The originals use stactask's deprecated accessors (items_as_dicts, _payload) as they are.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:parity_stactask")

PARITY = REPO / "tests" / "parity"
STACTASK_FIXTURE = PARITY / "stactask" / "fixtures" / "sentinel2-l2a-j2k-payload.json"


def load_module(path: Path) -> ModuleType:
    """An original task module, imported from its file as it is (it is no package of ours)."""
    spec = importlib.util.spec_from_file_location(f"parity_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORIGINALS = load_module(PARITY / "stactask" / "tasks.py")
# Task name → the original's class; the port is tests/parity/<name>/<name>.ipynb.
TASKS: dict[str, Any] = {
    cls.name: cls
    for cls in (ORIGINALS.NothingTask, ORIGINALS.FailValidateTask, ORIGINALS.DerivedItemTask)
}


def stactask_payload() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(STACTASK_FIXTURE.read_text())
    return document


def shared(name: str) -> Callable[[], dict[str, Any]]:
    return lambda: json.loads((PAYLOADS / name).read_text())


def variant(change: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    """stactask's fixture as one of stactask's own tests changes it before running a task."""

    def make() -> dict[str, Any]:
        document = stactask_payload()
        change(document)
        return document

    return make


def process_as_dict(d: dict[str, Any]) -> None:  # test_deprecated_payload_dict
    d["process"] = d["process"][0]


def workflow_options_only(d: dict[str, Any]) -> None:  # ..._populate_when_no_task_options
    d["process"][0]["tasks"].clear()
    d["process"][0]["workflow_options"] = {"parameter": "value"}


def task_options_win(d: dict[str, Any]) -> None:  # test_task_options_supersede_workflow_options
    d["process"][0]["workflow_options"] = {"parameter": "from-the-workflow"}


def no_features(d: dict[str, Any]) -> None:  # as cirrus-task-example's own fixtures are
    del d["features"]


def wrong_parameter(d: dict[str, Any]) -> None:
    d["process"][0]["tasks"]["derived-item-task"]["parameter"] = "other"


FIXTURES: dict[str, Callable[[], dict[str, Any]]] = {
    "stactask-sentinel2": stactask_payload,
    "cirrus-basic-minimal": shared("cirrus-geo-v2.0.0_basic-minimal_one-item.json"),
    "cirrus-cog-archive": shared(
        "cirrus-geo-v2.0.0_sentinel-s2-l2a_cog-archive_multi-task-params.json"
    ),
    "process-as-dict": variant(process_as_dict),
    "workflow-options-only": variant(workflow_options_only),
    "task-options-win": variant(task_options_win),
    "no-features": variant(no_features),
    "wrong-parameter": variant(wrong_parameter),
}


class Divergence(AssertionError):
    """The original and its port did not end the same way."""


# What nb2task still does differently, by (task, fixture): the cases are xfail(strict),
# and fail for any other reason than a Divergence.
# cirrus-geo's payloads map collections by regex ('.*'), which stactask 0.7 reads as
# JSONPath: stactask fails late (JsonPathParserError once the task ran, FAILED; or whatever
# the task raised first), nb2task refuses the payload before the task runs (InvalidInput
# naming the key, INVALID). nb2task's classification, on purpose.
REGEX_COLLECTIONS = "regex collections: nb2task INVALID up front, stactask FAILED late"
KNOWN_DIFFERENCES = {
    (task, fixture): REGEX_COLLECTIONS
    for task in TASKS
    for fixture in ("cirrus-basic-minimal", "cirrus-cog-archive")
}
# Cases whose error names differ for a reason of the port, not of nb2task: the original
# reads ``kwargs["parameter"]`` (KeyError when absent); the notebook has a variable with a
# default, so only the assertion can fail. Both are FAILED, as stactask's would be.
PORT_ERROR_NAMES = {("derived-item-task", "workflow-options-only"): ("KeyError", "AssertionError")}


def cases() -> list[Any]:
    params = []
    for task in TASKS:
        for fixture in FIXTURES:
            reason = KNOWN_DIFFERENCES.get((task, fixture))
            marks = (
                [pytest.mark.xfail(strict=True, raises=Divergence, reason=reason)] if reason else []
            )
            params.append(pytest.param(task, fixture, marks=marks, id=f"{task}-{fixture}"))
    return params


@dataclass
class Outcome:
    """How a run ended: its Cirrus state, and the output payload or the error."""

    state: str  # SUCCEEDED | INVALID | FAILED, as Cirrus would record it
    payload: dict[str, Any] | None = None
    error: str = ""  # dotted name, as Cirrus' post-batch step reads it
    message: str = ""

    def summary(self) -> str:
        """One line: the state, and the error or the ids of the output items."""
        if self.payload is None:
            return f"{self.state} {self.error}: {self.message}"
        return f"{self.state} {[f.get('id') for f in self.payload.get('features', [])]}"


def outcome(payload: dict[str, Any] | None, err: BaseException | None) -> Outcome:
    from nb2task.errors import NotebookCellError, error_name

    if err is None:
        assert payload is not None
        # stactask hands back its own Payload (a dict): compare JSON, as it is published.
        return Outcome("SUCCEEDED", payload=json.loads(json.dumps(payload)))
    name = error_name(err)
    # A notebook's error carries the cell it was raised in; the message is the exception's.
    message = err.evalue if isinstance(err, NotebookCellError) else str(err)
    state = "INVALID" if name == "stactask.exceptions.InvalidInput" else "FAILED"
    return Outcome(state, error=name, message=message)


def run_original(task: str, payload: dict[str, Any], workdir: Path, **kwargs: Any) -> Outcome:
    """The original through stactask, as its own tests run it: ``Task.handler(payload)``."""
    try:
        result = TASKS[task].handler(copy.deepcopy(payload), workdir=workdir, **kwargs)
    except Exception as err:  # noqa: BLE001 - the outcome is what is compared
        return outcome(None, err)
    return outcome(result, None)


def run_port(task: str, payload: dict[str, Any], workdir: Path) -> Outcome:
    """The port through nb2task, as ``nb2task run NOTEBOOK --local --workdir`` runs it."""
    notebook = PARITY / task / f"{task}.ipynb"
    return outcome(*run_task(notebook, copy.deepcopy(payload), workdir))


def compare(original: Outcome, port: Outcome, names: tuple[str, str] | None = None) -> None:
    """Raise Divergence unless both ended the same way: equal output payloads (dicts, so up
    to key order), or the same state, error name and message."""
    if original.state != port.state:
        raise Divergence(f"stactask: {original.summary()}\nnb2task:  {port.summary()}")
    if original.state == "SUCCEEDED":
        if original.payload != port.payload:
            raise Divergence(
                "output payloads differ:\nstactask: "
                + json.dumps(original.payload, sort_keys=True)
                + "\nnb2task:  "
                + json.dumps(port.payload, sort_keys=True)
            )
        return
    if (original.error, port.error) != (names or (original.error, original.error)):
        raise Divergence(f"error names differ: stactask {original.error}, nb2task {port.error}")
    if names is None and original.message != port.message:
        raise Divergence(
            f"messages differ: stactask {original.message!r}, nb2task {port.message!r}"
        )


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize(("task", "fixture"), cases())
def test_port_ends_as_the_original(task: str, fixture: str, tmp_path: Path) -> None:
    payload = FIXTURES[fixture]()
    original = run_original(task, payload, tmp_path / "stactask", upload=False)
    port = run_port(task, payload, tmp_path / "nb2task")
    compare(original, port, PORT_ERROR_NAMES.get((task, fixture)))


@pytest.mark.usefixtures("engine")
def test_no_validate_skips_the_validate_step_in_both(tmp_path: Path) -> None:
    """stactask's ``validate=False`` (``--no-validate``) and nb2task's skip the same step."""
    payload = stactask_payload()
    original = run_original("failvalidation-task", payload, tmp_path / "a", validate=False)
    notebook = PARITY / "failvalidation-task" / "failvalidation-task.ipynb"
    port = outcome(*run_task(notebook, copy.deepcopy(payload), tmp_path / "b", validate=False))
    assert original.state == "SUCCEEDED"
    compare(original, port)


# What the cases above rest on, checked so that a parity pass cannot be two runs agreeing
# on nothing: the originals do what stactask's own tests say they do.
def test_the_originals_behave_as_stactask_tests_say(tmp_path: Path) -> None:
    payload = stactask_payload()
    nothing = run_original("nothing-task", payload, tmp_path / "a", upload=False)
    assert nothing.payload is not None
    # As they came (STAC 1.0.0, proj:epsg), but for stac_extensions, which stactask sorts.
    for feature in payload["features"]:
        feature["stac_extensions"].sort()
    assert nothing.payload["features"] == payload["features"]
    assert {f["stac_version"] for f in nothing.payload["features"]} == {"1.0.0"}
    failed = run_original("failvalidation-task", payload, tmp_path / "b", upload=False)
    assert (failed.state, failed.error) == ("FAILED", "stactask.exceptions.FailedValidation")
    derived = run_original("derived-item-task", payload, tmp_path / "c", upload=False)
    assert derived.payload is not None
    (item,) = derived.payload["features"]
    self_href = next(lk["href"] for lk in payload["features"][0]["links"] if lk["rel"] == "self")
    assert [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"] == [self_href]


RECORD_ASSETS = ("executed-notebook", "executed-notebook-html")


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("task", ["nothing-task", "derived-item-task"])
def test_port_with_upload_on_differs_only_by_its_record(task: str, tmp_path: Path, s3: Any) -> None:
    """With upload on (stactask's default) against S3: the same features, but for the
    record nb2task uploads and links from every item (assets ``executed-notebook*``),
    which a hand-written task has no counterpart of."""
    from nb2task.publish import UrlOutput
    from nb2task.runner import Runner, RunOptions

    payload = stactask_payload()
    bucket = payload["process"][0]["upload_options"]["path_template"].split("/")[2]
    # Another case of this session (this worker's moto server) may have made it.
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    original = run_original(task, payload, tmp_path / "stactask")
    options = RunOptions(workdir=tmp_path / "nb2task", upload=True)
    with Runner(PARITY / task / f"{task}.ipynb", options) as runner:
        published = runner.run(copy.deepcopy(payload), UrlOutput(tmp_path / "out.json"))
    port = outcome(published, None)
    assert port.payload is not None and original.payload is not None
    for item in port.payload["features"]:
        record = item["assets"].pop("executed-notebook")
        assert record["href"].startswith(f"s3://{bucket}/") or f"{bucket}" in record["href"]
        assert "nb2task-record" in record["roles"]
        item["assets"].pop("executed-notebook-html", None)
    compare(original, port)


def test_committed_notebooks_are_what_the_generator_writes() -> None:
    """The ports are committed; tests/parity/make_notebooks.py is where they are written."""
    generator = load_module(PARITY / "make_notebooks.py")
    assert set(generator.PORTS) == set(TASKS)
    for name in generator.PORTS:
        committed = nbformat.read(generator.path(name), as_version=4)
        assert committed == generator.notebook(name), f"rerun {PARITY / 'make_notebooks.py'}"
