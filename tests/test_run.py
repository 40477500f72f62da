"""``nb2task run`` end to end: the real CLI, the real engines through papermill, real
stactask. Every test runs under each engine (the ``engine`` fixture)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import nbformat
import pytest
from support import NB2TASK, REPO, listing, make_payload, run_cli, sample_item, write_notebook

pytestmark = pytest.mark.usefixtures("engine")

README = REPO / "README.md"
EMIT_PROPS = """
import nb2task
items = nb2task.read_items(payload)
for item in items:
    item.properties.update({k: v for k, v in globals().items() if k in NAMES})
nb2task.emit(items)
"""


@pytest.fixture
def params_notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "params.ipynb",
        'payload = "sample.json"  # the input payload\n'
        "a: str = 'default-a'  # from workflow_options\n"
        "b: str = 'default-b'  # task options win\n"
        "c: str = 'default-c'  # -p wins\n"
        "d: float = 1.5  # untouched\n"
        "n: int = 0\n",
        "NAMES = {'a', 'b', 'c', 'd', 'n'}\n" + EMIT_PROPS,
    )


def run_ok(*args: str | Path) -> dict:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_parameter_precedence(params_notebook: Path, write_json) -> None:
    payload = make_payload(
        workflow_options={"a": "wf-a", "b": "wf-b", "c": "wf-c", "other_task_option": 1},
        tasks={"params": {"b": "task-b", "c": "task-c", "n": 7}, "another-task": {"x": 1}},
    )
    out = run_ok("run", params_notebook, write_json("in.json", payload), "-p", "c", "cli-c")
    props = out["features"][0]["properties"]
    assert (props["a"], props["b"], props["c"], props["d"], props["n"]) == (
        "wf-a",
        "task-b",
        "cli-c",
        1.5,
        7,
    )
    # The output payload is the input payload with new features.
    assert out["id"] == payload["id"] and out["process"] == payload["process"]


def test_task_name_selects_the_options(params_notebook: Path, write_json) -> None:
    payload = make_payload(tasks={"params": {"a": "wrong"}, "renamed": {"a": "right"}})
    out = run_ok("run", params_notebook, write_json("in.json", payload), "--task-name", "renamed")
    assert out["features"][0]["properties"]["a"] == "right"


@pytest.mark.parametrize(
    ("tasks", "cli_args", "message"),
    [
        (
            {"params": {"zzz": 1}},
            [],
            "unknown parameter 'zzz' (the notebook declares: a, b, c, d, n)",
        ),
        ({"params": {"n": "seven"}}, [], "parameter 'n' must be integer, got str 'seven'"),
        ({"params": {"d": [1]}}, [], "parameter 'd' must be number, got list [1]"),
        (
            {"params": {"payload": "/etc/passwd"}},
            [],
            "parameter 'payload' is reserved: nb2task sets it itself",
        ),
    ],
)
def test_invalid_parameters_are_rejected_before_the_notebook_runs(
    params_notebook: Path, write_json, tmp_path: Path, tasks, cli_args, message
) -> None:
    workdir = tmp_path / "work"
    payload_path = write_json("in.json", make_payload(tasks=tasks))
    result = run_cli("run", params_notebook, payload_path, "--workdir", workdir, *cli_args)
    assert result.returncode == 3
    assert result.last_stderr_line == f"stactask.exceptions.InvalidInput: {message}"
    assert "Traceback" not in result.stderr
    # Rejected before the notebook ran: no input payload was written for it, no
    # executed notebook (the run's record) was saved.
    assert listing(workdir) == []
    assert result.stdout == ""


def test_missing_required_parameter(tmp_path: Path, write_json) -> None:
    nb = write_notebook(tmp_path / "req.ipynb", "count: int  # required\n", "print(count)")
    result = run_cli("run", nb, write_json("in.json", make_payload()))
    assert result.returncode == 3
    assert result.last_stderr_line.startswith(
        "stactask.exceptions.InvalidInput: missing parameter 'count' (integer)"
    )


def test_emit_items_and_dicts_one_or_many(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "emitter.ipynb",
        'payload = "x.json"',
        "import nb2task, pystac\n"
        "src = nb2task.read_items(payload)[0]\n"
        "one = src.clone(); one.id = 'as-item'\n"
        "nb2task.emit(one)",
        "d = src.to_dict(); d['id'] = 'as-dict'\nnb2task.emit(d)",
        "import numpy as np\n"
        "many = [src.clone(), dict(src.to_dict(), id='in-list-dict')]\n"
        "many[0].id = 'in-list-item'\n"
        "many[0].properties['mean'] = np.float32(0.5)  # numpy values are fine\n"
        "nb2task.emit(many)",
    )
    out = run_ok("run", nb, write_json("in.json", make_payload()))
    assert [f["id"] for f in out["features"]] == [
        "as-item",
        "as-dict",
        "in-list-item",
        "in-list-dict",
    ]
    assert out["features"][2]["properties"]["mean"] == 0.5


def test_stdin_stdout_and_url_indirection(params_notebook: Path, write_json) -> None:
    payload = make_payload(tasks={"params": {"a": "via-url"}})
    pointer = write_json("pointer.json", {"url": str(write_json("real.json", payload))})
    result = run_cli("run", params_notebook, stdin=pointer.read_text())
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # stdout holds the payload and nothing else
    assert out["features"][0]["properties"]["a"] == "via-url"


def test_output_file_and_kept_workdir(
    params_notebook: Path, write_json, tmp_path: Path, engine: str
) -> None:
    workdir, output = tmp_path / "work", tmp_path / "out" / "payload.json"
    result = run_cli(
        "run",
        params_notebook,
        write_json("in.json", make_payload()),
        "--workdir",
        workdir,
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    assert f"({engine} engine)" in result.stderr  # NB2TASK_ENGINE chose it
    assert result.stdout == ""
    assert json.loads(output.read_text())["features"][0]["id"] == "item-1"
    # An explicit workdir is kept (stactask's CLI would delete it without --save-workdir).
    assert (workdir / "params.executed.ipynb").exists()
    assert (workdir / "input-payload.json").exists()


def test_temporary_workdir_keeps_only_the_executed_notebook(
    params_notebook: Path, write_json
) -> None:
    result = run_cli("run", params_notebook, write_json("in.json", make_payload()))
    assert result.returncode == 0, result.stderr
    kept = [line for line in result.stderr.splitlines() if "executed notebook kept at" in line]
    assert kept, result.stderr
    path = Path(kept[-1].rsplit(" ", 1)[-1])
    assert path.parent.name.startswith("nb2task-"), path  # a temporary workdir
    try:
        assert path.name == "params.executed.ipynb"
        assert listing(path.parent) == [path.name]
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def test_failing_notebook(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "fails.ipynb", 'payload = "x.json"', "x = 1", "y = x / 0", "import nb2task"
    )
    workdir, output = tmp_path / "work", tmp_path / "out.json"
    result = run_cli(
        "run", nb, write_json("in.json", make_payload()), "--workdir", workdir, "--output", output
    )
    assert result.returncode == 1
    assert result.last_stderr_line == (
        "ZeroDivisionError: division by zero (notebook cell In [4], line 1: y = x / 0)"
    )
    assert not output.exists()
    executed = nbformat.read(workdir / "fails.executed.ipynb", as_version=4)
    banner = executed.cells[0]
    assert banner.cell_type == "markdown" and "An Exception was encountered" in banner.source
    error = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert error and error[0]["ename"] == "ZeroDivisionError"


def test_invalid_input_raised_in_the_notebook(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "rejects.ipynb",
        'payload = "x.json"',
        "from stactask.exceptions import InvalidInput\nraise InvalidInput('no red band in item-1')",
    )
    result = run_cli("run", nb, write_json("in.json", make_payload()))
    assert result.returncode == 3
    assert result.last_stderr_line == (
        "stactask.exceptions.InvalidInput: no red band in item-1 "
        "(notebook cell In [3], line 2: raise InvalidInput('no red band in item-1'))"
    )


def test_skip_tagged_cells_are_dropped(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "skips.ipynb",
        'payload = "x.json"',
        ("raise RuntimeError('exploration only')", ["nb2task-skip"]),
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
    )
    workdir = tmp_path / "work"
    result = run_cli("run", nb, write_json("in.json", make_payload()), "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    executed = nbformat.read(workdir / "skips.executed.ipynb", as_version=4)
    assert not any("exploration only" in c.source for c in executed.cells)


def test_invalid_emitted_item(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "bad_item.ipynb",
        'payload = "x.json"',
        "import nb2task\nnb2task.emit({'type': 'Feature', 'id': 'x', 'properties': {}})",
    )
    result = run_cli("run", nb, write_json("in.json", make_payload()))
    assert result.returncode == 1
    assert result.last_stderr_line.startswith(
        "nb2task.errors.InvalidItemError: emitted item 0 (id 'x') is not a valid STAC item:"
    )


def test_duplicate_emitted_ids(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "dup.ipynb",
        'payload = "x.json"',
        "import nb2task\nitems = nb2task.read_items(payload)",
        "nb2task.emit(items)\nnb2task.emit(items)",
    )
    result = run_cli("run", nb, write_json("in.json", make_payload()))
    assert result.returncode == 1
    assert result.last_stderr_line == (
        "nb2task.errors.InvalidItemError: emitted item 1: item id 'item-1' appears twice"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "stactask.exceptions.InvalidInput: payload "),
        (
            '{"type": "FeatureCollection", "features": "x", "process": []}',
            "stactask.exceptions.InvalidInput: invalid payload: unable to parse 'features'",
        ),
        (
            '{"type": "FeatureCollection", "features": [], "process": {"tasks": 1}}',
            "stactask.exceptions.InvalidInput: invalid payload: unable to parse 'tasks'",
        ),
        ("[1, 2]", "stactask.exceptions.InvalidInput: a payload must be a JSON object"),
        (
            '{"url": "/nonexistent/payload.json"}',
            "stactask.exceptions.InvalidInput: payload not found: /nonexistent/payload.json",
        ),
    ],
)
def test_bad_payloads(params_notebook: Path, document: str, message: str) -> None:
    result = run_cli("run", params_notebook, stdin=document)
    assert result.returncode == 3
    assert result.last_stderr_line.startswith(message)


def test_notebook_metadata_names_the_task(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "file-stem.ipynb",
        'payload = "x.json"\nflag: bool = False',
        "import nb2task\nitems = nb2task.read_items(payload)\n"
        "items[0].properties['flag'] = flag\nnb2task.emit(items)",
        metadata={"name": "meta-name", "version": "2.0.0"},
    )
    payload = make_payload(tasks={"meta-name": {"flag": True}}, features=[sample_item()])
    out = run_ok("run", nb, write_json("in.json", payload))
    assert out["features"][0]["properties"]["flag"] is True


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--cell-timeout", "nb2task.errors.RunTimeoutError: a notebook cell ran longer than 2 s"),
        ("--timeout", "nb2task.errors.RunTimeoutError: the notebook ran longer than 2 s"),
    ],
)
def test_timeouts(tmp_path: Path, write_json, flag: str, message: str) -> None:
    nb = write_notebook(
        tmp_path / "slow.ipynb", 'payload = "x.json"', "import time\ntime.sleep(60)"
    )
    workdir = tmp_path / "work"
    result = run_cli(
        "run", nb, write_json("in.json", make_payload()), flag, "2", "--workdir", workdir
    )
    assert result.returncode == 1
    assert result.last_stderr_line == message
    assert (workdir / "slow.executed.ipynb").exists()


def test_sigterm_keeps_the_record_and_says_so(tmp_path: Path, write_json) -> None:
    import signal
    import subprocess
    import time

    nb = write_notebook(
        tmp_path / "long.ipynb",
        'payload = "x.json"',
        "import time\nprint('started', flush=True)\ntime.sleep(120)",
    )
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [NB2TASK, "run", nb, write_json("in.json", make_payload()), "--workdir", workdir],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (workdir / "long.executed.ipynb").exists() and "started" in (
            workdir / "long.executed.ipynb"
        ).read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr.strip().splitlines()[-1] == (
        "nb2task.errors.Terminated: stopped by SIGTERM (job timeout or cancellation)"
    )
    assert (workdir / "long.executed.ipynb").exists()


def test_a_sigterm_in_the_middle_of_a_log_line_still_ends_the_run() -> None:
    """The SIGTERM handler raises wherever the main thread is: inside a log line too,
    where logging catches every Exception (it printed the error and the run went on,
    past the signal, until its notebook ended: a CI run saw it)."""
    import logging

    from nb2task.errors import Terminated

    class SignalledWhileWriting:
        """stderr, as the signal comes while a line is being written to it."""

        def write(self, text: str) -> int:
            raise Terminated("stopped by SIGTERM (job timeout or cancellation)")

        def flush(self) -> None:
            pass

    logger = logging.getLogger("nb2task.test-sigterm")
    handler = logging.StreamHandler(SignalledWhileWriting())
    logger.addHandler(handler)
    try:
        with pytest.raises(Terminated):
            logger.warning("a line being written when the signal comes")
    finally:
        logger.removeHandler(handler)


def test_jupytext_py_notebook(tmp_path: Path, write_json) -> None:
    nb = tmp_path / "as_script.py"
    nb.write_text(
        '# %% tags=["parameters"]\n'
        'payload = "x.json"  # the input payload\n'
        'note: str = "default"  # a note\n\n'
        "# %%\n"
        "import nb2task\n"
        "items = nb2task.read_items(payload)\n"
        'items[0].properties["note"] = note\n'
        "nb2task.emit(items)\n"
    )
    # The task name comes from the file stem, made to follow the task-name rule.
    payload = make_payload(tasks={"as-script": {"note": "from a .py notebook"}})
    out = run_ok("run", nb, write_json("in.json", payload))
    assert out["features"][0]["properties"]["note"] == "from a .py notebook"
    inspected = run_cli("inspect", nb, "--json")
    assert json.loads(inspected.stdout)["properties"]["note"]["description"] == "a note"


def test_many_payloads_in_parallel(tmp_path: Path) -> None:
    """Payloads from a folder and a glob; one fails in the notebook, one is invalid: the
    others' outputs are there, the failures are logged at WARNING with their error lines,
    and the summary (table on stdout, summary.json) says how each ended."""
    params_notebook = write_notebook(
        tmp_path / "params.ipynb",
        'payload = "sample.json"\na: str = "x"\nn: int = 0',
        'ratio = 1 / 0 if a == "divide" else 1',
        "NAMES = {'a', 'n'}\n" + EMIT_PROPS,
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = {"first": {"a": "1"}, "second": {"a": "2"}, "broken": {"n": "not an int"}}
    cases["divide"] = {"a": "divide"}  # divides by zero
    for name, options in cases.items():
        (inputs / f"{name}.json").write_text(json.dumps(make_payload(tasks={"params": options})))
    out = tmp_path / "runs"
    result = run_cli(
        "run", params_notebook, "--payloads", inputs, str(inputs / "s*.json"),
        "--jobs", "2", "--output-dir", out, "--local",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.last_stderr_line.startswith(
        "nb2task.errors.Nb2TaskError: 2 of 4 payloads failed: "
        f"{inputs / 'broken.json'} (stactask.exceptions.InvalidInput), "
        f"{inputs / 'divide.json'} (ZeroDivisionError); see {out}/<payload>/run.log"
    )
    for name, a in (("first", "1"), ("second", "2")):
        output = json.loads((out / name / "output-payload.json").read_text())
        assert output["features"][0]["properties"]["a"] == a
        assert (out / name / "params.executed.ipynb").exists()
    assert not (out / "broken" / "output-payload.json").exists()
    assert "must be integer" in (out / "broken" / "run.log").read_text()
    record = json.loads((out / "divide" / "params.executed.ipynb").read_text())  # kept
    # The record says where its payload came from (replay fetches it from there).
    assert record["metadata"]["nb2task_run"]["payload"]["url"] == str(
        (inputs / "divide.json").resolve()
    )
    assert "ZeroDivisionError" in (out / "divide" / "run.log").read_text().splitlines()[-1]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2 and all("nb2task.progress: [" in w for w in warnings), warnings
    assert any("INVALID" in w and "must be integer" in w for w in warnings)
    assert any("FAILED" in w and "ZeroDivisionError: division by zero" in w for w in warnings)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"SUCCEEDED": 2, "INVALID": 1, "FAILED": 1}
    states = {Path(row["payload"]).stem: row["state"] for row in summary["payloads"]}
    assert states == {"broken": "INVALID", "divide": "FAILED", "first": "SUCCEEDED",
                      "second": "SUCCEEDED"}  # fmt: skip
    [header, *rows] = result.stdout.splitlines()
    assert header.split()[:3] == ["payload", "state", "duration"] and len(rows) == 4
    assert any("FAILED" in r and "ZeroDivisionError" in r for r in rows)


def test_the_readme_payloads_example_works_as_written(tmp_path: Path) -> None:
    [command] = re.findall(r"^nb2task run \S+ --local --payloads .*$", README.read_text(), re.M)
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    program, *args = shlex.split(command)  # as a shell passes it: the glob unexpanded
    assert program == "nb2task"
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "local-output" / "summary.json").read_text())
    assert summary["counts"] == {"SUCCEEDED": 2}


@pytest.mark.parametrize(
    ("cli_args", "message"),
    [
        (["-p", "nope", "1"], "-p nope: unknown parameter (the notebook declares: a, b, c, d, n)"),
        (["-p", "n", "1.5"], "parameter 'n' must be integer, got float 1.5"),
        (
            ["-p", "workdir", "x"],
            "-p workdir: 'workdir' is reserved: nb2task sets it (use --workdir)",
        ),
    ],
)
def test_bad_parameter_values_on_the_command_line_are_invalid_input(
    params_notebook: Path, write_json, tmp_path: Path, cli_args, message
) -> None:
    workdir = tmp_path / "work"
    result = run_cli(
        "run",
        params_notebook,
        write_json("in.json", make_payload()),
        "--workdir",
        workdir,
        *cli_args,
    )
    assert result.returncode == 3
    assert result.last_stderr_line == f"stactask.exceptions.InvalidInput: {message}"
    assert listing(workdir) == []  # rejected before the notebook ran
