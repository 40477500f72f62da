"""An IPython shell whose outputs are a kernel's: the same messages ipykernel sends.

The warm parent builds the shell once (``prepare_shell``); each forked child attaches it
to its run's channel (``KernelLikeShell.attach``) and runs cells on it. What a cell
produces is sent as ipykernel sends it, message by message, so that the process writing
the notebook can apply them with nbclient's own output handling:

- ``print`` output (``OutStream``): one ``stream`` message per name, 0.2 s after the
  first unsent write (ipykernel's ``flush_interval``), and whenever the streams are
  flushed: before a display, a ``clear_output``, an error, and at the end of the cell;
- output written to file descriptors 1 and 2 (C libraries, subprocesses) joins the same
  streams, as ipykernel 7 captures it;
- ``display`` calls: ``display_data`` (``update_display_data`` for an update of a
  ``display_id``), with metadata and transient data; a cell's value: ``execute_result``;
- errors: ``error``, the traceback as a list of formatted lines;
- matplotlib figures through the inline backend (``MPLBACKEND``, as ipykernel sets it).

The messages themselves are built by the run's kernel (``nb2task.engines.kernel_shim``);
this module only decides when and what.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ipykernel import zmqshell
from IPython.core.compilerop import CachingCompiler
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher

# ipykernel's OutStream.flush_interval: how long output may wait before it is sent.
FLUSH_INTERVAL_S = 0.2
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

Hook = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class Publisher(Protocol):
    """What the shell needs of its kernel: an iopub message, sent with the current parent."""

    def publish(
        self, msg_type: str, content: dict[str, Any], buffers: list[Any] | None = None
    ) -> None: ...

    def message(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]: ...

    def send_message(self, msg: dict[str, Any]) -> None: ...


class _Discard:
    """A publisher for the warm-up: everything is dropped."""

    def publish(
        self, msg_type: str, content: dict[str, Any], buffers: list[Any] | None = None
    ) -> None:
        pass

    def message(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return {"header": {"msg_type": msg_type}, "content": content}

    def send_message(self, msg: dict[str, Any]) -> None:
        pass


class OutStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` as ipykernel's OutStream: text is buffered and sent
    as ``stream`` messages (see the module's docstring for when)."""

    def __init__(self, name: str, fd: int, kernel: Publisher) -> None:
        super().__init__()
        self.name = name
        self._fd = fd
        self._kernel = kernel
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._since: float | None = None  # when the first unsent text was written
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pipe: int | None = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "UTF-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Writes to the descriptor are captured too (see capture_fd).
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text)}")
        if text:
            with self._lock:
                self._pending.append(text)
                if self._since is None:
                    self._since = time.monotonic()
        return len(text)

    def capture_fd(self, read_end: int) -> None:
        """Also capture what is written to the descriptor, through the pipe ``read_end``."""
        os.set_blocking(read_end, False)
        self._pipe = read_end

    def drain_fd(self) -> None:
        """Move what arrived on the descriptor into the buffer."""
        if self._pipe is None:
            return
        with self._lock:
            while True:
                try:
                    data = os.read(self._pipe, 1 << 16)
                except BlockingIOError:
                    return
                if not data:
                    return
                self.write(self._decoder.decode(data))

    def flush(self) -> None:
        self.drain_fd()
        with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._since = None
            self._kernel.publish("stream", {"name": self.name, "text": text})

    def due(self) -> float | None:
        """When the unsent text must go (a monotonic time), or None if there is none."""
        with self._lock:
            return None if self._since is None else self._since + FLUSH_INTERVAL_S


