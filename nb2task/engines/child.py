"""A child: one payload's cells, run in a process forked from the warm parent.

The warm parent forks it with the run's channel (a socket to the task's process) and
calls ``become_child``, which never returns: the child dies with the warm parent, takes
a session of its own (killed whole when the run ends) and is a subreaper (what it starts
and escapes to a session of its own still comes back to it, and to the run's cleanup);
it gets the native thread pools the warm parent held back and says hello. It may be
forked ahead of its run (a spare): the run's working directory and environment come with
``Setup``; then it serves the run's requests on the shell the warm parent built, through
its kernel (``nb2task.engines.kernel_shim``), until told to end.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading

from .. import settings
from . import kernel_shim, messages, pools, processes, shell

EXIT_CRASHED = 70  # the child's own machinery failed (not the notebook)
# NB2TASK_MEMORY_STATS (set by the bench) reports each run's private memory: reading it
# costs ~3 ms a process.


def become_child(
    prepared: shell.KernelLikeShell,
    sock: socket.socket,
    parent: int,
    limits: pools.Limits,
    parent_threads: int = 1,
) -> None:
    """In a freshly forked process: become a run's child; exit when it ends."""
    code = EXIT_CRASHED
    try:
        processes.die_with_parent(signal.SIGKILL, parent)
        os.setsid()
        processes.become_subreaper()
        # The warm parent's signal handling is not the notebook's: a kernel's defaults.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pools.give_back(limits)
        gc.enable()
        sys.argv = [""]
        serve(prepared, sock, parent_threads)
        code = 0
    except BaseException:  # noqa: BLE001 - report and leave: the parent sees the exit
        with contextlib.suppress(Exception):
            import traceback

            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(code)


class Channel:
    """The run's channel, seen from the child; safe to send on from any thread (the
    output pump, a notebook's own threads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: messages.Message) -> None:
        data = messages.frame(message)  # may raise TypeError in the user's cell, as ipykernel
        with self.lock:
            self.sock.sendall(data)


def serve(prepared: shell.KernelLikeShell, sock: socket.socket, parent_threads: int = 1) -> None:
    """The child's life: serve the run's requests until told to end."""
    channel = Channel(sock)
    kernel = kernel_shim.Kernel(prepared, channel.send)
    kernel_shim.set_current(kernel)
    shell.capture_output(kernel)
    prepared.attach(kernel)
    stop = threading.Event()
    pump = threading.Thread(target=shell.pump, args=(stop,), name="nb2task-output", daemon=True)
    pump.start()
    reader = messages.Reader(sock)
    channel.send(messages.Hello(os.getpid(), parent_threads))
    # Ahead of the run: a silent cell touches the memory every cell does, so the copies
    # a fork makes of shared pages as they are written happen now, not in the run.
    prepared.run_cell("None", store_history=False, silent=True)  # type: ignore[no-untyped-call]
    # Ready: the run it is for may come now or later (a spare is forked ahead of it).
    try:
        setup = reader.read()
    except messages.ChannelClosed:
        return
    if not isinstance(setup, messages.Setup):
        return
    os.chdir(setup.cwd or ".")
    os.environ.update(setup.env)
    # Read before the notebook runs: what it does to os.environ is not our setting.
    report_memory = settings.read("NB2TASK_MEMORY_STATS")
    while True:
        try:
            message = reader.read()
        except messages.ChannelClosed:
            break
        if isinstance(message, messages.Jupyter):
            kernel.handle(message)
        elif isinstance(message, messages.End):
            break
    stop.set()
    shell.flush_streams()
    with contextlib.suppress(OSError):
        channel.send(messages.Bye(private_memory_kb() if report_memory else None))


def private_memory_kb() -> int | None:
    """Memory this process does not share with its warm parent (Linux), in kB."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
    except (OSError, KeyError, ValueError):
        return None
