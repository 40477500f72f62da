"""The fork engine: each payload runs in a child forked from a warm parent.

The warm parent (``nb2task.engines.zygote``) is a separate, single-threaded process
that imported what notebooks need; forking it costs milliseconds, and each child is a
fresh process: nothing one payload does (globals, patched modules, environment,
``sys.modules``, working directory) reaches the next.

This module is the side that writes the notebook: ``ForkExecutor`` keeps the warm
parent; papermill's ``ForkEngine`` (``registry``) calls ``run_cells``, which sends
each code cell to a new child, puts the outputs it streams back into the notebook,
saves after every cell, and enforces the time limits by killing the child. User code
never runs in this process, so it cannot corrupt the notebook file.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import EMIT_DIR_ENV, Executor, Limits, describe_exit, emit_folder, protocol

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120  # the warm-up imports the notebook's own modules
FORK_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 10
PAPERMILL_NAME = "nb2task-fork"
_run_ids = itertools.count(1)

# What ipykernel reports as the notebook's language (the kernel engine gets it from
# the kernel; the child runs the same interpreter as this process).
LANGUAGE_INFO = {
    "name": "python",
    "version": sys.version.split()[0],
    "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
    "pygments_lexer": f"ipython{sys.version_info[0]}",
    "nbconvert_exporter": "python",
    "file_extension": ".py",
}


class ZygoteGone(Exception):
    """The warm parent exited; the run could not start or end cleanly."""


class ZygoteProcess:
    """The warm parent, seen from here: start it, fork runs from it, replace it if it dies."""

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
        if not self._ready.wait(timeout) or self._dead:
            raise ZygoteGone(f"the warm parent did not start: {self.death_notice()}")

    def start(self, run_id: str, sock: socket.socket, cwd: Path, env: dict[str, str]) -> int:
        """Fork a child that runs cells received on ``sock``; return its pid."""
        self.wait_ready()
        mailbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._mailboxes[run_id] = mailbox
        request = {"op": "fork", "run": run_id, "cwd": str(cwd), "env": env}
        try:
            socket.send_fds(self._control, [protocol._encode(request).encode()], [sock.fileno()])
        except OSError as err:
            raise ZygoteGone(f"the warm parent is gone: {err}") from None
        reply = self._next(run_id, FORK_TIMEOUT_S)
        if reply.get("op") != "forked":
            raise ZygoteGone(f"the warm parent could not fork: {self.death_notice()}")
        return int(reply["pid"])

    def _next(self, run_id: str, timeout: float) -> dict[str, Any]:
        with self._lock:
            mailbox = self._mailboxes[run_id]
        try:
            return mailbox.get(timeout=timeout)
        except queue.Empty:
            return {"op": "timeout"}

    def kill(self, run_id: str) -> None:
        """SIGKILL the run's process group (the warm parent reports the exit)."""
        with contextlib.suppress(OSError):
            self._control.send(protocol._encode({"op": "kill", "run": run_id}).encode())

    def wait_exit(self, run_id: str, timeout: float = EXIT_TIMEOUT_S) -> dict[str, Any]:
        """How the run's child ended (killed if it does not end in ``timeout``)."""
        try:
            message = self._next(run_id, timeout)
            if message.get("op") == "timeout":
                self.kill(run_id)
                message = self._next(run_id, timeout)
            return message
        finally:
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


