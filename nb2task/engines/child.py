"""Runs a notebook's cells in a fresh IPython shell, capturing outputs as a kernel would.

This module is imported by the warm parent (``zygote``), which builds the shell once
(``prepare_shell``) and forks; each forked child then runs one payload
(``serve``): it receives code cells over a socket, runs them, and sends back
nbformat outputs. What a cell produces matches what ipykernel would send for it:

- ``print`` output: one stream output per name between displays, flushed before every
  display and error, at the end of the cell, and every 0.2 s in a long cell;
- output written to file descriptors 1 and 2 (C libraries, subprocesses): captured
  into the same streams, as ipykernel does;
- ``display`` calls: display_data with their metadata; a cell's value: execute_result;
- errors: ename, evalue and the traceback as a list of formatted lines;
- matplotlib figures through the inline backend (``MPLBACKEND``, as ipykernel sets it).
"""

from __future__ import annotations

import builtins
import codecs
import contextlib
import io
import os
import select
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from IPython.core.compilerop import CachingCompiler
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

from . import processes, protocol

# ipykernel's OutStream.flush_interval: how long output may wait before it is sent.
FLUSH_INTERVAL_S = 0.2
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class Channel:
    """The socket to the process writing the notebook; safe to send from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.pack(message)  # may raise TypeError in the user's cell, as ipykernel
        with self.lock:
            self.sock.sendall(data)


class CapturedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr``: text is buffered and sent as stream outputs."""

    def __init__(self, name: str, fd: int, channel: Channel) -> None:
        super().__init__()
        self.name = name
        self._fd = fd
        self._channel = channel
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._since: float | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pipe: int | None = None

    # What code asks of a text stream.
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
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
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
            self._channel.send(
                {
                    "op": "output",
                    "output": {"output_type": "stream", "name": self.name, "text": text},
                }
            )

    def flush_if_due(self) -> None:
        with self._lock:
            due = self._since is not None and time.monotonic() - self._since >= FLUSH_INTERVAL_S
        if due:
            self.flush()


