"""Hostile input and faults: every bad input named as such, nothing written outside its
folder, nothing created, lost or half uploaded, the record kept whenever a notebook ran.

Cases run through three drivers, under both engines (the storage faults, which happen
outside the engine, under the default one):
- the CLI, one process per case, in a sandbox whose every file is compared before and
  after (only the workdir may change; the output must not appear);
- ``run --payloads``, every payload case in one process (each payload's run.log);
- the Lambda handler, in this process, with upload on to a moto S3 server (no object
  but the record may appear).
Each asserts the exit code (or Lambda errorType) and the last stderr line, which must be
``dotted.Name: message`` and never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import (
    ENGINES,
    NB2TASK,
    FaultProxy,
    closed_port_url,
    keys,
    make_payload,
    put_json,
    run_cli,
    sample_item,
    warm_lambda,
    write_notebook,
)

INVALID = "stactask.exceptions.InvalidInput"
SECRET = "sk-nb2task-FAKE-3f9a7c1e5b2d4a6c8e0f"  # recognisable, long enough to be redacted

EMITTER = """
import nb2task
items = nb2task.read_items(payload)
for item in items:
    item.properties["n"] = n
nb2task.emit(items)
"""
WRITER = """
import pathlib, pystac, nb2task
out = []
for item in nb2task.read_items(payload):
    path = pathlib.Path(workdir) / f"{item.id}.txt"
    path.write_text(item.id)
    item.add_asset("result", pystac.Asset(href=str(path), roles=["data"]))
    out.append(item)