def _timestamp() -> str:
    # nbclient's format for cell timing metadata.
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ChildRun:
    """One payload's child: execute cells, collect outputs, end it."""

    def __init__(self, zygote: ZygoteProcess, cwd: Path, env: dict[str, str]) -> None:
        self.zygote = zygote
        self.run_id = f"{os.getpid()}-{next(_run_ids)}"
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = zygote.start(self.run_id, theirs, cwd, env)
        finally:
            theirs.close()
        self.reader = protocol.Reader(self.sock)
        self.private_kb: int | None = None
        self.ended: dict[str, Any] | None = None

    def send(self, message: dict[str, Any]) -> None:
        protocol.send(self.sock, message)

    def read(self, deadline: float | None) -> dict[str, Any]:
        return self.reader.read(deadline)

    def end(self) -> None:
        """Let the child finish (its last output is flushed), then wait for its exit."""
        if self.ended is not None:
            return
        with contextlib.suppress(protocol.ChannelClosed):
            self.send({"op": "end"})
            while True:
                message = self.read(time.monotonic() + EXIT_TIMEOUT_S)
                if message.get("op") == "bye":
                    self.private_kb = message.get("private_kb")
                    break
        self.sock.close()
        self.ended = self.zygote.wait_exit(self.run_id)

    def kill(self) -> dict[str, Any]:
        """Kill the child now; return how it ended."""
        if self.ended is None:
            if self.zygote.alive:
                self.zygote.kill(self.run_id)
            else:  # no parent to ask: the group is ours to kill
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self.sock.close()
            self.ended = self.zygote.wait_exit(self.run_id)
        return self.ended


class CellRunner:
    """Sends the notebook's cells to the child one by one, as nbclient does to a kernel."""

    def __init__(
        self,
        nb_man: Any,
        run: ChildRun,
        log_output: bool,
        cell_timeout: float | None,
        timeout: float | None,
    ) -> None:
        self.nb_man = nb_man
        self.run = run
        self.log_output = log_output
        self.cell_timeout = cell_timeout
        self.timeout = timeout
        self.run_deadline = time.monotonic() + timeout if timeout else None
        self.display_ids: dict[str, list[dict[str, Any]]] = {}
        self.clear_before_next = False

    def execute(self) -> None:
        from ..errors import NotebookDiedError

        hello = self.run.read(time.monotonic() + FORK_TIMEOUT_S)
        if hello.get("op") != "hello":
            raise NotebookDiedError("the notebook's process did not start")
        cells = self.nb_man.nb.cells
        for index, cell in enumerate(cells):
            self.nb_man.cell_start(cell, index)
            try:
                if not self.execute_cell(cell, index):
                    self.nb_man.cell_exception(cell, cell_index=index)
                    break
            finally:
                self.nb_man.cell_complete(cell, cell_index=index)

    def execute_cell(self, cell: Any, index: int) -> bool:
        """Run one cell; False if it raised (and its errors are not allowed)."""
        from nbformat import from_dict

        from ..errors import NotebookDiedError, RunTimeoutError

        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code" or not cell.source.strip() or "skip-execution" in tags:
            return True
        cell.metadata["execution"] = {"iopub.status.busy": _timestamp()}
        timing = cell.metadata["execution"]  # (nbformat copies a dict on assignment)
        cell.outputs = []
        self.clear_before_next = False
        deadline, reason = self._deadline()
        try:
            self.run.send({"op": "execute", "code": cell.source})
            timing["iopub.execute_input"] = _timestamp()
            while True:
                message = self.run.read(deadline)
                op = message.get("op")
                if op == "reply":
                    break
                if op == "output":
                    self._append(cell, from_dict(message["output"]))  # type: ignore[no-untyped-call]
                elif op == "display":
                    self._display(cell, message)
                elif op == "clear_output":
                    self._clear(cell, bool(message.get("wait")))
        except protocol.ChannelTimeout:
            ended = self.run.kill()
            logger.error("%s: the notebook's process was killed (%s)", reason, how_it_ended(ended))
            raise RunTimeoutError(reason) from None
        except protocol.ChannelClosed as err:
            ended = self.run.kill()
            raise NotebookDiedError(
                f"the notebook's process died ({how_it_ended(ended)}) "
                f"in cell In [{cell.get('execution_count') or '?'}]"
                + (f": {err}" if "end of stream" not in str(err) else "")
            ) from None
        timing["shell.execute_reply"] = timing["iopub.status.idle"] = _timestamp()
        cell.execution_count = message.get("execution_count")
        if message.get("status") == "error":
            return "raises-exception" in tags
        return True

    def _deadline(self) -> tuple[float | None, str]:
        now = time.monotonic()
        cell = now + self.cell_timeout if self.cell_timeout else None
        if self.run_deadline is not None and (cell is None or self.run_deadline < cell):
            return self.run_deadline, f"the notebook ran longer than {self.timeout:g} s"
        if cell is not None:
            return cell, f"a notebook cell ran longer than {self.cell_timeout:g} s"
        return None, ""

    def _append(self, cell: Any, output: Any) -> None:
        if self.clear_before_next:
            self._clear(cell, wait=False)
        cell.outputs.append(output)
        if self.log_output:
            _log_output(output)
        self.nb_man.autosave_cell()

    def _display(self, cell: Any, message: dict[str, Any]) -> None:
        from nbformat import from_dict

        output = from_dict(message["output"])  # type: ignore[no-untyped-call]
        display_id = message.get("display_id")
        if message.get("update"):
            # update_display_data: change every output shown with that id, in place.
            for shown in self.display_ids.get(str(display_id), []):
                shown["data"], shown["metadata"] = output["data"], output["metadata"]
            return
        self._append(cell, output)
        if display_id:
            self.display_ids.setdefault(str(display_id), []).append(output)

    def _clear(self, cell: Any, wait: bool) -> None:
        if wait:
            self.clear_before_next = True
            return
        self.clear_before_next = False
        cleared = {id(o) for o in cell.outputs}
        for key, shown in list(self.display_ids.items()):
            self.display_ids[key] = [o for o in shown if id(o) not in cleared]
        cell.outputs = []


