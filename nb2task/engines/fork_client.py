"""The fork engine's cell loop: a child driven as nbclient drives a kernel.

``ForkClient.execute`` runs papermill's managed notebook in a child
(``nb2task.engines.child``): one ``execute_request`` per code cell, with nbclient's rules
for which cells run (``skip-execution``) and which may fail (``raises-exception``). Every
message the child sends back is applied to the notebook by papermill's own nbclient
client (``process_message``: streams, displays and their updates by ``display_id``,
``clear_output``, errors, widget state and ``Output`` widgets, timing metadata, autosave,
``--log-output``), so the executed notebook is what nbclient and ipykernel would write.

A cell that runs past its time limit, a child that dies and a run that is stopped end
with nbclient's error classes (nb2task's subclass them): the child is killed first.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from . import kernel_shim, messages

START_TIMEOUT_S = 30
END_TIMEOUT_S = 10


class Child:
    """A run's child, seen from the process writing the notebook: its channel, and its
    end through the warm parent that forked it."""

    def __init__(self, warm_parent: Any, run_id: str, sock: Any) -> None:
        self.warm_parent = warm_parent
        self.run_id = run_id
        self.sock = sock
        self.reader = messages.Reader(sock)
        self.pid: int | None = None
        self.parent_threads: int | None = None
        self.private_kb: int | None = None
        self.ended: str | None = None  # how it ended, in words, once it has

    def send(self, message: messages.Message) -> None:
        messages.send(self.sock, message)

    def read(self, deadline: float | None) -> messages.Message:
        return self.reader.read(deadline)

    def start(self, cwd: str, env: dict[str, str]) -> None:
        """Give the child its run (``cwd``, what ``env`` adds) and wait for its hello
        (already here, for a spare)."""
        try:
            self.send(messages.Setup(cwd, env))
            hello = self.read(time.monotonic() + START_TIMEOUT_S)
        except (messages.ChannelClosed, messages.ChannelTimeout) as err:
            self.kill()
            raise ChildDidNotStart(self.warm_parent.why_not_started(self.run_id, err)) from None
        if not isinstance(hello, messages.Hello):
            self.kill()
            raise ChildDidNotStart(f"it said {hello.kind!r} first")
        self.pid, self.parent_threads = hello.pid, hello.parent_threads

    def end(self) -> None:
        """Let the child flush its last output, then end it and all it started: its
        warm parent does that, while this process goes on (what it said is all in)."""
        if self.ended is not None:
            return
        try:
            self.send(messages.End())
            deadline = time.monotonic() + END_TIMEOUT_S
            while not isinstance(message := self.read(deadline), messages.Bye):
                pass
            self.private_kb = message.private_kb
        except (messages.ChannelClosed, messages.ChannelTimeout):
            self.kill()  # it did not say goodbye: how it ended matters
            return
        self.warm_parent.kill(self.run_id)
        self.warm_parent.forget(self.run_id)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.ended = "ended"

    def kill(self) -> str:
        """Kill the child (and everything it started) now; how it ended, in words."""
        if self.ended is None:
            self.warm_parent.kill(self.run_id)
            with contextlib.suppress(OSError):
                self.sock.close()
            self.ended = self.warm_parent.wait_exit(self.run_id)
        return self.ended


class ChildDidNotStart(Exception):
    """The warm parent could not give the run a child."""


class ForkClient:
    """Runs papermill's managed notebook (``nb_man``) in ``child``."""

    def __init__(
        self,
        nb_man: Any,
        child: Child,
        *,
        log_output: bool,
        cell_timeout: float | None,
        timeout: float | None,
        stopping: Callable[[], BaseException | None] = lambda: None,
    ) -> None:
        from papermill.log import logger

        from .papermill_engines import BoundedOutputClient

        self.nb_man = nb_man
        self.child = child
        self.cell_timeout = cell_timeout
        self.timeout = timeout
        self.stopping = stopping  # why the run is being stopped, if it is
        self.run_deadline = time.monotonic() + timeout if timeout else None
        # papermill's nbclient client, used for what it does with a kernel's messages
        # (with the record's limits on what it keeps).
        self.nbclient = BoundedOutputClient(nb_man, log=logger, log_output=log_output)
        self.nbclient.kc = _BackToTheChild(self)
        self.to_child: list[messages.Jupyter] = []  # sent between cells, as a kernel reads them
        self.running = ""  # the execute request's msg_id, and its cell's index
        self.running_index = 0
        self.session = kernel_shim.Session(self.to_child.append)

    def execute(self) -> None:
        """Run every cell; papermill's manager saves as they end."""
        if self.child.pid is None:
            self.child.start(os.getcwd(), {})
        for index, cell in enumerate(self.nb_man.nb.cells):
            self.nb_man.cell_start(cell, index)
            try:
                if not self.execute_cell(cell, index):
                    self.nb_man.cell_exception(cell, cell_index=index)
                    break
            except BaseException:
                self.nb_man.cell_exception(cell, cell_index=index)
                raise
            finally:
                self.nb_man.cell_complete(cell, cell_index=index)
        self.child.end()
        self.nbclient.set_widgets_metadata()
        self.nb_man.nb.metadata["language_info"] = dict(kernel_shim.LANGUAGE_INFO)

    def execute_cell(self, cell: Any, index: int) -> bool:
        """Run one code cell (as nbclient's ``execute_cell``); False if it raised and its
        errors are not allowed."""
        from nbclient.client import timestamp
        from nbclient.exceptions import CellExecutionComplete

        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code" or not cell.source.strip():
            return True
        if self.nbclient.skip_cells_with_tag in tags:
            return True
        cell["metadata"]["execution"] = {}
        allows_errors = "raises-exception" in tags
        content = {
            "code": cell.source, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": not allows_errors,
        }  # fmt: skip
        msg = self.session.msg("execute_request", content)
        request = messages.Jupyter("shell", msg["header"], content=content)
        self._send_to_child(request)
        msg_id = self.running = request.header["msg_id"]
        self.running_index = index
        cell.outputs = []
        self.nbclient.clear_before_next_output = False
        reply: messages.Jupyter | None = None
        idle = False
        while reply is None or not idle:
            message = self._next(cell)
            if not isinstance(message, messages.Jupyter):
                continue
            if message.parent_header.get("msg_id") != msg_id:
                continue  # as nbclient: what answers another request is not this cell's
            if message.channel == "shell":
                if message.msg_type == "execute_reply":
                    reply = message
                    cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(
                        message.as_client_message()
                    )
                continue
            try:
                self.nbclient.process_message(message.as_client_message(), cell, index)
            except CellExecutionComplete:
                idle = True
        for pending in self.to_child:  # what nbclient's Output widget sent back
            self._send_to_child(pending)
        self.to_child.clear()
        return reply.content.get("status") != "error" or allows_errors

    def _next(self, cell: Any) -> messages.Message:
        """The child's next message; the run's end if time is up, it died or is stopped."""
        from ..errors import NotebookDiedError, RunTimeoutError

        deadline, reason = self._deadline()
        try:
            return self.child.read(deadline)
        except messages.ChannelTimeout:
            self._interrupt(cell)
            raise RunTimeoutError(reason) from None
        except messages.ChannelClosed as err:
            ended = self.child.kill()
            stop = self.stopping()
            if stop is not None:
                raise stop from None
            detail = f": {err}" if "end of stream" not in str(err) else ""
            raise NotebookDiedError(
                f"the notebook's process died ({ended}) in cell In [{_count(cell)}]{detail}"
            ) from None
        except BaseException:  # interrupted here (Ctrl-C, SIGTERM): the run ends with us
            self.child.kill()
            raise

    def _interrupt(self, cell: Any) -> None:
        """Interrupt the running cell, as nbclient has a kernel interrupted when time is
        up: its KeyboardInterrupt and traceback (where the cell was) reach the notebook;
        then the child is killed, answered or not."""
        from nbclient.exceptions import CellExecutionComplete

        self.child.warm_parent.interrupt(self.child.run_id)
        from .papermill_engines import INTERRUPT_GRACE_S

        deadline = time.monotonic() + INTERRUPT_GRACE_S
        with contextlib.suppress(messages.ChannelClosed, messages.ChannelTimeout):
            while True:
                message = self.child.read(deadline)
                if not isinstance(message, messages.Jupyter) or message.channel != "iopub":
                    continue
                if message.parent_header.get("msg_id") != self.running:
                    continue
                try:
                    self.nbclient.process_message(
                        message.as_client_message(), cell, self.running_index
                    )
                except CellExecutionComplete:
                    break
        self.child.kill()

    def _send_to_child(self, message: messages.Jupyter) -> None:
        with contextlib.suppress(messages.ChannelClosed):  # a dead child is read as such
            self.child.send(message)

    def _deadline(self) -> tuple[float | None, str]:
        now = time.monotonic()
        cell = now + self.cell_timeout if self.cell_timeout else None
        if self.run_deadline is not None and (cell is None or self.run_deadline < cell):
            return self.run_deadline, f"the notebook ran longer than {self.timeout:g} s"
        if cell is not None:
            return cell, f"a notebook cell ran longer than {self.cell_timeout:g} s"
        return None, ""


def _count(cell: Any) -> str:
    """The number the running cell shows (its execution count), or '?'."""
    return str(cell.get("execution_count") or "?")


class _BackToTheChild:
    """The kernel client nbclient's ``Output`` widget mimic sends its state through: the
    messages reach the child after the cell's reply (a kernel reads them then too)."""

    def __init__(self, client: ForkClient) -> None:
        self.session = _SessionView(client)
        self.shell_channel = _ShellChannel(client)


class _SessionView:
    def __init__(self, client: ForkClient) -> None:
        self._client = client

    def msg(self, msg_type: str, content: Any = None, parent: Any = None, **kw: Any) -> Any:
        session = self._client.session
        return session.msg(msg_type, content, parent, kw.get("header"), kw.get("metadata"))


class _ShellChannel:
    def __init__(self, client: ForkClient) -> None:
        self._client = client

    def send(self, msg: dict[str, Any]) -> None:
        self._client.session.send(kernel_shim.SHELL, msg)
