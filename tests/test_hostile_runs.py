"""Hostile input, round 2: runs never mix, a record is never truncated, and every
``NB2TASK_*`` setting is checked before any work.

- Two runs on one ``--workdir`` (or one output file): the second is refused at once
  (exit 2, naming the first's pid); the first ends as if alone.
- A full disk (``RLIMIT_FSIZE``, so writes fail with EFBIG) while the executed notebook
  is saved: the last good save stays, valid JSON, and no truncated record is uploaded.
- A bad setting is a ``UsageError`` naming it (exit 2), never exit 3, never a crash.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import NB2TASK, keys, make_payload, run_cli, write_notebook

USAGE = "nb2task.errors.UsageError"
PARAMETERS = 'payload = "x.json"\nworkdir = "."\n'
# Waits for a file named by the payload's first item, so a second run can start meanwhile.
WAITER = """
import pathlib, time, nb2task
items = nb2task.read_items(payload)
gate = pathlib.Path(workdir).parent / "gate"
pathlib.Path(workdir).parent.joinpath(f"started-{items[0].id}").touch()
while not gate.exists():
    time.sleep(0.05)
nb2task.emit(items)
"""


def _payload(tmp_path: Path, item_id: str) -> Path:
    path = tmp_path / f"{item_id}.json"
    document = make_payload()
    document["features"][0]["id"] = item_id
    path.write_text(json.dumps(document))
    return path


def _wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("shared", ["workdir", "output", "both"])
def test_a_second_run_on_a_workdir_or_output_in_use_is_refused(
    shared: str, engine: str, tmp_path: Path
) -> None:
    notebook = write_notebook(tmp_path / "nb" / "wait.ipynb", PARAMETERS, WAITER)
    runs = tmp_path / "runs"
    runs.mkdir()

    def args(name: str) -> list[str]:
        workdir = runs / ("shared" if shared in ("workdir", "both") else f"work-{name}")
        output = runs / ("out.json" if shared in ("output", "both") else f"out-{name}.json")
        return [
            "run",
            str(notebook),
            str(_payload(tmp_path, name)),
            "--no-upload",
            "--workdir",
            str(workdir),
            "--output",
            str(output),
        ]

    first = subprocess.Popen(
        [NB2TASK, *args("run-a")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(runs / "started-run-a", first)
        second = run_cli(*args("run-b"))
        assert second.returncode == 2, second.stderr
        assert second.last_stderr_line.startswith(f"{USAGE}: --"), second.stderr
        assert f"is in use by another run (pid {first.pid})" in second.last_stderr_line
        assert not (runs / "started-run-b").exists()  # refused before the notebook ran
    finally:
        (runs / "gate").touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    output = runs / ("out.json" if shared in ("output", "both") else "out-run-a.json")
    assert [f["id"] for f in json.loads(output.read_text())["features"]] == ["run-a"]
    # Once the first has ended, the same workdir and output are free again.
    again = run_cli(*args("run-c"))
    assert again.returncode == 0, again.stderr


# Cells that grow the executed notebook: the first saves are small, then one output
# makes the save bigger than the file size limit.
GROWER = """
import nb2task
items = nb2task.read_items(payload)
"""
FLOOD = "print('x' * 3_000_000)"


def _limit_file_size(limit: int) -> None:
    # A full disk, to this process: writes past `limit` bytes fail with EFBIG (and no
    # SIGXFSZ, which would kill it: a full disk does not kill either).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_keeps_the_last_good_record_and_uploads_no_truncated_one(
    engine: str, tmp_path: Path, s3: Any, bucket: str
) -> None:
    notebook = write_notebook(
        tmp_path / "nb" / "full.ipynb", PARAMETERS, GROWER, FLOOD, "nb2task.emit(items)"
    )
    source = make_payload(upload_options={"path_template": f"s3://{bucket}/${{id}}"})
    path = tmp_path / "in.json"
    path.write_text(json.dumps(source))
    workdir = tmp_path / "work"
    proc = subprocess.run(
        [NB2TASK, "run", notebook, path, "--workdir", workdir, "--output", tmp_path / "o.json"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _limit_file_size(1_000_000),
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert lines and ": " in lines[-1] and not lines[-1].startswith(" "), proc.stderr
    assert "Traceback" not in proc.stderr
    record = workdir / "full.executed.ipynb"
    assert record.exists(), proc.stderr
    saved = json.loads(record.read_text())  # the last good save: whole, valid JSON
    assert saved["cells"]
    assert not list(workdir.glob("*.tmp*")) and not list(workdir.glob(".*tmp*"))
    assert not (tmp_path / "o.json").exists()
    for key in keys(s3, bucket):  # whatever was uploaded is whole
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith(".ipynb"):
            json.loads(body)


BAD_SETTINGS = [
    ("NB2TASK_MAX_PAYLOAD_MB", "0"),
    ("NB2TASK_MAX_PAYLOAD_MB", "-1"),
    ("NB2TASK_MAX_PAYLOAD_MB", "inf"),
    ("NB2TASK_MAX_PAYLOAD_MB", "nan"),
    ("NB2TASK_MAX_PAYLOAD_MB", "abc"),
    ("NB2TASK_MAX_PAYLOAD_MB", "1e400"),
    ("NB2TASK_LOG_LEVEL", "LOUD"),
    ("NB2TASK_LOG_OUTPUT", "maybe"),
    ("NB2TASK_ENGINE", "docker"),
    ("NB2TASK_PROGRESS", "fancy"),
    ("NB2TASK_TASK_NAME", "../etc"),
    ("NB2TASK_PAYLOAD_BUCKET", "Not A Bucket"),
    ("NB2TASK_OVERSIZED_PREFIX", "a/../../b"),
    ("NB2TASK_RECORD_MB", "0"),
    ("NB2TASK_RECORD_OUTPUT_MB", "-3"),
    ("NB2TASK_MEMORY_STATS", "2"),
    ("NB2TASK_NOTEBOOK", "task\n.ipynb"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_a_bad_setting_is_a_usage_error_naming_it(
    name: str, value: str, tmp_path: Path, notebook: Path
) -> None:
    path = tmp_path / "in.json"
    path.write_text(json.dumps(make_payload()))
    for program in (NB2TASK, NB2TASK + "-task"):
        args = ["run", path] if program != NB2TASK else ["run", notebook, path]
        result = run_cli(
            *args,
            "--no-upload",
            "--output",
            tmp_path / "out.json",
            env={name: value, "NB2TASK_NOTEBOOK": str(notebook)}
            if name != "NB2TASK_NOTEBOOK"
            else {name: value},
            program=program,
        )
        assert result.returncode == 2, (program, result.stderr)
        assert result.last_stderr_line.startswith(f"{USAGE}: {name}={value!r} "), result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS[:8])
def test_a_bad_setting_in_lambda_is_a_usage_error_naming_it(
    name: str, value: str, notebook: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nb2task.lambda_function import lambda_handler

    monkeypatch.setenv("NB2TASK_NOTEBOOK", str(notebook))
    monkeypatch.setenv(name, value)
    with pytest.raises(Exception) as raised:
        lambda_handler(make_payload())
    assert type(raised.value).__name__ == USAGE  # the dotted name, for Cirrus
    assert str(raised.value).startswith(f"{name}={value!r} ")


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "nb" / "ok.ipynb",
        PARAMETERS,
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
    )


def test_good_settings_are_taken() -> None:
    from nb2task import settings

    current = settings.current(
        {
            "NB2TASK_MAX_PAYLOAD_MB": "0.5",
            "NB2TASK_LOG_LEVEL": "debug",
            "NB2TASK_LOG_OUTPUT": "yes",
            "NB2TASK_ENGINE": "KERNEL",
            "NB2TASK_OVERSIZED_PREFIX": "/big/outputs/",
            "CIRRUS_PAYLOAD_BUCKET": "payloads",
        }
    )
    assert current.max_payload_bytes == 512 * 1024
    assert (current.log_level, current.log_output, current.engine) == ("DEBUG", True, "kernel")
    assert (current.oversized_prefix, current.payload_bucket) == ("big/outputs", "payloads")
    defaults = settings.current({})
    assert defaults.max_payload_bytes == 256 * 1024**2 and defaults.engine is None
    # Every setting the module reads is a field, and the docs name each.
    assert len(settings.SETTINGS) == len(settings.Settings.__dataclass_fields__)


@pytest.mark.parametrize("where", ["parameters", "code", "markdown", "metadata"])
@pytest.mark.parametrize("command", ["run", "inspect", "lint", "build"])
def test_a_lone_surrogate_in_a_notebook_is_refused_by_name(
    where: str, command: str, tmp_path: Path
) -> None:
    """JSON can escape half a surrogate pair (``\\ud800``), which is no text: no save, YAML
    or Dockerfile could write it. Every command refuses the notebook, exit 2."""
    notebook = write_notebook(
        tmp_path / "nb" / "bad.ipynb",
        PARAMETERS + 'x = "PARAM"\n',
        "import nb2task\ns = 'CODE'\nnb2task.emit(nb2task.read_items(payload))",
        markdown="MARKDOWN",
        metadata={"description": "METADATA"},
    )
    marker = {"parameters": "PARAM"}.get(where, where.upper())
    text = notebook.read_text().replace(marker, "\\ud800")
    assert "\\ud800" in text
    notebook.write_text(text)
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(make_payload()))
    args = {
        "run": ["run", notebook, payload, "--local"],
        "inspect": ["inspect", notebook],
        "lint": ["lint", notebook],
        "build": ["build", notebook, "-o", tmp_path / "context"],
    }[command]
    result = run_cli(*args, cwd=tmp_path)
    if command == "lint":  # lint reports what it cannot read as an error finding
        assert result.returncode == 1, result.stderr
        assert "it holds '\\ud800', not text" in result.stdout
        return
    assert result.returncode == 2, result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors.NotebookError: "), result.stderr
    assert "'\\ud800'" in result.last_stderr_line
    assert "Traceback" not in result.stderr
