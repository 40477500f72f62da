"""The warm parent: a process that imports once, then forks one run per payload.

Run as ``python -m nb2task.engines.zygote --control-fd N [--notebook PATH]``; used
through ``ZygoteProcess`` (its handle, below). It warms up: IPython's shell, papermill
and nbformat with the fork engine, pystac, ``nb2task.runtime`` and, best-effort, the
notebook's own top-level imports; then it freezes its heap for the garbage collector
and serves requests on its control socket:

- ``run`` (a socket passed along): fork a run leader (``leader``) for one payload;
- ``cells`` (a socket passed along): fork a child that runs cells on it (``child``),
  for papermill running the fork engine outside nb2task;
- ``kill``: SIGKILL a run's process group;
- and it reports ``exited`` for every process it reaps.

It stays single-threaded, with no event loop, so that forking it is safe. When a run
ends, nothing it started stays: its process group is killed, and processes that
escaped it come back to this process, a subreaper, and are killed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import importlib.util
import itertools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import describe_exit, processes, protocol

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120  # the warm-up imports the notebook's own modules
FORK_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 10
MAX_CONTROL_MESSAGE = 1 << 16
# What every run needs, warm in the parent and free in each child.
# (papermill before our registry: papermill loads that module itself, from its entry points.)
BASE_IMPORTS = (
    "papermill", "nbformat", "nb2task.engines.registry", "nb2task.engines.leader",
    "nb2task.schema", "nb2task.runtime", "pystac",
)  # fmt: skip
_run_ids = itertools.count(1)


def notebook_imports(path: Path) -> list[str]:
    """Modules a notebook imports at top level (best effort: unparsable cells skipped)."""
    try:
        if path.suffix == ".ipynb":
            document = json.loads(path.read_text(encoding="utf-8"))
            sources = [
                "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in document.get("cells", [])
                if c.get("cell_type") == "code"
            ]
        else:
            sources = [path.read_text(encoding="utf-8")]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    modules: list[str] = []
    for source in sources:
        # IPython syntax (magics, shell escapes) is not Python: drop those lines.
        code = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        )
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in tree.body:
            for statement in node.body if isinstance(node, ast.Try) else [node]:
                if isinstance(statement, ast.Import):
                    modules += [alias.name for alias in statement.names]
                elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                    modules.append(statement.module or "")
    return list(dict.fromkeys(m for m in modules if m and m != "__future__"))


def _is_installed_package(module: str, notebook_dir: Path | None) -> bool:
    """True for an installed module; False for one beside the notebook (it may change
    between runs, so each run imports it afresh) or one that is not found."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = spec.origin or (list(spec.submodule_search_locations or []) or [""])[0]
    if not origin or origin in ("built-in", "frozen") or notebook_dir is None:
        return True
    try:
        Path(origin).resolve().relative_to(notebook_dir)
    except ValueError:
        return True
    return False


