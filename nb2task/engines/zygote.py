"""The warm parent: a process that imports once, then forks one child per run.

Run as ``python -m nb2task.engines.zygote --control-fd N --parent PID [--notebook PATH]``
by ``nb2task.engines.warm_parent.WarmParent``, its handle. It warms up
(``nb2task.engines.warmup``), freezes its heap for the garbage collector, and serves its
control channel (``nb2task.engines.messages``): ``Fork`` (fork a child serving the socket
passed along), ``Interrupt`` (a run's child), ``Kill`` (a run's child and all it
started); it reports ``Exited`` for every child it reaps.

Forking is safe here because this process has one thread, checked before every fork, and
no event loop. It dies with the process that started it; when it ends, or a run ends,
nothing is left: it is a subreaper, and kills every process below it that belongs to no
live run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import child, messages, pools, processes, warmup


class Zygote:
    """The request loop."""

    def __init__(self, control: socket.socket, shell: Any, limits: pools.Limits) -> None:
        self.control = control
        self.shell = shell
        self.limits = limits
        self.runs: dict[int, str] = {}  # pid of a child -> its run id
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w)

    def send(self, message: messages.Message) -> None:
        with contextlib.suppress(messages.ChannelClosed):  # our user is gone: we end soon
            messages.send_packet(self.control, message)

    def serve(self) -> None:
        while True:
            readable, _, _ = select.select([self.control.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.reap()
            if self.control.fileno() in readable:
                try:
                    message, fds = messages.receive_packet(self.control)
                except (messages.ChannelClosed, OSError):
                    message, fds = None, []
                if message is None:
                    for fd in fds:
                        os.close(fd)
                    return
                self.handle(message, fds)

    def handle(self, message: messages.Message, fds: list[int]) -> None:
        if isinstance(message, messages.Fork) and fds:
            self.fork(message, fds.pop(0))
        elif isinstance(message, messages.Kill):
            for pid in self.pids(message.run):
                processes.kill_tree(pid, include_root=True)
        elif isinstance(message, messages.Interrupt):
            for pid in self.pids(message.run):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
        for fd in fds:
            os.close(fd)

    def pids(self, run: str) -> list[int]:
        """The child of run ``run`` (none once it ended: its pid may be another's now)."""
        return [pid for pid, run_id in self.runs.items() if run_id == run]

    def fork(self, request: messages.Fork, fd: int) -> None:
        threads = processes.native_threads()
        if threads != 1:
            os.close(fd)
            names = ", ".join(processes.thread_names()[1:]) or "unnamed"
            self.send(messages.Refused(request.run, f"it has {threads} threads ({names})"))
            return
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            signal.set_wakeup_fd(-1)
            self.control.close()
            os.close(self.wake_r)
            os.close(self._wake_w)
            child.become_child(self.shell, socket.socket(fileno=fd), parent, self.limits, threads)
        os.close(fd)
        self.runs[pid] = request.run
        self.send(messages.Forked(request.run, pid))

    def reap(self) -> None:
        """Collect ended children; kill what came back here from ended runs; report."""
        ended = processes.reap_any()
        if not ended:
            return
        # What is below this process and belongs to no live run came back here, a
        # subreaper, when its parent died: it outlived its run.
        processes.kill_tree(os.getpid(), spare=self.runs)
        for pid, status in ended:
            run = self.runs.pop(pid, None)
            if run is None:
                continue  # a stray that came back here, and ended
            if os.WIFSIGNALED(status):
                self.send(messages.Exited(run, pid, signal=os.WTERMSIG(status)))
            else:
                self.send(messages.Exited(run, pid, code=os.waitstatus_to_exitcode(status)))


def main(argv: list[str] | None = None) -> NoReturn:
    gc.disable()  # imports make garbage the collector would scan again and again
    parser = argparse.ArgumentParser(prog="nb2task-zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--notebook", type=Path)
    parser.add_argument("--defer", action="append", default=[], metavar="MODULE: WHY")
    parser.add_argument("--once", action="store_true", help="warm up for one run only")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    os.set_inheritable(args.control_fd, True)  # kept across a restart (execv)
    # Die with our user; SIGTERM, so that our runs die with us.
    signal.signal(signal.SIGTERM, lambda *_: _leave())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the task's to handle
    processes.die_with_parent(signal.SIGTERM, args.parent)
    processes.become_subreaper()
    limits = pools.limit()
    notebook_dir = args.notebook.resolve().parent if args.notebook else None
    modules = warmup.notebook_imports(args.notebook) if args.notebook else []
    if notebook_dir is not None:
        sys.path.insert(0, "")  # as in a kernel: modules beside the notebook import
    try:
        warm = warmup.warm_up(modules, args.defer, notebook_dir, exercise=not args.once)
    except warmup.StartsThreads as err:
        _restart(args, limits, f"{err.module}: {err.why}")
    pools.find_openblas(limits)
    gc.freeze()  # children share these pages instead of copying them when they collect
    zygote = Zygote(control, warm.shell, limits)
    zygote.send(
        messages.Ready(
            os.getpid(), warm.imported, warm.deferred, warm.failed, warm.seconds,
            processes.native_threads(),
        )
    )  # fmt: skip
    zygote.serve()
    _leave()


def _leave() -> NoReturn:
    """Kill every run and everything below, and exit (no teardown: the task's process
    would wait for it)."""
    with contextlib.suppress(Exception):
        processes.kill_tree(os.getpid())
    os._exit(0)


def _restart(args: argparse.Namespace, limits: pools.Limits, deferred: str) -> NoReturn:
    """Start again, as a new program in this process, leaving ``deferred`` to each run."""
    pools.restore_environment(limits)
    argv = ["--control-fd", str(args.control_fd), "--parent", str(args.parent)]
    if args.notebook:
        argv += ["--notebook", str(args.notebook)]
    if args.once:
        argv += ["--once"]
    for entry in [*args.defer, deferred]:
        argv += ["--defer", entry]
    os.execv(sys.executable, [sys.executable, "-m", "nb2task.engines.zygote", *argv])


if __name__ == "__main__":
    main()