def run_cells(
    nb_man: Any,
    *,
    zygote: ZygoteProcess | None,
    cwd: Path,
    env: dict[str, str],
    log_output: bool,
    cell_timeout: float | None,
    timeout: float | None,
    stats: dict[str, Any],
) -> None:
    """Run the notebook of papermill's ``nb_man`` in a new child of ``zygote`` (one is
    started for this run alone when None)."""
    own = zygote is None
    zygote = zygote or ZygoteProcess()
    try:
        run = ChildRun(zygote, cwd, env)
        try:
            CellRunner(nb_man, run, log_output, cell_timeout, timeout).execute()
            run.end()
        finally:
            run.kill()
            stats.update(pid=run.pid, private_kb=run.private_kb)
        nb_man.nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    finally:
        if own:
            zygote.close()


def _log_output(output: Any) -> None:
    """Cell output to papermill's logger, as papermill's own engine logs it."""
    from papermill.log import logger as papermill_logger

    if output.output_type == "stream":
        log = papermill_logger.info if output.name == "stdout" else papermill_logger.warning
        log("".join(output.text))
    elif "data" in output and "text/plain" in output.data:
        papermill_logger.info("".join(output.data["text/plain"]))


class ForkExecutor(Executor):
    """Runs each payload in a child of a warm parent, started once and kept."""

    name = "fork"
    papermill_engine = PAPERMILL_NAME

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
                logger.warning(
                    "the warm parent died (%s): starting a new one", self._zygote.death_notice()
                )
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

    @contextlib.contextmanager
    def _session(
        self, cwd: Path, limits: Limits, stats: dict[str, Any]
    ) -> Iterator[tuple[dict[str, Any], Path]]:
        try:
            zygote = self._warm_parent()
        except ZygoteGone:
            zygote = self._warm_parent()  # one more try: no notebook code ran yet
        with emit_folder() as emit_dir:
            yield (
                {
                    "zygote": zygote,
                    "run_cwd": str(cwd),
                    "run_env": {EMIT_DIR_ENV: str(emit_dir)},
                    "run_timeout": limits.timeout,
                    "run_stats": stats,
                },
                emit_dir,
            )