def native_threads() -> int:
    """Threads of this process as the OS counts them (C libraries' included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def warm_up(modules: list[str], skip: set[str], notebook_dir: Path | None) -> dict[str, Any]:
    """Import what the runs will need; return what was imported and what was not.

    A module that starts a Python thread at import makes the parent unsafe to fork:
    this process then restarts itself without that module.
    """
    from . import child

    started = time.perf_counter()
    # papermill imports boto3 for its S3 reader at import (7 MB, ~0.1 s), and falls back
    # as if boto3 were missing when that import fails: runs here never read or write S3
    # through papermill (the notebook comes as JSON, the output is a local file).
    if "papermill" not in sys.modules and "papermill.s3" not in modules:
        sys.modules["papermill.s3"] = None  # type: ignore[assignment]
    shell = child.prepare_shell()
    imported, failed = [], []
    candidates = [*BASE_IMPORTS, *(m for m in modules if _is_installed_package(m, notebook_dir))]
    for module in candidates:
        if module in skip or module in sys.modules:
            continue
        try:
            with (
                open(os.devnull, "w") as quiet,
                contextlib.redirect_stdout(quiet),
                contextlib.redirect_stderr(quiet),
            ):
                importlib.import_module(module)
            imported.append(module)
        except BaseException as err:  # noqa: BLE001 - the notebook will report its own errors
            failed.append(f"{module}: {type(err).__name__}")
        if threading.active_count() > 1:
            _restart_without(module, skip)
    # Warm what every run touches, not only imports.
    child.exercise_shell(shell)
    exercise_runtime()
    exercise_papermill()
    gc.collect()
    gc.freeze()  # forked children share these pages instead of copying them on GC
    return {
        "shell": shell,
        "imported": imported,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 3),
        "threads": native_threads(),
    }


SAMPLE_ITEM = {
    "type": "Feature",
    "stac_version": "1.1.0",
    "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
    "id": "warm-up",
    "geometry": {"type": "Point", "coordinates": [0.0, 0.0]},
    "bbox": [0.0, 0.0, 0.0, 0.0],
    "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:code": "EPSG:4326"},
    "links": [{"rel": "self", "href": "https://example.com/warm-up.json"}],
    "assets": {"data": {"href": "data.tif", "type": "image/tiff", "roles": ["data"]}},
}


def exercise_runtime() -> None:
    """Read and serialise a sample item once: pystac loads its extension hooks and
    date parsing on first use (50 ms), which every child would otherwise pay."""
    import tempfile

    from nb2task import runtime

    with tempfile.TemporaryDirectory(prefix="nb2task-warm-") as tmp:
        path = Path(tmp) / "payload.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [SAMPLE_ITEM]}))
        with contextlib.suppress(Exception):
            for item in runtime.read_items(path):
                json.dumps(item.to_dict(transform_hrefs=False))


def exercise_papermill() -> None:
    """Parameterize and serialise a small notebook once: nbformat compiles its schema
    validator on first use (~30 ms), which every run would otherwise pay."""
    with contextlib.suppress(Exception):
        import nbformat
        from nbformat.v4 import new_code_cell, new_notebook
        from papermill.parameterize import parameterize_notebook

        from . import papermill_registry

        registry = papermill_registry()
        registry.use_schema_translator()
        cell = new_code_cell("a = 1")  # type: ignore[no-untyped-call]
        cell.metadata["tags"] = ["parameters"]
        nb = new_notebook(cells=[cell, new_code_cell("a")])  # type: ignore[no-untyped-call]
        nb.metadata["papermill"] = {}
        nb = parameterize_notebook(
            nb, {"a": 2}, kernel_name="python3", language="python", engine_name=registry.FORK_ENGINE
        )
        nbformat.writes(nb)  # type: ignore[no-untyped-call]


def _restart_without(module: str, skip: set[str]) -> None:
    argv = [a for a in sys.argv[1:]]
    argv += ["--skip", module]
    for existing in skip:
        argv += ["--skip", existing]
    sys.stderr.write(f"nb2task zygote: {module} starts a thread at import; not pre-importing it\n")
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "nb2task.engines.zygote", *argv])


class Zygote:
    """The request loop."""

    def __init__(self, control: socket.socket, shell: Any) -> None:
        self.control = control
        self.shell = shell
        self.runs: dict[int, str] = {}  # pid of a forked process -> its run id
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self._wake_w = wake_w

    def send(self, message: dict[str, Any]) -> None:
        self.control.send(json.dumps(message).encode())

    def serve(self) -> None:
        import select

        while True:
            readable, _, _ = select.select([self.control.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.reap()
            if self.control.fileno() in readable:
                data, fds, _, _ = socket.recv_fds(self.control, MAX_CONTROL_MESSAGE, 4)
                if not data:
                    for fd in fds:
                        os.close(fd)
                    self.shutdown()
                    return
                self.handle(json.loads(data), fds)

    def handle(self, request: dict[str, Any], fds: list[int]) -> None:
        op = request.get("op")
        if op in ("run", "cells") and fds:
            self.fork(request, fds[0])
            fds = fds[1:]
        elif op == "kill":
            for pid, run_id in self.runs.items():
                if run_id == request.get("run"):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
        for fd in fds:
            os.close(fd)

    def fork(self, request: dict[str, Any], fd: int) -> None:
        pid = os.fork()
        if pid == 0:
            self._become(request, fd)  # never returns
        os.close(fd)
        self.runs[pid] = str(request["run"])
        self.send({"op": "forked", "run": request["run"], "pid": pid})

    def _become(self, request: dict[str, Any], fd: int) -> None:
        """In the forked process: drop the parent's machinery, then serve the request."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.control.close()
        os.close(self.wake_r)
        os.close(self._wake_w)
        sock = socket.socket(fileno=fd)
        from . import child

        if request["op"] == "cells":
            child.become_child(self.shell, sock, str(request.get("cwd") or "."), request["env"])
        code = child.EXIT_CRASHED
        try:
            os.setsid()  # its own process group: killed whole if the run must stop
            from . import leader

            leader.lead(self.shell, sock)
            code = 0
        except BaseException:  # noqa: BLE001 - report and leave: the exit tells the rest
            with contextlib.suppress(Exception):
                import traceback

                os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(code)

    def reap(self) -> None:
        """Collect ended children; kill what each run left behind; report the ends."""
        ended: list[dict[str, Any]] = []
        reaped_any = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped_any = True
            run_id = self.runs.pop(pid, None)
            if run_id is None:
                continue  # a stray that came back here, and ended
            # The group id stays reserved while members live: this cannot hit an
            # unrelated process.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            message: dict[str, Any] = {"op": "exited", "run": run_id, "pid": pid}
            if os.WIFSIGNALED(status):
                message["signal"] = os.WTERMSIG(status)
            else:
                message["code"] = os.waitstatus_to_exitcode(status)
            ended.append(message)
        if reaped_any:
            self.kill_strays()
        for message in ended:
            self.send(message)

    def kill_strays(self) -> None:
        """Kill processes that outlived their run: children of this process that are
        not runs (orphans that came back here), with everything below them. Their
        ends wake this loop again, so a process forked meanwhile is caught too."""
        processes.kill_below(os.getpid(), spare=self.runs)

    def shutdown(self) -> None:
        """The writer went away: stop every run and leave."""
        for pid in list(self.runs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.kill_strays()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nb2task-zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--notebook", type=Path)
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    os.set_inheritable(args.control_fd, True)  # kept across a restart (execv)
    processes.set_child_subreaper()
    notebook_dir = args.notebook.resolve().parent if args.notebook else None
    modules = notebook_imports(args.notebook) if args.notebook else []
    if notebook_dir is not None:
        sys.path.insert(0, "")  # as in a kernel: modules beside the notebook import
    warm = warm_up(modules, set(args.skip), notebook_dir)
    zygote = Zygote(control, warm.pop("shell"))
    zygote.send({"op": "ready", "pid": os.getpid(), **warm})
    zygote.serve()
    # Nothing to flush or finalise: tearing down IPython and papermill would cost ~0.2 s
    # that the task's process would wait for.
    os._exit(0)


# --- the handle, in the process that uses the warm parent ----------------------------


class ZygoteGone(Exception):
    """The warm parent exited; the run could not start or end cleanly."""


class ZygoteProcess:
    """The warm parent, seen from the process that uses it: start it, have it fork, kill."""

    def __init__(self, notebook: Path | None = None) -> None:
        self.notebook = notebook
        self.info: dict[str, Any] = {}
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._mailboxes: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._dead = False
        # The parent's own stderr, read for its death notice.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "nb2task.engines.zygote"]
        command += ["--control-fd", str(theirs.fileno())]
        if notebook is not None:
            command += ["--notebook", str(notebook)]
        self.process = subprocess.Popen(
            command,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=str(notebook.parent) if notebook is not None else None,
        )
        theirs.close()
        self._listener = threading.Thread(target=self._listen, name="nb2task-zygote", daemon=True)
        self._listener.start()

    @property
    def alive(self) -> bool:
        return not self._dead

    def _listen(self) -> None:
        while True:
            try:
                data = self._control.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            message = protocol._decode(data.decode())
            if message.get("op") == "ready":
                self.info = message
                self._ready.set()
            elif "run" in message:
                with self._lock:
                    mailbox = self._mailboxes.get(str(message["run"]))
                if mailbox is not None:
                    mailbox.put(message)
        self._dead = True
        self._ready.set()
        with self._lock:
            mailboxes = list(self._mailboxes.values())
        for mailbox in mailboxes:
            mailbox.put({"op": "gone"})

    def death_notice(self) -> str:
        """What the warm parent said before it died (the end of its stderr)."""
        with contextlib.suppress(OSError):
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"exit status {self.process.poll()}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if not self._ready.is_set():
            started = time.monotonic()
            self._ready.wait(timeout)
            waited = (time.monotonic() - started) * 1000
            logger.debug("waited %.0f ms for the warm parent (its warm-up: %s)", waited, self.info)
        if not self._ready.is_set() or self._dead:
            raise ZygoteGone(f"the warm parent did not start: {self.death_notice()}")

    def start(
        self, kind: str, sock: socket.socket, wait: bool = True, **request: Any
    ) -> tuple[str, int | None]:
        """Fork a process that serves ``sock``: a run leader (``kind="run"``) or a child
        running cells (``"cells"``, with ``cwd`` and ``env``); its run id and pid (None
        without ``wait``: the caller talks to it over ``sock`` at once, not waiting for
        the warm parent to say it forked)."""
        self.wait_ready()
        run_id = f"{os.getpid()}-{next(_run_ids)}"
        mailbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._mailboxes[run_id] = mailbox
        request = {**request, "op": kind, "run": run_id}
        try:
            socket.send_fds(self._control, [protocol._encode(request).encode()], [sock.fileno()])
        except OSError as err:
            raise ZygoteGone(f"the warm parent is gone: {err}") from None
        if not wait:
            return run_id, None
        reply = self._next(run_id, FORK_TIMEOUT_S)
        if reply.get("op") != "forked":
            raise ZygoteGone(f"the warm parent could not fork: {self.death_notice()}")
        return run_id, int(reply["pid"])

    def _next(self, run_id: str, timeout: float, skip: str = "") -> dict[str, Any]:
        with self._lock:
            mailbox = self._mailboxes[run_id]
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = mailbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return {"op": "timeout"}
            if message.get("op") != skip:
                return message

    def kill(self, run_id: str) -> None:
        """SIGKILL the run's process group (the warm parent reports the exit)."""
        with contextlib.suppress(OSError):
            self._control.send(protocol._encode({"op": "kill", "run": run_id}).encode())

    def wait_exit(self, run_id: str, timeout: float = EXIT_TIMEOUT_S) -> str:
        """How the run's process ended, in words (killed if it does not end in ``timeout``)."""
        try:
            message = self._next(run_id, timeout, skip="forked")
            if message.get("op") == "timeout":
                self.kill(run_id)
                message = self._next(run_id, timeout, skip="forked")
            return how_it_ended(message)
        finally:
            self.forget(run_id)

    def forget(self, run_id: str) -> None:
        """Stop keeping the run's messages (its exit need not be waited for)."""
        with self._lock:
            self._mailboxes.pop(run_id, None)

    def close(self) -> None:
        """Stop the warm parent; it kills any run still going."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._control.close()
        try:
            self.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def how_it_ended(message: dict[str, Any]) -> str:
    """How a child ended, in words, from the warm parent's ``exited`` message."""
    if "signal" in message:
        return describe_exit(-int(message["signal"]))
    if "code" in message:
        return describe_exit(int(message["code"]))
    if message.get("op") == "gone":
        return "its warm parent died"
    return describe_exit(None)


if __name__ == "__main__":
    main()