nb2task.emit(out)
"""
PARAMETERS = (
    'payload = "x.json"\nworkdir = "."\nn: int = 0\ntags: list[str] = []\nratio: float = 1.0\n'
)


@dataclass(frozen=True)
class Case:
    """One hostile input or fault, and what must come of it."""

    name: str
    error: str  # the dotted name on the last line
    message: str  # a piece of the message
    code: int  # the exit code
    payload: Any = None  # the input document (None: a valid one)
    raw: bytes | None = None  # or the input file's bytes
    cell: str = EMITTER  # the notebook's code after the parameters cell
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ran: bool = False  # the notebook ran: its executed notebook must be kept


def item(**changes: Any) -> dict[str, Any]:
    return {**sample_item(), **changes}


def payload(**process: Any) -> dict[str, Any]:
    return make_payload(**process)


def nested(depth: int) -> bytes:
    """A valid payload with a value nested ``depth`` levels deep (as text: building it as
    Python objects would hit the recursion limit in json.dumps)."""
    text = json.dumps(make_payload())
    return (text[:-1] + ', "deep": ' + '{"a": ' * depth + "{}" + "}" * depth + "}").encode()


# Payload and parameter cases: refused before any notebook runs (exit 3, INVALID).
PAYLOAD_CASES = [
    Case("not-json", INVALID, "is not JSON", 3, raw=b"{not json"),
    Case("empty-file", INVALID, "is not JSON", 3, raw=b""),
    Case("not-utf8", INVALID, "is not UTF-8", 3, raw=b'{"a": "\xff\xfe"}'),
    Case("json-array", INVALID, "must be a JSON object", 3, payload=[make_payload()]),
    Case("nan-in-payload", INVALID, "NaN is not a JSON value", 3, raw=b'{"a": NaN}'),
    Case(
        "step-functions-event",
        INVALID,
        "looks like a Step Functions",
        3,
        payload={"Parameters": {"url": "s3://b/k"}},
    ),
    Case("no-features-no-process", INVALID, "neither 'features' nor 'process'", 3, payload={}),
    Case(
        "not-feature-collection",
        INVALID,
        "FeatureCollection",
        3,
        payload={**make_payload(), "type": "Feature"},
    ),
    Case("features-not-list", INVALID, "features", 3, payload={**make_payload(), "features": {}}),
    Case(
        "feature-not-object", INVALID, "is not a STAC item", 3, payload=make_payload(features=["x"])
    ),
    Case(
        "feature-without-id",
        INVALID,
        "no string 'id'",
        3,
        payload=make_payload(features=[item(id=None)]),
    ),
    Case(
        "id-climbs-out",
        INVALID,
        "path parts",
        3,
        payload=make_payload(features=[item(id="../../../escaped")]),
    ),
    Case(
        "id-with-nul",
        INVALID,
        "control characters",
        3,
        payload=make_payload(features=[item(id="a\0b")]),
    ),
    Case(
        "collection-climbs-out",
        INVALID,
        "'collection' must be a name",
        3,
        payload=make_payload(features=[item(collection="../up")]),
    ),
    Case(
        "duplicate-ids",
        INVALID,
        "appears twice",
        3,
        payload=make_payload(features=[item(), item()]),
    ),
    Case(
        "asset-without-href",
        INVALID,
        "has no string 'href'",
        3,
        payload=make_payload(features=[item(assets={"a": {"title": "no href"}})]),
    ),
    Case(
        "assets-not-object",
        INVALID,
        "'assets' must be an object",
        3,
        payload=make_payload(features=[item(assets=["a"])]),
    ),
    Case(
        "extensions-not-list",
        INVALID,
        "stac_extensions",
        3,
        payload=make_payload(features=[item(stac_extensions="x")]),
    ),
    Case(
        "not-stac",
        INVALID,
        "is not a valid STAC item",
        3,
        payload=make_payload(features=[item(geometry=5)]),
    ),
    Case(
        "process-not-list",
        INVALID,
        "invalid payload",
        3,
        payload={**make_payload(), "process": "x"},
    ),
    Case("tasks-not-object", INVALID, "invalid payload", 3, payload=payload(tasks=[1])),
    Case(
        "regex-matcher",
        INVALID,
        "is not a JSONPath",
        3,
        payload=payload(
            collection_matchers=[
                {"type": "jsonpath", "pattern": "^S2[AB]_.*$", "collection_name": "s2"}
            ]
        ),
    ),
    Case(
        "unknown-matcher",
        INVALID,
        "unknown type",
        3,
        payload=payload(collection_matchers=[{"type": "regex", "collection_name": "x"}]),
    ),
    Case(
        "matchers-and-collections",
        INVALID,
        "must not contain both",
        3,
        payload=payload(
            upload_options={"collections": {"a": "$"}},
            collection_matchers=[{"type": "catch_all", "collection_name": "a"}],
        ),
    ),
    Case(
        "nested-10000",
        INVALID,
        "nests more than 100 levels",
        3,
        raw=None,
        payload=None,
        env={"HOSTILE_NESTED": "10000"},
    ),
    Case(
        "over-size-limit", INVALID, "is over 104 bytes", 3, env={"NB2TASK_MAX_PAYLOAD_MB": "0.0001"}
    ),
    Case(
        "unknown-parameter",
        INVALID,
        "unknown parameter 'zzz'",
        3,
        payload=payload(tasks={"hostile": {"zzz": 1}}),
    ),
    Case(
        "mistyped-parameter",
        INVALID,
        "parameter 'n' must be integer",
        3,
        payload=payload(tasks={"hostile": {"n": "seven"}}),
    ),
    Case(
        "list-of-wrong-elements",
        INVALID,
        "parameter 'tags'[1] must be string",
        3,
        payload=payload(tasks={"hostile": {"tags": ["a", 2, None]}}),
    ),
    Case(
        "list-of-dicts",
        INVALID,
        "parameter 'tags'[0] must be string",
        3,
        payload=payload(workflow_options={"tags": [{"k": 1}]}),
    ),
    Case(
        "reserved-parameter",
        INVALID,
        "parameter 'payload' is reserved",
        3,
        payload=payload(tasks={"hostile": {"payload": "/etc/passwd"}}),
    ),
    Case(
        "download-assets-not-a-list",
        INVALID,
        "download_assets must be a list",
        3,
        payload=payload(tasks={"hostile": {"download_assets": {"a": 1}}}),
    ),
    Case(
        "download-missing-asset",
        INVALID,
        "assets to download are missing",
        3,
        payload=payload(tasks={"hostile": {"download_assets": ["red"]}}),
    ),
]

# Command-line cases: usage errors (exit 2) and -p values (exit 3), before any run.
COMMAND_CASES = [
    Case(
        "p-nan",
        INVALID,
        "parameter 'ratio' must be a finite number",
        3,
        args=("-p", "ratio", "NaN"),
    ),
    Case(
        "p-infinity",
        INVALID,
        "parameter 'ratio' must be a finite number",
        3,
        args=("-p", "ratio", "Infinity"),
    ),
    Case(
        "p-list-element",
        INVALID,
        "parameter 'tags'[0] must be string",
        3,
        args=("-p", "tags", "[1]"),
    ),
    Case("p-workdir", INVALID, "'workdir' is reserved", 3, args=("-p", "workdir", "/")),
    Case(
        "url-to-dev-zero",
        INVALID,
        "is over 1 MB",
        3,
        payload={"url": "file:///dev/zero"},
        env={"NB2TASK_MAX_PAYLOAD_MB": "1"},
    ),
    Case("url-not-found", INVALID, "payload not found", 3, payload={"url": "/no/such/file.json"}),
    Case(
        "url-unsupported",
        INVALID,
        "only local paths and s3:// URLs",
        3,
        payload={"url": "ftp://example.com/p.json"},
    ),
    Case(
        "output-bucket-missing",
        "nb2task.errors.UsageError",
        "no such bucket",
        2,
        args=("--output", "s3://nb2task-no-such-bucket-xyz/out.json"),
    ),
    Case(
        "output-scheme",
        "nb2task.errors.UsageError",
        "only local paths and s3://",
        2,
        args=("--output", "gs://bucket/out.json"),
    ),
]

# The notebook ran and failed: the record is kept.
NOTEBOOK_CASES = [
    Case(
        "cell-raises",
        "ValueError",
        "boom (notebook cell In [",
        1,
        cell="raise ValueError('boom')",
        ran=True,
    ),
    Case(
        "notebook-invalid-input",
        INVALID,
        "no red band",
        3,
        ran=True,
        cell="from stactask.exceptions import InvalidInput\nraise InvalidInput('no red band')",
    ),
    Case(
        "syntax-error", "SyntaxError", "invalid syntax", 1, cell="def broken(:\n    pass", ran=True
    ),
    Case(
        "sys-exit-0-before-emit",
        "nb2task.errors.NotebookExitedEarly",
        "call nb2task.emit([])",
        1,
        cell="import sys\nsys.exit(0)",
        ran=True,
    ),
    Case(
        "os-exit",
        "nb2task.errors.NotebookDiedError",
        "exited with status 3",
        1,
        cell="import os\nos._exit(3)",
        ran=True,
    ),
    Case(
        "sigkill-self",
        "nb2task.errors.NotebookDiedError",
        "SIGKILL",
        1,
        cell="import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        ran=True,
    ),
    Case(
        "memory-blowup",
        "MemoryError",
        "",
        1,
        ran=True,
        cell="import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
        "blob = bytearray(1 << 32)",
    ),
    Case(
        "endless-loop",
        "nb2task.errors.RunTimeoutError",
        "ran longer than 3 s",
        1,
        cell="while True:\n    pass",
        args=("--timeout", "3"),
        ran=True,
    ),
    Case(
        "endless-cell",
        "nb2task.errors.RunTimeoutError",
        "a notebook cell ran longer than 3",
        1,
        cell="import time\nwhile True:\n    time.sleep(0.1)",
        args=("--cell-timeout", "3"),
        ran=True,
    ),
    Case(
        "emits-no-id",
        "nb2task.errors.InvalidItemError",
        "no string 'id'",
        1,
        ran=True,
        cell="import nb2task\nnb2task.emit({'type': 'Feature'})",
    ),
    Case(
        "emits-twice",
        "nb2task.errors.InvalidItemError",
        "appears twice",
        1,
        ran=True,
        cell="import nb2task\nitems = nb2task.read_items(payload)\n"
        "nb2task.emit(items)\nnb2task.emit(items)",
    ),
    Case(
        "emits-missing-file",
        "nb2task.errors.InvalidItemError",
        "does not exist",
        1,
        ran=True,
        cell="import nb2task\n[i] = nb2task.read_items(payload)\n"
        "i.add_asset('x', __import__('pystac').Asset(href='/no/such.tif'))\n"
        "nb2task.emit(i)",
    ),
    Case(
        "emits-nan",
        "ValueError",
        "NaN and infinity are not valid",
        1,
        ran=True,
        cell="import nb2task\n[i] = nb2task.read_items(payload)\n"
        "i.properties['x'] = float('nan')\nnb2task.emit(i)",
    ),
]

# Broken notebooks: usage errors (exit 2) before any payload is read.
BROKEN_NOTEBOOKS = {
    "not-json": ("nb2task.errors.NotebookError", "cannot read notebook"),
    "no-parameters-cell": ("nb2task.errors.NotebookError", "has no cell tagged 'parameters'"),
    "bad-task-name": ("nb2task.errors.NotebookError", "task name 'bad_name'"),
}


def _payload_bytes(case: Case) -> bytes:
    if case.raw is not None:
        return case.raw
    if case.env.get("HOSTILE_NESTED"):
        return nested(int(case.env["HOSTILE_NESTED"]))
    return json.dumps(case.payload if case.payload is not None else make_payload()).encode()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@dataclass
class Sandbox:
    """A case's world: the notebook, the input, a deep workdir, an output path."""

    root: Path
    notebook: Path
    input: Path
    workdir: Path
    output: Path

    @classmethod
    def make(cls, root: Path, case: Case) -> Sandbox:
        notebook = write_notebook(root / "nb" / "hostile.ipynb", PARAMETERS, case.cell)
        input_path = root / "in" / "payload.json"
        input_path.parent.mkdir(parents=True)
        input_path.write_bytes(_payload_bytes(case))
        # Deep, so that a path climbing out by a few '..' lands in the watched sandbox.
        workdir = root / "a" / "b" / "c" / "work"
        return cls(root, notebook, input_path, workdir, root / "out" / "output.json")

    def check_untouched_outside_workdir(self, before: dict[str, tuple[int, int]]) -> None:
        after = snapshot(self.root)
        work = str(self.workdir.relative_to(self.root))
        changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)} - {
            p for p in after if p.startswith(work + "/")
        }
        assert not changed, f"written outside the workdir: {sorted(changed)}"


