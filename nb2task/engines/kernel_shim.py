"""The run's kernel, in the child: what code written for ipykernel finds on
``get_ipython().kernel``, and what answers the requests of the process writing the
notebook.

A child is not an ipykernel kernel (no ZeroMQ, no threads, no event loop), but it speaks
the same messages over its run's channel, and offers what notebooks and libraries look for
on a kernel:

- ``kernel.session.send(kernel.iopub_socket, msg_type, content, parent=...)`` and
  ``session.msg(...)``, as jupyter_client's Session (nbclient's own test notebooks use it);
- ``kernel.get_parent()``: the request being run (ipywidgets' ``Output`` captures by it);
- comms: ``comm.create_comm`` and ``comm.get_comm_manager`` give comms that publish on the
  run's channel, so ipywidgets (and ``tqdm.notebook``, built on them) work as in a kernel,
  and their state reaches the executed notebook as nbclient records it;
- requests: ``execute_request`` (status busy, ``execute_input``, the outputs,
  ``execute_reply``, status idle, as ipykernel sends them), ``kernel_info_request``, and
  the comm messages nbclient sends back to an ``Output`` widget.
"""

from __future__ import annotations

import datetime
import itertools
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

from .messages import Jupyter

PROTOCOL_VERSION = "5.3"
# What ipykernel reports as its language (the child runs this very interpreter).
LANGUAGE_INFO = {
    "name": "python",
    "version": sys.version.split()[0],
    "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
    "pygments_lexer": f"ipython{sys.version_info[0]}",
    "nbconvert_exporter": "python",
    "file_extension": ".py",
}


