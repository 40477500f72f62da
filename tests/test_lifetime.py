"""Nothing outlives a run, whatever stops nb2task, under both engines.

Each case starts ``nb2task run`` in a process group of its own, as a terminal would,
with a mark in its environment that everything it starts inherits (the warm parent, the
child, a kernel). Once the notebook's long cell runs (it writes ``started``), the case
stops nb2task: Ctrl-C to the whole process group, SIGINT, SIGTERM or SIGKILL to the
nb2task process alone, or SIGKILL of the engine's own process (the warm parent; the
kernel). Then it asserts that nb2task ended as it should, that no process of the run is
alive 2 s later, and that the executed notebook did not change after nb2task exited; on
the signals nb2task can catch, that the record's last save says the run was stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import NB2TASK, make_payload, write_notebook

MARK = "NB2TASK_TEST_LIFETIME_MARK"
CELLS = {
    "sleeps": "import time\ntime.sleep(120)",
    "computes": "x = 0\nwhile True:\n    x = (x + sum(range(1000))) % 7919",
}
STOPS = {
    # How nb2task is stopped -> its exit code, and the name its last line gives.
    "ctrl-c": (130, "KeyboardInterrupt"),
    "sigint": (130, "KeyboardInterrupt"),
    "sigterm": (143, "nb2task.errors.Terminated"),
    "sigkill": (-signal.SIGKILL, None),
    "kill-the-engine": (1, "nb2task.errors.NotebookDiedError"),
}


def marked(mark: str) -> list[int]:
    """The live processes (not zombies) carrying ``MARK=mark`` in their environment."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 :].split()[0] != b"Z":
            found.append(int(entry))
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def engine_process(mark: str, engine: str, nb2task: int) -> int:
    """The pid of the run's engine process: the warm parent, or the kernel."""
    needle = "nb2task.engines.zygote" if engine == "fork" else "ipykernel"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for pid in marked(mark):
            if pid != nb2task and needle in command_line(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {engine} engine process found")


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("stop", sorted(STOPS))
def test_nothing_outlives_a_stopped_run(engine: str, stop: str, cell: str, tmp_path: Path) -> None:
    started = tmp_path / "started"
    notebook = write_notebook(
        tmp_path / "long.ipynb",
        'payload = "x.json"',
        f"open({str(started)!r}, 'w').close()\nprint('the long cell starts')",
        CELLS[cell],
        "print('never reached')",
    )
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(make_payload()))
    workdir = tmp_path / "work"
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [NB2TASK, "run", str(notebook), str(payload), "--local", "--workdir", str(workdir)],
        env={**os.environ, MARK: mark, "NB2TASK_ENGINE": engine},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate(timeout=10)
        time.sleep(0.3)  # well inside the long cell
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        elif stop == "sigint":
            os.kill(proc.pid, signal.SIGINT)
        elif stop == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        elif stop == "sigkill":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.kill(engine_process(mark, engine, proc.pid), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    record = workdir / "long.executed.ipynb"
    seen = record.read_bytes() if record.exists() else None
    time.sleep(2)
    assert marked(mark) == [], [command_line(p) for p in marked(mark)]
    assert (record.read_bytes() if record.exists() else None) == seen, "the record changed"

    code, name = STOPS[stop]
    assert proc.returncode == code, stderr
    assert not (workdir / "output-payload.json").exists()
    if name is None:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"{name}: "), stderr
    assert seen is not None
    executed = json.loads(seen)
    assert executed["metadata"]["nb2task_run"]["error"]["line"].startswith(f"{name}: ")
    long_cell = next(c for c in executed["cells"] if CELLS[cell] in "".join(c["source"]))
    errors = [o for o in long_cell["outputs"] if o["output_type"] == "error"]
    assert errors and errors[-1]["ename"] == name, long_cell["outputs"]
    assert long_cell["metadata"]["papermill"]["status"] == "failed"
    assert "never reached" not in json.dumps(executed["cells"][-1].get("outputs", []))