def check_last_line(stderr: str, case: Case) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith(f"{case.error}: "), last
    assert case.message in last, last


# --- the CLI, one process per case -------------------------------------------------------------


def run_case(case: Case, root: Path, extra_env: dict[str, str] | None = None) -> None:
    box = Sandbox.make(root, case)
    before = snapshot(root)
    result = run_cli(
        "run",
        box.notebook,
        box.input,
        "--workdir",
        box.workdir,
        "--output",
        box.output,
        "--no-upload",
        *case.args,
        env={**case.env, **(extra_env or {})},
    )
    assert result.returncode == case.code, result.stderr[-3000:]
    check_last_line(result.stderr, case)
    assert "Traceback (most recent call last)" not in result.stderr, result.stderr[-3000:]
    assert not box.output.exists(), "an output was written"
    assert result.stdout == ""
    executed = box.workdir / "hostile.executed.ipynb"
    assert executed.exists() == case.ran, "the record is kept when (and only when) it ran"
    box.check_untouched_outside_workdir(before)


# A sample of the payload cases through the CLI (all of them go through --payloads and Lambda).
CLI_PAYLOAD_SAMPLE = {
    "not-json",
    "nan-in-payload",
    "id-climbs-out",
    "nested-10000",
    "over-size-limit",
    "list-of-wrong-elements",
    "regex-matcher",
}