class KernelLikeDisplayPublisher(DisplayPublisher):
    """``display()`` as ipykernel's ZMQDisplayPublisher: display_data and
    update_display_data messages, streams flushed first; transform hooks honoured."""

    kernel: Publisher = _Discard()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._hooks: list[Hook] = []

    def register_hook(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def unregister_hook(self, hook: Hook) -> bool:
        try:
            self._hooks.remove(hook)
            return True
        except ValueError:
            return False

    def publish(  # type: ignore[override]
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        flush_streams()
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        self._send("update_display_data" if update else "display_data", content)

    def clear_output(self, wait: bool = False) -> None:
        flush_streams()
        self._send("clear_output", {"wait": wait})

    def _send(self, msg_type: str, content: dict[str, Any]) -> None:
        msg: dict[str, Any] | None = self.kernel.message(msg_type, content)
        for hook in list(self._hooks):
            assert msg is not None
            msg = hook(msg)
            if msg is None:
                return
        assert msg is not None
        self.kernel.send_message(msg)


class KernelLikeDisplayHook(DisplayHook):
    """A cell's value as ipykernel's ZMQShellDisplayHook: an execute_result message."""

    kernel: Publisher = _Discard()
    _result: dict[str, Any] | None = None

    def start_displayhook(self) -> None:
        self._result = {"data": {}, "metadata": {}}

    def write_output_prompt(self) -> None:
        if self._result is not None:
            self._result["execution_count"] = self.prompt_count

    def write_format_data(
        self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None
    ) -> None:
        if self._result is not None:
            self._result["data"] = format_dict
            self._result["metadata"] = md_dict

    def finish_displayhook(self) -> None:
        flush_streams()
        result, self._result = self._result, None
        if result and result["data"]:
            self.kernel.publish("execute_result", result)


class CellFileNames(CachingCompiler):
    """Names cells' code as ipykernel does (a file per cell under the temp directory,
    named by a murmur2 hash of its code), so that tracebacks and error messages read as
    a kernel writes them."""

    def get_code_name(self, raw_code: str, transformed_code: str, number: int) -> str:
        name = f"{_murmur2(raw_code, 0xC70F6907)}.py"
        return os.path.join(tempfile.gettempdir(), f"ipykernel_{os.getpid()}", name)


def _murmur2(text: str, seed: int) -> int:
    """MurmurHash2 (x86, 32 bits) of the UTF-8 bytes, as ipykernel's compiler computes it
    (ipykernel/compiler.py, BSD-3-Clause)."""
    data = text.encode("utf-8")
    m, length = 0x5BD1E995, len(data)
    h = seed ^ length
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        h ^= int.from_bytes(data[end:], "little")
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


class KernelLikeShell(zmqshell.ZMQInteractiveShell):
    """ipykernel's own shell (what code that looks for a notebook finds: its class, its
    kernel magics, ``ipykernel.zmqshell`` loaded), whose outputs go through the run's
    kernel (``nb2task.engines.kernel_shim.Kernel``) instead of ZeroMQ sockets. Named
    ``ZMQInteractiveShell`` below, as ipykernel's is: code tells a notebook by that name
    (rich, plotly, many a notebook's own check)."""

    compiler_class = CellFileNames
    displayhook_class = KernelLikeDisplayHook  # type: ignore[assignment]
    display_pub_class = KernelLikeDisplayPublisher  # type: ignore[assignment]
    _last_traceback: list[str] | None = None

    def init_environment(self) -> None:
        # The environment ipykernel gives the code it runs.
        os.environ.update(
            TERM="xterm-color", CLICOLOR="1", FORCE_COLOR="1", CLICOLOR_FORCE="1",
            PAGER="cat", GIT_PAGER="cat",
        )  # fmt: skip

    def enable_gui(self, gui: Any = None) -> None:
        # No event loop to integrate with: a batch run has no GUI.
        pass

    def set_parent(self, parent: dict[str, Any]) -> None:
        """The request now being run (the kernel sends with it)."""
        self.parent_header = parent

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        flush_streams()
        self._last_traceback = stb
        content = {"traceback": stb, "ename": str(etype.__name__), "evalue": str(evalue)}
        self.publisher.publish("error", content)

    @property
    def publisher(self) -> Publisher:
        return self.display_pub.kernel  # type: ignore[attr-defined, no-any-return]

    def attach(self, kernel: Any) -> None:
        """Send this shell's outputs through ``kernel``."""
        self.kernel = kernel
        self.display_pub.kernel = kernel  # type: ignore[attr-defined]
        self.displayhook.kernel = kernel  # type: ignore[attr-defined]


KernelLikeShell.__name__ = KernelLikeShell.__qualname__ = "ZMQInteractiveShell"


def prepare_shell() -> KernelLikeShell:
    """The shell every child starts from: built once in the warm parent, before any fork.

    History stays in memory: no sqlite file and no thread saving it (forking needs a
    single-threaded parent), as nbclient has a kernel keep it.
    """
    from traitlets.config import Config

    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell: KernelLikeShell = KernelLikeShell.instance(config=config)
    return shell


def exercise(shell: KernelLikeShell) -> None:
    """Run a few cells through the whole path once (value, print, display, an error and
    its traceback), then reset the shell: code runs slowly the first time in a process
    (lazy imports, caches), and every child would pay that again."""
    shell.attach(_Discard())
    for code in ("x = 1 + 1\nx", "from IPython.display import display\ndisplay(x)", "1 / 0"):
        shell.run_cell(code, store_history=True)  # type: ignore[no-untyped-call]
    shell.reset(new_session=False)  # type: ignore[no-untyped-call]
    shell.execution_count = 1
    shell._last_traceback = None
    shell.kernel = None


_streams: list[OutStream] = []


def flush_streams() -> None:
    """Send buffered stdout, then stderr (ipykernel's order before a display or error)."""
    for stream in _streams:
        stream.flush()


def streams() -> list[OutStream]:
    return _streams


def _no_input(prompt: str = "") -> str:
    from IPython.core.error import StdinNotImplementedError

    raise StdinNotImplementedError(
        "raw_input was called, but this frontend does not support input requests."
    )


def capture_output(kernel: Publisher) -> None:
    """Point ``sys.stdout``/``sys.stderr`` and fds 1 and 2 at the run's streams; fd 0
    reads nothing (a task has no terminal) and ``input()`` raises, as a kernel does
    when its client allows no stdin."""
    import builtins
    import getpass

    global _streams
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    captured = []
    for fd, name in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        stream = OutStream(name, fd, kernel)
        stream.capture_fd(read_end)
        captured.append(stream)
    _streams = captured
    sys.stdout, sys.stderr = captured[0], captured[1]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
    builtins.input = _no_input  # type: ignore[assignment]
    getpass.getpass = _no_input  # type: ignore[assignment]


def pump(stop: threading.Event) -> None:
    """Collect descriptor output as it comes; send what has waited its 0.2 s."""
    import select

    pipes = [s._pipe for s in _streams if s._pipe is not None]
    while not stop.is_set():
        try:
            due = [d for s in _streams if (d := s.due()) is not None]
            wait = max(0.0, min(due) - time.monotonic()) if due else FLUSH_INTERVAL_S
            select.select(pipes, [], [], wait)
            for stream in _streams:
                stream.drain_fd()
                when = stream.due()
                if when is not None and time.monotonic() >= when:
                    stream.flush()
        except Exception:  # noqa: BLE001 - the channel is gone: the run is over anyway
            return
