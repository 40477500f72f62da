"""Driving a forked child from the process that writes the notebook.

``run_cells`` is the fork engine's cell loop, called by papermill's ``ForkEngine``: it
sends each code cell to the child (``nb2task.engines.child``), puts the outputs it
streams back into the notebook as nbclient would, saves after every cell (papermill's
manager), and enforces the time limits by killing the child. A ``Child`` is the
child seen from here: forked by this very process (``LocalChild``, in a run leader) or
by a warm parent on request (``RemoteChild``, when papermill runs the engine alone).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
import time
from typing import Any

from . import describe_exit, protocol

START_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 10

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


class Child:
    """A child running cells, seen from the process that drives it."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.reader = protocol.Reader(sock)
        self.private_kb: int | None = None
        self.ended: str | None = None  # how it ended, in words, once it has

    def send(self, message: dict[str, Any]) -> None:
        protocol.send(self.sock, message)

    def read(self, deadline: float | None) -> dict[str, Any]:
        return self.reader.read(deadline)

    def end(self) -> None:
        """Let the child flush its last output, then end it (and all it started)."""
        if self.ended is not None:
            return
        with contextlib.suppress(protocol.ChannelClosed, protocol.ChannelTimeout):
            self.send({"op": "end"})
            while True:
                message = self.read(time.monotonic() + EXIT_TIMEOUT_S)
                if message.get("op") == "bye":
                    self.private_kb = message.get("private_kb")
                    break
        # Everything is said: kill it (and all it started) rather than wait for its exit.
        self._kill()
        self.sock.close()
        self.ended = "ended"

    def reap(self) -> None:
        """Collect an ended child (it was killed: this takes a few milliseconds)."""
        if self.ended == "ended":
            self.ended = self._wait(EXIT_TIMEOUT_S)

    def kill(self) -> str:
        """Kill the child (its whole process group) now; how it ended, in words."""
        if self.ended is None:
            self._kill()
            self.sock.close()
            self.ended = self._wait(EXIT_TIMEOUT_S)
        return self.ended

    def _kill(self) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float) -> str:
        raise NotImplementedError


class LocalChild(Child):
    """A child this process forked (it must be single-threaded when it forks)."""

    @classmethod
    def fork(cls, shell: Any, cwd: str, env: dict[str, str]) -> LocalChild:
        from . import child

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            ours.close()
            child.become_child(shell, theirs, cwd, env)
        theirs.close()
        return cls(ours, pid)

    def _kill(self) -> None:
        # Its own process group: anything it started goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _wait(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                # The group id stays reserved while members live: safe to kill now.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                return describe_exit(os.waitstatus_to_exitcode(status))
            if time.monotonic() > deadline:
                self._kill()
                deadline = time.monotonic() + timeout
            time.sleep(0.001)


class RemoteChild(Child):
    """A child a warm parent forked for us (papermill running the engine on its own)."""

    def __init__(self, zygote: Any, sock: socket.socket, pid: int, run_id: str) -> None:
        super().__init__(sock, pid)
        self.zygote = zygote
        self.run_id = run_id

    def _kill(self) -> None:
        self.zygote.kill(self.run_id)

    def _wait(self, timeout: float) -> str:
        return str(self.zygote.wait_exit(self.run_id, timeout))


def _timestamp() -> str:
    # nbclient's format for cell timing metadata.
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CellRunner:
    """Sends the notebook's cells to the child one by one, as nbclient does to a kernel."""

    def __init__(
        self,
        nb_man: Any,
        run: Child,
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
        self.next_count = 1  # the number the running cell gets (a fresh shell counts from 1)

    def execute(self) -> None:
        from ..errors import NotebookDiedError

        hello = self.run.read(time.monotonic() + START_TIMEOUT_S)
        if hello.get("op") != "hello":
            raise NotebookDiedError("the notebook's process did not start")
        self.child_ready = time.monotonic()
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
            self.run.kill()
            raise RunTimeoutError(reason) from None
        except protocol.ChannelClosed as err:
            ended = self.run.kill()
            raise NotebookDiedError(
                f"the notebook's process died ({ended}) "
                f"in cell In [{self.next_count}]"
                + (f": {err}" if "end of stream" not in str(err) else "")
            ) from None
        timing["shell.execute_reply"] = timing["iopub.status.idle"] = _timestamp()
        cell.execution_count = message.get("execution_count")
        self.next_count = int(cell.execution_count or self.next_count) + 1
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
    child: Child,
    *,
    log_output: bool,
    cell_timeout: float | None,
    timeout: float | None,
    stats: dict[str, Any],
) -> None:
    """Run the notebook of papermill's ``nb_man`` in ``child``, then end the child."""
    runner = CellRunner(nb_man, child, log_output, cell_timeout, timeout)
    try:
        runner.execute()
        child.end()
    finally:
        if child.ended is None:
            child.kill()
        stats.update(pid=child.pid, private_kb=child.private_kb)
        stats["child_ready"] = getattr(runner, "child_ready", None)
    nb_man.nb.metadata["language_info"] = dict(LANGUAGE_INFO)


def _log_output(output: Any) -> None:
    """Cell output to papermill's logger, as papermill's own engine logs it."""
    from papermill.log import logger as papermill_logger

    if output.output_type == "stream":
        log = papermill_logger.info if output.name == "stdout" else papermill_logger.warning
        log("".join(output.text))
    elif "data" in output and "text/plain" in output.data:
        papermill_logger.info("".join(output.data["text/plain"]))