@pytest.mark.parametrize(
    "case",
    [c for c in PAYLOAD_CASES if c.name in CLI_PAYLOAD_SAMPLE] + COMMAND_CASES + NOTEBOOK_CASES,
    ids=lambda c: c.name,
)
def test_cli(case: Case, engine: str, tmp_path: Path, s3_endpoint: str) -> None:
    run_case(case, tmp_path)


@pytest.mark.parametrize("broken", sorted(BROKEN_NOTEBOOKS))
def test_cli_broken_notebook(broken: str, engine: str, tmp_path: Path) -> None:
    error, message = BROKEN_NOTEBOOKS[broken]
    box = Sandbox.make(tmp_path, Case("x", error, message, 2))
    if broken == "not-json":
        box.notebook.write_text("{not a notebook")
    elif broken == "no-parameters-cell":
        write_notebook(box.notebook, None, EMITTER)
    else:
        write_notebook(box.notebook, PARAMETERS, EMITTER, metadata={"name": "bad_name"})
    before = snapshot(tmp_path)
    result = run_cli(
        "run", box.notebook, box.input, "--workdir", box.workdir, "--output", box.output
    )
    assert result.returncode == 2, result.stderr
    check_last_line(result.stderr, Case("x", error, message, 2))
    assert not box.workdir.exists() and not box.output.exists()
    box.check_untouched_outside_workdir(before)