class _Socket:
    """Stands for one of a kernel's sockets: code passes it back to ``session.send``."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __repr__(self) -> str:
        return f"<nb2task {self.channel} channel>"


IOPUB = _Socket("iopub")
SHELL = _Socket("shell")


def _now() -> str:
    # The format nbclient writes into a cell's execution timing.
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def extract_header(parent: Any) -> dict[str, Any]:
    """A message's header from a message, a header, or nothing (jupyter_client's rule)."""
    if not parent:
        return {}
    header = parent.get("header", parent) if isinstance(parent, dict) else {}
    return dict(header) if isinstance(header, dict) else {}


class Session:
    """``kernel.session``: builds Jupyter messages and sends them on the run's channel."""

    def __init__(self, send: Callable[[Jupyter], None]) -> None:
        self._send = send
        self.session = uuid.uuid4().hex
        self.username = "nb2task"
        self.pid = os.getpid()
        self._counter = itertools.count(1)

    def msg_header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": f"{self.session}_{os.getpid()}_{next(self._counter)}",
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session,
            "date": _now(),
            "version": PROTOCOL_VERSION,
        }

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        parent: Any = None,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        header = header or self.msg_header(msg_type)
        return {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": msg_type,
            "parent_header": extract_header(parent),
            "content": {} if content is None else content,
            "metadata": {} if metadata is None else metadata,
        }

    def send(
        self,
        stream: Any,
        msg_or_type: dict[str, Any] | str,
        content: dict[str, Any] | None = None,
        parent: Any = None,
        ident: Any = None,
        buffers: list[Any] | None = None,
        track: bool = False,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if isinstance(msg_or_type, dict):
            msg = msg_or_type
        else:
            msg = self.msg(msg_or_type, content, parent, header, metadata)
        channel = stream.channel if isinstance(stream, _Socket) else "iopub"
        self._send(
            Jupyter(
                channel,
                msg["header"],
                msg.get("parent_header") or {},
                msg.get("metadata") or {},
                msg.get("content") or {},
                [bytes(b) for b in buffers or []],
            )
        )
        return msg


class Kernel:
    """The run's kernel, as ``get_ipython().kernel``."""

    implementation = "ipython"
    protocol_version = PROTOCOL_VERSION
    language_info = LANGUAGE_INFO
    eventloop = None  # no GUI event loop to integrate with (ipykernel's shell looks)

    def __init__(self, shell: Any, send: Callable[[Jupyter], None]) -> None:
        self.shell = shell
        self.session = Session(send)
        self.iopub_socket = IOPUB
        self.shell_stream = SHELL
        self.comm_manager = comm_manager()
        self._parent: dict[str, Any] = {}

    # What code written for ipykernel asks of its kernel.

    def get_parent(self, channel: str = "shell") -> dict[str, Any]:
        """The request being handled (ipykernel 6+)."""
        return self._parent

    @property
    def _parent_header(self) -> dict[str, Any]:  # ipykernel < 6
        return self._parent

    def set_parent(self, parent: dict[str, Any]) -> None:
        self._parent = parent
        self.shell.set_parent(parent)

    # What the shell sends through its kernel (``nb2task.engines.shell.Publisher``).

    def publish(
        self, msg_type: str, content: dict[str, Any], buffers: list[Any] | None = None
    ) -> None:
        self.session.send(IOPUB, msg_type, content, parent=self._parent, buffers=buffers)

    def message(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return self.session.msg(msg_type, content, parent=self._parent)

    def send_message(self, msg: dict[str, Any]) -> None:
        self.session.send(IOPUB, msg)

    # Requests from the process writing the notebook.

    def handle(self, request: Jupyter) -> None:
        """Serve one shell request, as ipykernel's dispatch does."""
        message = request.as_client_message()
        handler = {
            "execute_request": self.execute,
            "kernel_info_request": self.kernel_info,
            "comm_open": self._comm("comm_open"),
            "comm_msg": self._comm("comm_msg"),
            "comm_close": self._comm("comm_close"),
        }.get(request.msg_type)
        if handler is None:
            return
        # As in ipykernel, the parent stays until the next request: output a thread writes
        # later still goes out with the request it belongs to.
        self.set_parent(message)
        handler(message)

    def execute(self, request: dict[str, Any]) -> None:
        """Run a cell: status busy, the input, its outputs, the reply, status idle."""
        from .shell import flush_streams

        self.publish("status", {"execution_state": "busy"})
        content = request["content"]
        code = str(content.get("code", ""))
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent))
        shell = self.shell
        count = shell.execution_count
        if not silent:
            self.publish("execute_input", {"code": code, "execution_count": count})
        shell._last_traceback = None
        result = shell.run_cell(code, store_history=store_history, silent=silent)
        flush_streams()
        payload = shell.payload_manager.read_payload()  # set_next_input, pages, exit
        shell.payload_manager.clear_payload()
        reply: dict[str, Any] = {
            "status": "ok",
            "execution_count": count,
            "user_expressions": {},
            "payload": payload,
        }
        if not result.success or shell._last_traceback_during_displayhook:
            error = result.error_before_exec or result.error_in_exec
            reply = {
                "status": "error",
                "execution_count": count,
                "ename": type(error).__name__ if error else "UnknownError",
                "evalue": str(error) if error else "",
                "traceback": shell._last_traceback or [],
            }
        self.session.send(SHELL, "execute_reply", reply, parent=request, metadata={
            "status": reply["status"], "dependencies_met": True, "engine": self.session.session,
        })  # fmt: skip
        self.publish("status", {"execution_state": "idle"})

    def kernel_info(self, request: dict[str, Any]) -> None:
        import IPython

        content = {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "implementation": self.implementation,
            "implementation_version": IPython.__version__,
            "language_info": self.language_info,
            "banner": "nb2task fork engine (IPython)",
            "help_links": [],
        }
        self.session.send(SHELL, "kernel_info_reply", content, parent=request)

    def _comm(self, kind: str) -> Callable[[dict[str, Any]], None]:
        def handle(message: dict[str, Any]) -> None:
            getattr(self.comm_manager, kind)(None, None, message)

        return handle


# --- comms -----------------------------------------------------------------------------

_kernel: Kernel | None = None
_manager: Any = None


def current() -> Kernel | None:
    """This process's run kernel (None in the warm parent)."""
    return _kernel


def set_current(kernel: Kernel | None) -> None:
    global _kernel
    _kernel = kernel


def comm_manager() -> Any:
    """The process's comm manager (made once, in the warm parent: targets that libraries
    register at import, there, are then every child's)."""
    global _manager
    if _manager is None:
        from comm.base_comm import CommManager

        _manager = CommManager()
    return _manager


def install_comms() -> None:
    """Make the ``comm`` package (ipywidgets' way to a kernel) create comms that publish
    on the run's channel, as ipykernel makes it do. Before any library imports ``comm``'s
    functions into its own namespace."""
    import comm
    from comm.base_comm import BaseComm

    class RunComm(BaseComm):
        """A comm whose messages go out with the request being run, as ipykernel's."""

        def publish_msg(
            self,
            msg_type: str,
            data: Any = None,
            metadata: Any = None,
            buffers: Any = None,
            **keys: Any,
        ) -> None:
            kernel = current()
            if kernel is None:  # the warm parent: no run to show it to
                return
            content = {"data": {} if data is None else data, "comm_id": self.comm_id, **keys}
            kernel.session.send(
                IOPUB,
                msg_type,
                content,
                metadata={} if metadata is None else metadata,
                parent=kernel.get_parent(),
                ident=self.topic,
                buffers=buffers,
            )

    comm.create_comm = RunComm
    comm.get_comm_manager = comm_manager
