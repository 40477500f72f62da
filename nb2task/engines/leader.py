"""One payload's run, in a process of its own forked from the warm parent.

The run leader receives the run from the task's process, forks the child that runs
the cells (``nb2task.engines.child``), and drives papermill with the fork engine:
papermill injects the parameters, saves the notebook after every cell and adds the
error banner. It reports back over its socket: log records as they come, then the
outcome and the emitted items. It is the child's parent, so it enforces the time
limits by killing the child; it is a subreaper, so it kills whatever the child left
running before it reports. papermill and nbformat were imported once, in the warm
parent: the task's process never imports them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from . import processes, protocol
from .cells import LocalChild

# Errors the task's process re-raises by name (anything else is a failure of the run).
REPORTED_ERRORS = ("RunTimeoutError", "NotebookDiedError", "InvalidItemError", "Nb2TaskError")


class _ToTask(logging.Handler):
    """Sends this process's log records to the task's process, which logs them."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = {"op": "log", "name": record.name, "level": record.levelno}
            protocol.send(self.sock, {**message, "message": record.getMessage()})


def lead(shell: Any, sock: socket.socket) -> None:
    """Serve the one run that arrives on ``sock``."""
    processes.set_child_subreaper()
    request = protocol.Reader(sock).read()
    received = time.monotonic()
    root = logging.getLogger()
    root.handlers = [_ToTask(sock)]
    root.setLevel(int(request.get("log_level", logging.INFO)))
    child = LocalChild.fork(shell, str(request["cwd"]), dict(request.get("env") or {}))
    try:
        outcome = _run(request, child)
    finally:
        if child.ended is None:
            child._kill()
        processes.kill_below(os.getpid())  # the child and everything the run started
    outcome.setdefault("stats", {})["received"] = received
    protocol.send(sock, {"op": "result", **outcome})
    # After the result (the task need not wait for the teardown): reap, and kill what came
    # back to this process (a subreaper) once its parent died.
    child.reap()
    processes.kill_below(os.getpid(), reap=True)


def _run(request: dict[str, Any], child: LocalChild) -> dict[str, Any]:
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ..errors import Nb2TaskError
    from . import harvest, papermill_registry

    registry = papermill_registry()
    registry.use_schema_translator()
    stats: dict[str, Any] = {}
    try:
        executed = papermill.execute_notebook(
            nbformat.from_dict(request["notebook"]),  # type: ignore[no-untyped-call]
            str(request["output_path"]),
            parameters=request["parameters"],
            engine_name=registry.FORK_ENGINE,
            kernel_name=request.get("kernel_name") or "python3",
            language=request.get("language") or "python",
            progress_bar=False,
            log_output=bool(request.get("log_output")),
            execution_timeout=request.get("cell_timeout"),
            notebook_path=request.get("notebook_path") or "",
            record_metadata=request.get("record_metadata"),
            child=child,
            run_timeout=request.get("timeout"),
            run_stats=stats,
        )
        emit_dir = request.get("emit_dir")
        found = harvest(executed, Path(emit_dir) if emit_dir else None)
    except PapermillExecutionError as err:
        return {
            "status": "cell-error",
            **{k: getattr(err, k) for k in ("ename", "evalue", "cell_index", "exec_count")},
            "source": err.source,
        }
    except Nb2TaskError as err:
        kind = type(err).__name__
        return {"status": "error", "kind": kind if kind in REPORTED_ERRORS else "Nb2TaskError",
                "message": str(err)}  # fmt: skip
    except Exception as err:  # noqa: BLE001 - reported, in one line, by the task's process
        return {"status": "error", "kind": "Nb2TaskError",
                "message": f"the notebook's run failed: {type(err).__name__}: {err}"}  # fmt: skip
    from .child import STATS_ENV, private_memory_kb

    if os.environ.get(STATS_ENV):
        stats["leader_private_kb"] = private_memory_kb()
    return {"status": "ok", **found, "stats": stats}