# --- run --payloads: every payload case in one process ------------------------------------------


def test_payloads(engine: str, tmp_path: Path) -> None:
    folder = tmp_path / "payloads"
    folder.mkdir()
    inputs = []
    for case in PAYLOAD_CASES:
        if case.env and not case.env.get("HOSTILE_NESTED"):
            continue  # a process-wide setting: the CLI cases cover it
        path = folder / f"{case.name}.json"
        path.write_bytes(_payload_bytes(case))
        inputs.append(str(path))
    good = folder / "good.json"
    good.write_text(json.dumps(make_payload()))
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
    out = tmp_path / "out"
    result = run_cli("run", notebook, "--local", "--output-dir", out, "--payloads", good, *inputs)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.last_stderr_line.startswith("nb2task.errors.Nb2TaskError: ")
    assert f"{len(inputs)} of {len(inputs) + 1} payloads failed" in result.last_stderr_line
    assert json.loads((out / "good" / "output-payload.json").read_text())["features"]
    checked = 0
    for case in PAYLOAD_CASES:
        log = out / case.name / "run.log"
        if not log.exists():
            continue
        last = log.read_text().strip().splitlines()[-1]
        assert f"{case.error}: " in last and case.message in last, (case.name, last)
        assert not (out / case.name / "output-payload.json").exists()
        assert not (out / case.name / "hostile.executed.ipynb").exists()
        checked += 1
    assert checked == len(inputs)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["good", "summary.json", *(Path(i).stem for i in inputs)]
    ), "a folder outside the output dir"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"].get("SUCCEEDED") == 1
    assert sum(summary["counts"].values()) == len(inputs) + 1


def test_payload_names_cannot_climb_out_of_the_output_dir(
    tmp_path: Path, s3: Any, bucket: str
) -> None:
    """``--payloads s3://bucket/in/..``: the folder is named safely, inside --output-dir."""
    put_json(s3, bucket, "in/..", make_payload())
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
    out = tmp_path / "a" / "out"
    result = run_cli(
        "run", notebook, "--local", "--output-dir", out, "--payloads", f"s3://{bucket}/in/.."
    )
    assert result.returncode == 0, result.stderr
    [folder] = [p for p in out.iterdir() if p.is_dir()]
    assert folder.parent == out and (folder / "output-payload.json").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


# --- the Lambda handler, in this process ---------------------------------------------------------


@pytest.fixture(scope="module", params=ENGINES)
def lambda_handler(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str
) -> Iterator[Callable[[Any], Any]]:
    """nb2task's Lambda handler on the emitter notebook, one warm container per engine."""
    notebook = write_notebook(
        tmp_path_factory.mktemp("lambda") / "hostile.ipynb", PARAMETERS, EMITTER
    )
    with warm_lambda(notebook, str(request.param)) as handler:
        yield handler


@pytest.mark.parametrize(
    "case", [c for c in PAYLOAD_CASES if c.raw is None and not c.env], ids=lambda c: c.name
)
def test_lambda(case: Case, lambda_handler: Callable[[Any], Any], s3: Any, bucket: str) -> None:
    event = json.loads(_payload_bytes(case))
    process = event.get("process") if isinstance(event, dict) else None
    if isinstance(process, list) and process and isinstance(process[0], dict):
        options = process[0].setdefault("upload_options", {})
        if isinstance(options, dict):
            options["path_template"] = f"s3://{bucket}/${{id}}"
    with pytest.raises(Exception) as raised:
        lambda_handler(event)
    assert type(raised.value).__name__ == case.error
    assert case.message in str(raised.value)
    assert keys(s3, bucket) == set(), "nothing may be uploaded for a refused payload"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"url": "file:///etc/passwd"}, "must point at s3:// here"),
        ({"url": "/etc/hostname"}, "must point at s3:// here"),
        ({"href": "file:///dev/zero"}, "must point at s3:// here"),
    ],
)
def test_lambda_follows_only_s3_urls(
    event: dict[str, str], message: str, lambda_handler: Callable[[Any], Any]
) -> None:
    with pytest.raises(Exception) as raised:
        lambda_handler(event)
    assert type(raised.value).__name__ == INVALID and message in str(raised.value)


