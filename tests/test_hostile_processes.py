"""Hostile input, round 2: nothing a notebook starts outlives its run, under both engines,
however it hides: a double fork into a session of its own, SIGTERM ignored, its
environment cleared (so no mark finds it), its name changed, and the kernel or child
that started it killed under it. It must be gone: killed, whatever it did to hide.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from support import make_payload, run_cli, write_notebook

PARAMETERS = 'payload = "x.json"\nworkdir = "."\n'
# A daemon, as one is written: fork, setsid, fork again, SIGTERM ignored (it survives
# exec), an empty environment; the grandchild writes its pid, then sleeps.
DAEMON = """
import os, signal, time, pathlib
pidfile = pathlib.Path(workdir).resolve().parent / "stray.pid"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        script = f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile} && exec sleep 300"
        os.execve("/bin/sh", ["/bin/sh", "-c", script], {})
    os._exit(0)
os.wait()
while not pidfile.exists():
    time.sleep(0.01)
"""
# The same, but Python, renamed, its environment emptied by exec (os.environ.clear()
# would leave /proc/<pid>/environ as it was).
RENAMED = """
import os, signal, sys, time, pathlib
pidfile = pathlib.Path(workdir).resolve().parent / "stray.pid"
code = (
    "import ctypes, os, pathlib, time; ctypes.CDLL(None).prctl(15, b'kworker/0:1', 0, 0, 0); "
    f"p = pathlib.Path({str(pidfile)!r}); t = p.with_suffix('.tmp'); "
    "t.write_text(str(os.getpid())); t.rename(p); time.sleep(300)"
)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execve(sys.executable, [sys.executable, "-c", code], {})
    os._exit(0)
os.wait()
while not pidfile.exists():
    time.sleep(0.01)
"""
POPEN = """
import subprocess, pathlib
pidfile = pathlib.Path(workdir).resolve().parent / "stray.pid"
proc = subprocess.Popen(["sleep", "300"], start_new_session=True, env={})
pidfile.write_text(str(proc.pid))
"""
# A stray that claims to be another run's kernel, by the mark nb2task sets on kernels.
FAKE_MARK = POPEN.replace("env={}", 'env={"NB2TASK_RUN_MARK": "nb2task-kernel-other"}')
EMIT = "import nb2task\nnb2task.emit(nb2task.read_items(payload))"
ENDINGS = {
    "emits": (EMIT, 0),
    "raises": ("raise RuntimeError('the task failed')", 1),
    # The kernel (or child) dies under it: what it started is orphaned, and comes back
    # to nb2task (a subreaper), not to init.
    "dies": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 1),
}


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (killed; its parent, an engine's
    subreaper, collects it in its own time, which a loaded machine may delay)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("ending", sorted(ENDINGS))
@pytest.mark.parametrize("stray", ["daemon", "renamed", "popen", "fake-mark"])
def test_a_hidden_daemon_does_not_outlive_the_run(
    stray: str, ending: str, engine: str, tmp_path: Path
) -> None:
    starter = {"daemon": DAEMON, "renamed": RENAMED, "popen": POPEN, "fake-mark": FAKE_MARK}[stray]
    cell, code = ENDINGS[ending]
    notebook = write_notebook(tmp_path / "nb" / "stray.ipynb", PARAMETERS, starter, cell)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(make_payload()))
    result = run_cli(
        "run",
        notebook,
        path,
        "--no-upload",
        "--workdir",
        tmp_path / "work",
        "--output",
        tmp_path / "out.json",
    )
    assert result.returncode == code, result.stderr
    pid = int((tmp_path / "stray.pid").read_text())
    try:
        deadline = time.monotonic() + 5  # a kill is asynchronous: give it a moment
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), Path(f"/proc/{pid}/stat").read_text()
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
