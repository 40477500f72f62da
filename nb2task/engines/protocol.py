"""Messages between the processes of the fork engine: length-prefixed JSON on a socket.

Only JSON crosses process boundaries: the process that writes the notebook never
unpickles what user code could have produced, and a corrupt message is an error, not
code execution.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any

_HEADER = struct.Struct("!I")
# A single output (an image, a large print) can be big; anything past this is a broken peer.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class ChannelClosed(Exception):
    """The other end went away (its process exited or was killed)."""


class ChannelTimeout(Exception):
    """No message arrived before the deadline."""


def _json_default(value: Any) -> Any:
    # As jupyter_client packs kernel messages: bytes (images) as base64, dates as ISO text.
    if isinstance(value, bytes | bytearray | memoryview):
        import base64

        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# Bound now: a notebook that monkeypatches json.dumps later cannot change how we encode.
_encode = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode
_decode = json.JSONDecoder().decode


def pack(message: dict[str, Any]) -> bytes:
    """One framed message."""
    body = _encode(message).encode("utf-8", "surrogateescape")
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message; raise ChannelClosed if the peer is gone."""
    try:
        sock.sendall(pack(message))
    except (BrokenPipeError, ConnectionResetError) as err:
        raise ChannelClosed(str(err)) from None


class Reader:
    """Reads framed messages from a socket, with an optional deadline per read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def buffered(self) -> bool:
        """True if a whole message is already buffered (no need to wait on the socket)."""
        return self._complete() is not None

    def _complete(self) -> int | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > MAX_MESSAGE_BYTES:
            raise ChannelClosed(f"message of {length} bytes: the peer is broken")
        end = _HEADER.size + length
        return end if len(self._buffer) >= end else None

    def read(self, deadline: float | None = None) -> dict[str, Any]:
        """The next message. Raise ChannelTimeout after ``deadline`` (a monotonic time),
        ChannelClosed at end of stream or on a message that is not ours."""
        while (end := self._complete()) is None:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    raise ChannelTimeout()
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ChannelClosed("end of stream")
            self._buffer += chunk
        body = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        try:
            message = _decode(body.decode("utf-8", "surrogateescape"))
        except ValueError as err:
            raise ChannelClosed(f"a message that is not JSON: {err}") from None
        if not isinstance(message, dict):
            raise ChannelClosed("a message that is not a JSON object")
        return message