class KernelLikeDisplayPublisher(DisplayPublisher):
    """Sends ``display()`` calls as display_data outputs, with their metadata."""

    channel: Channel | None = None

    def publish(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: Any = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        flush_streams()
        assert self.channel is not None
        self.channel.send(
            {
                "op": "display",
                "output": {"output_type": "display_data", "data": data, "metadata": metadata or {}},
                "display_id": (transient or {}).get("display_id"),
                "update": update,
            }
        )

    def clear_output(self, wait: bool = False) -> None:
        assert self.channel is not None
        self.channel.send({"op": "clear_output", "wait": wait})


class KernelLikeDisplayHook(DisplayHook):
    """Sends a cell's value as an execute_result output (nothing printed)."""

    channel: Channel | None = None
    _result: dict[str, Any] | None = None

    def start_displayhook(self) -> None:
        self._result = {"output_type": "execute_result", "data": {}, "metadata": {}}

    def write_output_prompt(self) -> None:
        if self._result is not None:
            self._result["execution_count"] = self.prompt_count

    def write_format_data(
        self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None
    ) -> None:
        if self._result is not None:
            self._result["data"] = format_dict
            self._result["metadata"] = md_dict or {}

    def finish_displayhook(self) -> None:
        flush_streams()
        result, self._result = self._result, None
        if result and result["data"] and self.channel is not None:
            self.channel.send({"op": "output", "output": result})


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


class KernelLikeShell(InteractiveShell):
    """An InteractiveShell whose outputs go to the notebook, as in ipykernel."""

    compiler_class = CellFileNames
    displayhook_class = KernelLikeDisplayHook
    display_pub_class = KernelLikeDisplayPublisher
    channel: Channel | None = None
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

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        flush_streams()
        self._last_traceback = stb
        assert self.channel is not None
        self.channel.send(
            {
                "op": "output",
                "output": {
                    "output_type": "error",
                    "ename": str(etype.__name__),
                    "evalue": str(evalue),
                    "traceback": stb,
                },
            }
        )

    def attach(self, channel: Channel) -> None:
        """Send this shell's outputs to ``channel``."""
        self.channel = channel
        self.display_pub.channel = channel  # type: ignore[attr-defined]
        self.displayhook.channel = channel  # type: ignore[attr-defined]


def prepare_shell() -> KernelLikeShell:
    """The shell every child starts from: built once in the warm parent, before any fork.

    History stays in memory: no sqlite file and no thread saving it (forking needs a
    single-threaded parent).
    """
    from traitlets.config import Config

    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell: KernelLikeShell = KernelLikeShell.instance(config=config)
    return shell


class _Discard:
    def send(self, message: dict[str, Any]) -> None:
        pass


def exercise_shell(shell: KernelLikeShell) -> None:
    """Run a few cells through the whole path once (value, print, display, an error and
    its traceback), then reset the shell: code runs slowly the first time in a process
    (lazy imports, caches), and every child would pay that again."""
    shell.attach(_Discard())  # type: ignore[arg-type]
    for code in ("x = 1 + 1\nx", "from IPython.display import display\ndisplay(x)", "1 / 0"):
        shell.run_cell(code, store_history=True)  # type: ignore[no-untyped-call]
    shell.reset(new_session=False)  # type: ignore[no-untyped-call]
    shell.execution_count = 1
    shell._last_traceback = None
    shell.channel = None


_streams: list[CapturedStream] = []


def flush_streams() -> None:
    """Send buffered stdout, then stderr (ipykernel's order before a display or error)."""
    for stream in _streams:
        stream.flush()


def _no_input(prompt: str = "") -> str:
    from IPython.core.error import StdinNotImplementedError

    raise StdinNotImplementedError(
        "raw_input was called, but this frontend does not support input requests."
    )


def _capture_descriptors(channel: Channel) -> None:
    """Point fds 1 and 2 at pipes whose contents become the cell's stream outputs;
    fd 0 reads nothing (a task has no terminal)."""
    global _streams
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    streams = []
    for fd, name in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        stream = CapturedStream(name, fd, channel)
        stream.capture_fd(read_end)
        streams.append(stream)
    _streams = streams
    sys.stdout, sys.stderr = streams[0], streams[1]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
    builtins.input = _no_input  # type: ignore[assignment]


def _pump(stop: threading.Event) -> None:
    """Collect descriptor output as it comes and send what has waited long enough."""
    pipes = [s._pipe for s in _streams if s._pipe is not None]
    while not stop.is_set():
        try:
            select.select(pipes, [], [], FLUSH_INTERVAL_S)
            for stream in _streams:
                stream.drain_fd()
                stream.flush_if_due()
        except Exception:  # noqa: BLE001 - the channel is gone: the run is over anyway
            return


EXIT_CRASHED = 70  # the child's own machinery failed (not the notebook)


def become_child(
    shell: KernelLikeShell, sock: socket.socket, cwd: str, env: dict[str, str]
) -> None:
    """In a freshly forked process: become the payload's child and serve its cells, then
    exit (never returns). It gets its own session and process group (killed whole when
    the run ends); it is a subreaper, so processes it starts that escape to a session of
    their own still come back to it, and to the run's cleanup, when orphaned."""
    code = EXIT_CRASHED
    try:
        os.setsid()
        processes.set_child_subreaper()
        os.chdir(cwd or ".")
        os.environ.update(env)
        sys.argv = [""]
        serve(shell, sock)
        code = 0
    except BaseException:  # noqa: BLE001 - report and leave: the parent sees the exit
        with contextlib.suppress(Exception):
            import traceback

            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(code)


def serve(shell: KernelLikeShell, sock: socket.socket) -> None:
    """The forked child's life: run cells received on ``sock`` until told to stop."""
    channel = Channel(sock)
    _capture_descriptors(channel)
    shell.attach(channel)
    stop = threading.Event()
    threading.Thread(target=_pump, args=(stop,), name="nb2task-output", daemon=True).start()
    reader = protocol.Reader(sock)
    channel.send({"op": "hello", "pid": os.getpid()})
    while True:
        try:
            message = reader.read()
        except protocol.ChannelClosed:
            break
        op = message.get("op")
        if op == "execute":
            _execute(shell, channel, str(message.get("code", "")))
        elif op == "setenv":
            os.environ.update({str(k): str(v) for k, v in dict(message["env"]).items()})
        elif op == "end":
            break
    stop.set()
    flush_streams()
    with contextlib.suppress(OSError):
        memory = private_memory_kb() if os.environ.get(STATS_ENV) else None
        channel.send({"op": "bye", "private_kb": memory})


# Set (by the bench) to report each run's private memory: reading it costs ~3 ms a process.
STATS_ENV = "NB2TASK_MEMORY_STATS"


def private_memory_kb() -> int | None:
    """Memory this process does not share with its warm parent (Linux), in kB."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
    except (OSError, KeyError, ValueError):
        return None


def _execute(shell: KernelLikeShell, channel: Channel, code: str) -> None:
    count = shell.execution_count
    shell._last_traceback = None
    result = shell.run_cell(code, store_history=True)  # type: ignore[no-untyped-call]
    flush_streams()
    reply: dict[str, Any] = {"op": "reply", "execution_count": count, "status": "ok"}
    if not result.success:
        error = result.error_before_exec or result.error_in_exec
        reply.update(
            status="error",
            ename=type(error).__name__,
            evalue=str(error),
            traceback=shell._last_traceback or [],
        )
    channel.send(reply)
