"""The warm parent of the fork engine: imports once, then forks one child per payload.

Run as ``python -m nb2task.engines.zygote --control-fd N [--notebook PATH]`` by
``nb2task.engines.fork``. It warms up (IPython's shell, pystac, ``nb2task.runtime``
and, best-effort, the notebook's own top-level imports), freezes the heap for the
garbage collector, and then serves requests on its control socket:

- ``fork`` (with a socket passed along): fork a child that runs the payload's cells
  on that socket (``nb2task.engines.child.serve``);
- ``kill``: SIGKILL a run's process group;
- and it reports ``exited`` for every child it reaps.

It stays single-threaded, with no event loop, so that forking it is safe. When a run
ends, nothing it started stays: its process group is killed, and processes that
escaped it (a new session) come back to this process, a subreaper, and are killed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
# What every notebook task imports: warm in the parent, free in each child.
BASE_IMPORTS = ("nb2task.runtime", "pystac", "json", "pathlib")
MAX_CONTROL_MESSAGE = 1 << 16
EXIT_CHILD_CRASHED = 70  # the child's own machinery failed (not the notebook)


def set_child_subreaper() -> bool:
    """Orphaned descendants come back to this process instead of init (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


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
    if not origin or origin in ("built-in", "frozen"):
        return True
    if notebook_dir is None:
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
    """Import what the children will need; return what was imported and what was not.

    A module that starts a Python thread at import makes the parent unsafe to fork:
    this process then restarts itself without that module.
    """
    from . import child

    started = time.perf_counter()
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
    shell.run_cell("None", store_history=False, silent=True)  # type: ignore[no-untyped-call]
    exercise_runtime()
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
        self.runs: dict[int, str] = {}  # child pid -> run id
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
        if op == "fork":
            self.fork(request, fds[0])
            for fd in fds[1:]:
                os.close(fd)
        elif op == "kill":
            run = request.get("run")
            for pid, run_id in self.runs.items():
                if run_id == run:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
        elif op == "ping":
            self.send({"op": "pong"})

    def fork(self, request: dict[str, Any], fd: int) -> None:
        run_id = str(request["run"])
        pid = os.fork()
        if pid == 0:
            self._become_child(request, fd)  # never returns
        os.close(fd)
        self.runs[pid] = run_id
        self.send({"op": "forked", "run": run_id, "pid": pid})

    def _become_child(self, request: dict[str, Any], fd: int) -> None:
        code = EXIT_CHILD_CRASHED
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.control.close()
            os.close(self.wake_r)
            os.close(self._wake_w)
            os.setsid()  # its own process group: killed whole when the run ends
            set_child_subreaper()  # escaped grandchildren come back here while it runs
            os.chdir(request.get("cwd") or ".")
            os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
            for name in request.get("unset_env") or []:
                os.environ.pop(str(name), None)
            sys.argv = [""]
            from . import child

            child.serve(self.shell, socket.socket(fileno=fd), str(request["run"]))
            code = 0
        except BaseException:  # noqa: BLE001 - report and leave: the parent says it died
            with contextlib.suppress(Exception):
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
        tree = process_tree()
        stack = [p for p in tree.get(os.getpid(), []) if p not in self.runs]
        while stack:
            pid = stack.pop()
            stack.extend(tree.get(pid, []))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """The writer went away: stop every run and leave."""
        for pid in list(self.runs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.kill_strays()


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (empty where there is no /proc)."""
    tree: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return tree
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nb2task-zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--notebook", type=Path)
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    os.set_inheritable(args.control_fd, True)  # kept across a restart (execv)
    set_child_subreaper()
    notebook_dir = args.notebook.resolve().parent if args.notebook else None
    modules = notebook_imports(args.notebook) if args.notebook else []
    if notebook_dir is not None and str(notebook_dir) not in sys.path:
        sys.path.insert(0, "")  # as in a kernel: modules beside the notebook import
    warm = warm_up(modules, set(args.skip), notebook_dir)
    zygote = Zygote(control, warm.pop("shell"))
    zygote.send({"op": "ready", "pid": os.getpid(), **warm})
    zygote.serve()


if __name__ == "__main__":
    main()
