"""What the fork engine's processes say to each other: typed messages, one framing.

Every message is a small dataclass with a ``kind``; on the wire it is JSON, length-prefixed
(``frame``). Two channels carry them:

- the control channel, between the task's process and the warm parent: ``Ready``,
  ``Fork`` (with the child's socket passed along), ``Forked``, ``Refused``,
  ``Interrupt``, ``Kill``, ``Exited``; one frame per packet (a ``SOCK_SEQPACKET``
  socket, which can pass sockets);
- a run's channel, between the task's process and the child running the cells: the child's
  ``Hello`` and ``Bye``, the driver's ``Setup`` and ``End``, and Jupyter protocol
  messages (``Jupyter``: execute requests, outputs, replies), as a kernel exchanges them;
  a byte stream.

Only JSON crosses process boundaries: nothing a notebook produced is ever unpickled, and a
corrupt message is an error, not code execution.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

_HEADER = struct.Struct("!I")
# A single output (an image, a large print) can be big; anything past this is a broken peer.
MAX_FRAME_BYTES = 512 * 1024 * 1024
MAX_CONTROL_BYTES = 1 << 16


class ChannelClosed(Exception):
    """The other end went away (its process exited or was killed), or spoke nonsense."""


class ChannelTimeout(Exception):
    """No message arrived before the deadline."""


def _json_default(value: Any) -> Any:
    # As jupyter_client packs kernel messages: bytes as base64, dates as ISO text.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# Bound now: a notebook that monkeypatches json.dumps later cannot change how we encode.
_encode = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode
_decode = json.JSONDecoder().decode


@dataclass
class Message:
    """A message of the fork engine; subclasses name their ``kind``."""

    kind: ClassVar[str] = ""
    _kinds: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Message._kinds[cls.kind] = cls

    def to_wire(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every value (an image, a widget's buffers).
        return {
            "kind": self.kind,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }

    @staticmethod
    def from_wire(document: Any) -> Message:
        """The message ``document`` encodes; ChannelClosed if it is not one of ours."""
        if not isinstance(document, dict) or document.get("kind") not in Message._kinds:
            raise ChannelClosed(f"not a message of the fork engine: {str(document)[:200]}")
        cls = Message._kinds[document["kind"]]
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in document.items() if k in names})
        except TypeError as err:
            raise ChannelClosed(f"a malformed {cls.kind!r} message: {err}") from None


# --- the control channel ------------------------------------------------------------


@dataclass
class Ready(Message):
    """The warm parent is warm: what it imported, what it left to each run, and why."""

    kind: ClassVar[str] = "ready"
    pid: int
    imported: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # "module: why" (each run imports it)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    threads: int = 1


@dataclass
class Fork(Message):
    """Fork a child for run ``run``, serving the socket passed with this message."""

    kind: ClassVar[str] = "fork"
    run: str


@dataclass
class Forked(Message):
    kind: ClassVar[str] = "forked"
    run: str
    pid: int


@dataclass
class Refused(Message):
    """The warm parent could not fork safely (it is about to restart itself)."""

    kind: ClassVar[str] = "refused"
    run: str
    reason: str


@dataclass
class Kill(Message):
    """Kill run ``run``: the child and everything it started."""

    kind: ClassVar[str] = "kill"
    run: str


@dataclass
class Interrupt(Message):
    """Interrupt run ``run``'s child (SIGINT: a KeyboardInterrupt in its cell)."""

    kind: ClassVar[str] = "interrupt"
    run: str


@dataclass
class Exited(Message):
    """Run ``run``'s child ended (``code``, or the ``signal`` that killed it)."""

    kind: ClassVar[str] = "exited"
    run: str
    pid: int
    code: int | None = None
    signal: int | None = None


# --- a run's channel ----------------------------------------------------------------


@dataclass
class Hello(Message):
    """The child is ready for cells; its warm parent had ``parent_threads`` threads when
    it forked it (always 1: the warm parent refuses to fork otherwise)."""

    kind: ClassVar[str] = "hello"
    pid: int
    parent_threads: int = 1


