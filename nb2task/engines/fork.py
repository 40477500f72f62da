"""The fork engine, seen from the task: each payload runs in processes forked from a
warm parent, started once and kept.

Per payload, the warm parent (``zygote``) forks a run leader (``leader``), which forks
the child that runs the cells (``child``). The leader drives papermill and writes the
executed notebook; user code runs only in the child, so it can neither corrupt the
notebook nor leak into the next payload (globals, patched modules, environment,
``sys.modules``, working directory). This process only sends the run and relays what
comes back: log records, then the outcome and the emitted items. It never imports
IPython, papermill or nbformat, which keeps a cold start close to stactask's own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from . import EMIT_DIR_ENV, Execution, Executor, Limits, emit_folder, protocol
from .zygote import ZygoteGone, ZygoteProcess

logger = logging.getLogger(__name__)

# How long past its own time limits a run may take before its leader is presumed stuck.
LEADER_GRACE_S = 60


class ForkExecutor(Executor):
    """Runs each payload in processes forked from a warm parent."""

    name = "fork"
    papermill_engine = "nb2task-fork"

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = "python3",
        language: str = "python",
    ) -> None:
        super().__init__(notebook_path, kernel_name, language)
        self._zygote: ZygoteProcess | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        self._warm_parent(wait=False)

    def _warm_parent(self, wait: bool = True) -> ZygoteProcess:
        """The warm parent; a new one if there is none yet or the last one died."""
        with self._lock:
            if self._zygote is not None and not self._zygote.alive:
                notice = self._zygote.death_notice()
                logger.warning("the warm parent died (%s): starting a new one", notice)
                self._zygote.close()
                self._zygote = None
            if self._zygote is None:
                self._zygote = ZygoteProcess(self.notebook_path)
            zygote = self._zygote
        if wait:
            zygote.wait_ready()
        return zygote

    def close(self) -> None:
        with self._lock:
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()

    @property
    def warm_info(self) -> dict[str, Any]:
        """What the warm parent reported when ready (imports, threads, seconds)."""
        return dict(self._zygote.info) if self._zygote is not None else {}

    def execute(
        self,
        node: Any,
        parameters: dict[str, Any],
        *,
        output_path: Path,
        cwd: Path,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
        log_output: bool = True,
        record_metadata: dict[str, Any] | None = None,
    ) -> Execution:
        started = time.perf_counter()
        with emit_folder() as emit_dir:
            request = {
                "notebook": node,
                "parameters": parameters,
                "output_path": str(output_path),
                "notebook_path": str(self.notebook_path or ""),
                "cwd": str(cwd),
                "env": {EMIT_DIR_ENV: str(emit_dir)},
                "emit_dir": str(emit_dir),
                "cell_timeout": limits.cell_timeout,
                "timeout": limits.timeout,
                "log_output": log_output,
                "log_level": logging.getLogger().getEffectiveLevel(),
                "kernel_name": self.kernel_name,
                "language": self.language,
                "record_metadata": record_metadata,
            }
            outcome = self._run(request, limits)
            _timeline(outcome.get("stats"), request.get("sent"))
        execution = _result(outcome, time.perf_counter() - started)
        self.history.append(execution.stats)
        return execution

    def _run(self, request: dict[str, Any], limits: Limits) -> dict[str, Any]:
        """Have a run leader forked, send it the run, relay its logs; its outcome."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                zygote = self._warm_parent()
                run_id, _ = zygote.start("run", theirs, wait=False)
            except ZygoteGone:
                zygote = self._warm_parent()  # one more try: no notebook code ran yet
                run_id, _ = zygote.start("run", theirs, wait=False)
        finally:
            theirs.close()
        finished = False
        try:
            request["sent"] = time.monotonic()
            protocol.send(ours, request)
            reader = protocol.Reader(ours)
            deadline = (
                time.monotonic() + limits.timeout + LEADER_GRACE_S if limits.timeout else None
            )
            while True:
                message = reader.read(deadline)
                if message.get("op") == "log":
                    logging.getLogger(str(message["name"])).log(
                        int(message["level"]), "%s", message["message"]
                    )
                elif message.get("op") == "result":
                    finished = True
                    zygote.forget(run_id)  # it exits by itself, its child already gone
                    return message
        except (protocol.ChannelClosed, protocol.ChannelTimeout):
            zygote.kill(run_id)
            ended = zygote.wait_exit(run_id)
            finished = True
            return {
                "status": "error",
                "kind": "NotebookDiedError",
                "message": f"the notebook's run process died ({ended})",
            }
        finally:
            if not finished:  # interrupted (SIGTERM): stop the run with us
                with contextlib.suppress(Exception):
                    zygote.kill(run_id)
                    zygote.wait_exit(run_id)
            ours.close()


def _timeline(stats: dict[str, Any] | None, sent: float | None) -> None:
    """Where a run's time went, in ms (all processes share the monotonic clock): the
    leader's fork, the child's fork, and the rest (cells, papermill, harvest)."""
    if not stats or sent is None:
        return
    received, ready = stats.pop("received", None), stats.pop("child_ready", None)
    if received is not None:
        stats["fork_leader_ms"] = round((received - sent) * 1000, 2)
        if ready is not None:
            stats["fork_child_ms"] = round((ready - received) * 1000, 2)


def _result(outcome: dict[str, Any], seconds: float) -> Execution:
    """The leader's outcome as an Execution, or as the error it reports."""
    from .. import errors

    status = outcome.get("status")
    if status == "ok":
        stats = {"engine": "fork", "seconds": round(seconds, 4), **(outcome.get("stats") or {})}
        stopped = outcome.get("stopped_at")
        return Execution(
            None,
            list(outcome.get("items") or []),
            stats,
            int(outcome.get("emit_calls") or 0),
            int(stopped) if stopped is not None else None,
        )
    if status == "cell-error":
        raise errors.NotebookCellError(
            str(outcome["ename"]),
            str(outcome["evalue"]),
            int(outcome["cell_index"]),
            outcome.get("exec_count"),
            str(outcome.get("source") or ""),
        )
    error_class = getattr(errors, str(outcome.get("kind")), errors.Nb2TaskError)
    if not (isinstance(error_class, type) and issubclass(error_class, errors.Nb2TaskError)):
        error_class = errors.Nb2TaskError
    raise error_class(str(outcome.get("message") or "the notebook's run failed"))