def test_lambda_offload_into_a_missing_bucket_creates_no_bucket(
    lambda_handler: Callable[[Any], Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output payload is over Cirrus' limit and its bucket does not exist: an error,
    and no bucket is created (fsspec would have made one)."""
    monkeypatch.setenv("NB2TASK_PAYLOAD_BUCKET", "nb2task-no-such-bucket-offload")
    big = make_payload(features=[sample_item(f"i{n}", pad="x" * 2000) for n in range(80)])
    with pytest.raises(Exception) as raised:
        lambda_handler(big)
    assert type(raised.value).__name__ == "nb2task.errors.OutputError"
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert "nb2task-no-such-bucket-offload" not in buckets


# --- storage: missing buckets, keys outside their prefix, faults ----------------------------------


def test_s3_keys_cannot_leave_their_prefix(tmp_path: Path, s3: Any, bucket: str) -> None:
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, WRITER)
    source = make_payload(upload_options={"path_template": f"s3://{bucket}/jobs/${{id}}/../../x"})
    path = tmp_path / "in.json"
    path.write_text(json.dumps(source))
    result = run_cli("run", notebook, path, "--output", tmp_path / "out.json")
    assert result.returncode == 3, result.stderr
    assert result.last_stderr_line.startswith(f"{INVALID}: upload of item-1.txt: ")
    assert "is not a plain S3 key" in result.last_stderr_line
    assert not (tmp_path / "out.json").exists()
    # The record of the failed run is all there is, under the template's fixed prefix.
    assert all(k.startswith("jobs/") for k in keys(s3, bucket)), keys(s3, bucket)
    assert not [k for k in keys(s3, bucket) if k.endswith(".txt")]


def test_upload_into_a_missing_bucket_creates_nothing(tmp_path: Path, s3: Any) -> None:
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, WRITER)
    source = make_payload(upload_options={"path_template": "s3://nb2task-missing-up/${id}"})
    path = tmp_path / "in.json"
    path.write_text(json.dumps(source))
    result = run_cli("run", notebook, path, "--output", tmp_path / "out.json")
    assert result.returncode == 1, result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors.AssetError: asset upload failed")
    assert "nb2task-missing-up" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_s3_slowdown_is_retried(tmp_path: Path, s3: Any, bucket: str, s3_endpoint: str) -> None:
    """S3 says 503 SlowDown to the first requests: they are tried again, and the run
    succeeds, with every output in place."""
    proxy = FaultProxy(s3_endpoint)
    try:
        notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, WRITER)
        source = make_payload(upload_options={"path_template": f"s3://{bucket}/${{id}}"})
        url = put_json(s3, bucket, "in.json", source)
        proxy.fail(2, 503, "SlowDown", "GET")  # reading the payload
        proxy.fail(2, 503, "SlowDown", "PUT")  # uploading the outputs
        result = run_cli(
            "run",
            notebook,
            url,
            "--output",
            f"s3://{bucket}/out.json",
            env={"AWS_ENDPOINT_URL": proxy.endpoint},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert proxy.failed == 4
        out = json.loads(s3.get_object(Bucket=bucket, Key="out.json")["Body"].read())
        assert out["features"][0]["assets"]["result"]["href"].endswith("item-1/item-1.txt")
    finally:
        proxy.close()


def test_storage_that_keeps_failing_is_a_retryable_failure(
    tmp_path: Path, s3: Any, bucket: str, s3_endpoint: str
) -> None:
    """5xx after every retry: FAILED (exit 1, retried by Cirrus), not INVALID."""
    proxy = FaultProxy(s3_endpoint)
    try:
        notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
        url = put_json(s3, bucket, "in.json", make_payload())
        proxy.fail(50, 500, "InternalError", "GET")
        result = run_cli(
            "run", notebook, url, env={"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2"}
        )
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.last_stderr_line.startswith(
            f"nb2task.errors.PayloadUnavailable: cannot read payload {url}"
        )
    finally:
        proxy.close()


def test_refused_connection_is_a_retryable_failure(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
    result = run_cli(
        "run",
        notebook,
        "s3://any-bucket/in.json",
        env={"AWS_ENDPOINT_URL": closed_port_url(), "AWS_MAX_ATTEMPTS": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors.PayloadUnavailable: ")
    assert "Traceback" not in result.stderr


def test_a_missing_payload_on_s3_is_invalid_input(tmp_path: Path, bucket: str) -> None:
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
    result = run_cli("run", notebook, f"s3://{bucket}/nothing.json")
    assert result.returncode == 3
    assert result.last_stderr_line == f"{INVALID}: payload not found: s3://{bucket}/nothing.json"


def test_an_upload_failing_halfway_leaves_only_the_record(
    tmp_path: Path, s3: Any, bucket: str, s3_endpoint: str
) -> None:
    proxy = FaultProxy(s3_endpoint)
    try:
        notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, WRITER)
        items = [sample_item(f"item-{n}") for n in range(3)]
        source = make_payload(
            features=items, upload_options={"path_template": f"s3://{bucket}/up/${{id}}"}
        )
        path = tmp_path / "in.json"
        path.write_text(json.dumps(source))
        # The first output goes up, then S3 breaks for good (past every retry).
        proxy.fail(1000, 500, "InternalError", "PUT", after=1)
        result = run_cli(
            "run",
            notebook,
            path,
            "--output",
            tmp_path / "out.json",
            env={"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "1"},
        )
        assert result.returncode == 1, result.stderr[-2000:]
        assert result.last_stderr_line.startswith("nb2task.errors.AssetError: asset upload failed")
        assert not [k for k in keys(s3, bucket) if k.endswith(".txt")], keys(s3, bucket)
        assert not (tmp_path / "out.json").exists()
    finally:
        proxy.close()


def test_sigkill_at_any_point_then_a_rerun_leaves_no_orphans(
    engine: str, tmp_path: Path, s3: Any, bucket: str
) -> None:
    """Killed (SIGKILL: no clean-up at all) at various moments, then run again: the same
    keys as a run that was never killed, and no partial object."""
    notebook = write_notebook(
        tmp_path / "nb" / "hostile.ipynb", PARAMETERS, "import time\ntime.sleep(0.3)\n" + WRITER
    )
    source = make_payload(
        features=[sample_item("a"), sample_item("b")],
        upload_options={"path_template": f"s3://{bucket}/out/${{id}}"},
    )
    url = put_json(s3, bucket, "in.json", source)
    command = [NB2TASK, "run", str(notebook), url, "--output", f"s3://{bucket}/out.json"]
    clean = run_cli(*command[1:])
    assert clean.returncode == 0, clean.stderr
    expected = keys(s3, bucket)
    for delay in (0.4, 1.2, 2.2):
        for key in expected - {"in.json"}:
            s3.delete_object(Bucket=bucket, Key=key)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert keys(s3, bucket) <= expected, f"killed at {delay} s: an object no run makes"
        rerun = run_cli(*command[1:])
        assert rerun.returncode == 0, rerun.stderr
        assert keys(s3, bucket) == expected, f"killed at {delay} s"
        out = json.loads(s3.get_object(Bucket=bucket, Key="out.json")["Body"].read())
        assert [f["id"] for f in out["features"]] == ["a", "b"]


# --- processes and secrets -------------------------------------------------------------------------

STRAYS = (
    """
import subprocess, os
# One in the run's own process group, one that escapes to a session of its own, and a
# double-forked daemon: none may outlive the run.
subprocess.Popen(["sleep", "601.{mark}"])
subprocess.Popen(["sleep", "602.{mark}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "603.{mark}"])
    os._exit(0)
"""
    + EMITTER
)


def sleepers(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if mark.encode() in cmdline and b"sleep" in cmdline:
                found.append(int(entry))
    return found


def test_nothing_the_notebook_started_outlives_the_run(engine: str, tmp_path: Path) -> None:
    mark = str(time.time_ns())
    notebook = write_notebook(
        tmp_path / "nb" / "hostile.ipynb", PARAMETERS, STRAYS.replace("{mark}", mark)
    )
    path = tmp_path / "in.json"
    path.write_text(json.dumps(make_payload()))
    result = run_cli("run", notebook, path, "--no-upload", "--output", tmp_path / "out.json")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5  # a kill is asynchronous: give it a moment
    while sleepers(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(mark) == []


def test_secrets_stay_out_of_the_record_and_the_logs(
    engine: str, tmp_path: Path, s3: Any, bucket: str
) -> None:
    """A notebook that prints an environment secret, then fails: the secret is in none of
    the executed notebook, its HTML, the logs, or anything uploaded."""
    notebook = write_notebook(
        tmp_path / "nb" / "hostile.ipynb",
        PARAMETERS,
        "import os\nprint('the key is', os.environ['MY_API_TOKEN'])\n"
        "raise RuntimeError('failed with ' + os.environ['MY_API_TOKEN'])",
    )
    source = make_payload(upload_options={"path_template": f"s3://{bucket}/${{id}}"})
    path = tmp_path / "in.json"
    path.write_text(json.dumps(source))
    workdir = tmp_path / "work"
    result = run_cli(
        "run",
        notebook,
        path,
        "--workdir",
        workdir,
        "--logging",
        "DEBUG",
        env={"MY_API_TOKEN": SECRET},
    )
    assert result.returncode == 1
    assert result.last_stderr_line.startswith("RuntimeError: failed with [REDACTED:MY_API_TOKEN]")
    assert SECRET not in result.stderr + result.stdout
    executed = (workdir / "hostile.executed.ipynb").read_text()
    assert "[REDACTED:MY_API_TOKEN]" in executed and SECRET not in executed
    assert SECRET not in (workdir / "hostile.executed.html").read_text()
    uploaded = keys(s3, bucket)
    assert uploaded, "the record is uploaded"
    for key in uploaded:
        assert SECRET.encode() not in s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_secret_is_found_in_a_notebooks_json_as_json_escapes_it() -> None:
    """Saves test the notebook's JSON before walking it: a secret with a quote or a
    backslash is there only in its escaped form, and must still be found."""
    import nbformat

    from nb2task.redact import appears_in, redact_notebook

    secret = 'pa"ss\\word-1234'
    found = {secret: "DB_PASSWORD"}
    output = nbformat.v4.new_output("stream", name="stdout", text=f"it is {secret}\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[output])])
    text = json.dumps(nb, ensure_ascii=False)
    assert secret not in text and appears_in(text, found)
    assert not appears_in(json.dumps(nbformat.v4.new_notebook()), found)
    redact_notebook(nb, found)
    assert nb.cells[0].outputs[0].text == "it is [REDACTED:DB_PASSWORD]\n"


def test_an_explicit_empty_output_ends_a_run_early(engine: str, tmp_path: Path) -> None:
    """``emit([])`` then ``sys.exit(0)``: a run that says it has nothing to emit succeeds."""
    notebook = write_notebook(
        tmp_path / "nb" / "hostile.ipynb",
        PARAMETERS,
        "import nb2task, sys\nnb2task.emit([])\nsys.exit(0)",
        "raise AssertionError('never reached')",
    )
    path = tmp_path / "in.json"
    path.write_text(json.dumps(make_payload()))
    result = run_cli("run", notebook, path, "--no-upload")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["features"] == []
    assert "stopped at cell In [3]" in result.stderr


def test_output_to_a_device_fifo_or_symlink_writes_through_it(tmp_path: Path) -> None:
    """``--output /dev/null`` must not replace the device with a file (an atomic rename
    would: it broke botocore's ``AWS_CONFIG_FILE=/dev/null`` for everything after); a
    symlink is written through, the link kept."""
    import stat
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(make_payload()))
    notebook = write_notebook(tmp_path / "nb" / "hostile.ipynb", PARAMETERS, EMITTER)
    for output in (fifo, link):
        result = run_cli("run", notebook, path, "--no-upload", "--output", output)
        assert result.returncode == 0, result.stderr
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert json.loads(received[0])["features"]
    assert link.is_symlink() and json.loads(target.read_text())["features"]