@dataclass
class Setup(Message):
    """The run the child is for: its working directory and what its environment adds
    (a child may be forked ahead of its run, as a spare)."""

    kind: ClassVar[str] = "setup"
    cwd: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class End(Message):
    """No more cells: flush and say goodbye."""

    kind: ClassVar[str] = "end"


@dataclass
class Bye(Message):
    """The child's last word, with its private memory when asked (``NB2TASK_MEMORY_STATS``)."""

    kind: ClassVar[str] = "bye"
    private_kb: int | None = None


@dataclass
class Jupyter(Message):
    """A Jupyter protocol message, as a kernel and its client exchange it (``channel``:
    shell or iopub). ``buffers`` are base64 on the wire."""

    kind: ClassVar[str] = "jupyter"
    channel: str
    header: dict[str, Any]
    parent_header: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)
    buffers: list[Any] = field(default_factory=list)

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    def as_client_message(self) -> dict[str, Any]:
        """The message as jupyter_client hands it to nbclient (buffers as bytes)."""
        return {
            "header": self.header,
            "msg_id": self.header.get("msg_id"),
            "msg_type": self.msg_type,
            "parent_header": self.parent_header,
            "metadata": self.metadata,
            "content": self.content,
            "buffers": [
                base64.b64decode(b) if isinstance(b, str) else bytes(b) for b in self.buffers
            ],
        }


# --- framing ------------------------------------------------------------------------


def frame(message: Message) -> bytes:
    """One framed message: its length, then its JSON."""
    body = _encode(message.to_wire()).encode("utf-8", "surrogateescape")
    return _HEADER.pack(len(body)) + body


def unframe(data: bytes) -> Message:
    """The message of one whole frame (a control packet)."""
    if len(data) < _HEADER.size:
        raise ChannelClosed("a truncated frame")
    (length,) = _HEADER.unpack_from(data)
    if length != len(data) - _HEADER.size:
        raise ChannelClosed("a frame whose length does not match")
    return _parse(data[_HEADER.size :])


def _parse(body: bytes) -> Message:
    try:
        document = _decode(body.decode("utf-8", "surrogateescape"))
    except ValueError as err:
        raise ChannelClosed(f"a message that is not JSON: {err}") from None
    return Message.from_wire(document)


def send(sock: socket.socket, message: Message) -> None:
    """Send one message on a stream; raise ChannelClosed if the peer is gone."""
    try:
        sock.sendall(frame(message))
    except (BrokenPipeError, ConnectionResetError, OSError) as err:
        raise ChannelClosed(str(err)) from None


def send_packet(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    """Send one message as one packet (the control channel), with file descriptors."""
    data = frame(message)
    if len(data) > MAX_CONTROL_BYTES:
        raise ValueError(f"a control message of {len(data)} bytes")
    try:
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)
    except OSError as err:
        raise ChannelClosed(str(err)) from None


def receive_packet(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """The next control packet's message (None at end of stream) and the descriptors
    passed with it."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_CONTROL_BYTES, 4)
    if not data:
        return None, fds
    try:
        return unframe(data), fds
    except ChannelClosed:
        for fd in fds:
            socket.close(fd)
        raise


class Reader:
    """Reads framed messages from a stream, with an optional deadline per read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _complete(self) -> int | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > MAX_FRAME_BYTES:
            raise ChannelClosed(f"a message of {length} bytes: the peer is broken")
        end = _HEADER.size + length
        return end if len(self._buffer) >= end else None

    def read(self, deadline: float | None = None) -> Message:
        """The next message. Raise ChannelTimeout after ``deadline`` (a monotonic time),
        ChannelClosed at end of stream or on a message that is not ours."""
        while (end := self._complete()) is None:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    raise ChannelTimeout()
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, OSError):
                chunk = b""
            if not chunk:
                raise ChannelClosed("end of stream")
            self._buffer += chunk
        body = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return _parse(body)
