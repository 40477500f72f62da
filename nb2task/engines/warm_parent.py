"""The warm parent, seen from the task's process: start it, have it fork a run's child,
kill a run, learn how a child ended.

The warm parent (``nb2task.engines.zygote``) runs in a session of its own (a terminal's
Ctrl-C is for the task's process to handle, not for it) and dies with the thread that
started it. A thread of this process listens to its control channel and sorts what it
says by run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import messages
from .fork_client import Child

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120  # the warm-up imports the notebook's own modules
EXIT_TIMEOUT_S = 10
_run_ids = itertools.count(1)
_GONE = messages.Exited("", 0)  # posted to every mailbox when the warm parent dies


class WarmParentGone(Exception):
    """The warm parent is not there (it did not start, or it died)."""


class WarmParent:
    """A started warm parent."""

    def __init__(self, notebook: Path | None = None, once: bool = False) -> None:
        self.notebook = notebook
        self.once = once  # one run only: no warm-up for runs after it, no spare after it
        self.info: messages.Ready | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._mailboxes: dict[str, queue.Queue[messages.Message]] = {}
        self._spare: Child | None = None  # a child forked ahead of its run
        self._dead = False
        # The warm parent's own stderr, read for its death notice.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "nb2task.engines.zygote"]
        command += ["--control-fd", str(theirs.fileno()), "--parent", str(os.getpid())]
        if notebook is not None:
            command += ["--notebook", str(notebook)]
        if once:
            command += ["--once"]
        self.process = subprocess.Popen(
            command,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=str(notebook.parent) if notebook is not None else None,
            start_new_session=True,
        )
        theirs.close()
        self._listener = threading.Thread(target=self._listen, name="nb2task-warm", daemon=True)
        self._listener.start()
        # The first run's child, asked for now: forked as soon as the warm-up ends.
        with contextlib.suppress(WarmParentGone):
            self._spare = self._fork()

    @property
    def alive(self) -> bool:
        return not self._dead

    def _listen(self) -> None:
        while True:
            try:
                message, fds = messages.receive_packet(self._control)
            except (messages.ChannelClosed, OSError):
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            if message is None:
                break
            if isinstance(message, messages.Ready):
                self.info = message
                if message.deferred:
                    logger.info("each run imports itself: %s", "; ".join(message.deferred))
                self._ready.set()
            elif isinstance(message, messages.Forked | messages.Refused | messages.Exited):
                with self._lock:
                    mailbox = self._mailboxes.get(message.run)
                if mailbox is not None:
                    mailbox.put(message)
        self._dead = True
        self._ready.set()
        with self._lock:
            mailboxes = list(self._mailboxes.values())
        for mailbox in mailboxes:
            mailbox.put(_GONE)

    def death_notice(self) -> str:
        """What the warm parent said before it died (the end of its stderr)."""
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"exit status {self.process.poll()}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if not self._ready.is_set():
            started = time.monotonic()
            self._ready.wait(timeout)
            waited = (time.monotonic() - started) * 1000
            logger.debug("waited %.0f ms for the warm parent (%s)", waited, self.info)
        if not self._ready.is_set() or self._dead:
            raise WarmParentGone(f"the warm parent did not start: {self.death_notice()}")

    def fork(self) -> Child:
        """A child for one run (``Child.start`` gives it its run): the spare forked ahead
        of this run when there is one, so that the run need not wait for the fork; and
        (unless ``once``) a spare for the next run is asked for now."""
        self.wait_ready()
        with self._lock:
            child, self._spare = self._spare, None
        if child is None:
            child = self._fork()
        if not self.once:
            with contextlib.suppress(WarmParentGone):
                spare = self._fork()
                with self._lock:
                    self._spare = spare
        return child

    def _fork(self) -> Child:
        """Ask for a child; it says hello on its own socket once forked."""
        run_id = f"{os.getpid()}-{next(_run_ids)}"
        with self._lock:
            self._mailboxes[run_id] = queue.Queue()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            messages.send_packet(self._control, messages.Fork(run_id), [theirs.fileno()])
        except messages.ChannelClosed as err:
            ours.close()
            self.forget(run_id)
            raise WarmParentGone(f"the warm parent is gone: {err}") from None
        finally:
            theirs.close()
        return Child(self, run_id, ours)

    def why_not_started(self, run_id: str, err: BaseException) -> str:
        """Why a run's child never said hello, in words."""
        with self._lock:
            mailbox = self._mailboxes.get(run_id)
        while mailbox is not None:
            try:
                message = mailbox.get(timeout=1)
            except queue.Empty:
                break
            if isinstance(message, messages.Refused):
                return f"the warm parent could not fork safely: {message.reason}"
            if message is _GONE:
                return f"the warm parent died: {self.death_notice()}"
        return f"the run's process did not start ({err or 'no answer'})"

    def interrupt(self, run_id: str) -> None:
        """Interrupt the run's child (a KeyboardInterrupt in its running cell)."""
        with contextlib.suppress(messages.ChannelClosed):
            messages.send_packet(self._control, messages.Interrupt(run_id))

    def kill(self, run_id: str) -> None:
        """Kill the run's child and all it started (the warm parent reports the exit)."""
        with contextlib.suppress(messages.ChannelClosed):
            messages.send_packet(self._control, messages.Kill(run_id))

    def wait_exit(self, run_id: str, timeout: float = EXIT_TIMEOUT_S) -> str:
        """How the run's child ended, in words; it is killed again if it lingers."""
        with self._lock:
            mailbox = self._mailboxes.get(run_id)
        try:
            for _attempt in range(2):
                deadline = time.monotonic() + timeout
                while mailbox is not None:
                    try:
                        message = mailbox.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if message is _GONE:
                        return "its warm parent died"
                    if isinstance(message, messages.Exited):
                        return how_it_ended(message)
                    if isinstance(message, messages.Refused):
                        return "it was never started"
                self.kill(run_id)
            return "it stopped answering"
        finally:
            self.forget(run_id)

    def forget(self, run_id: str) -> None:
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


def how_it_ended(message: messages.Exited) -> str:
    """How a child ended, in words, from the warm parent's ``Exited``."""
    from .executor import describe_exit

    if message.signal is not None:
        return describe_exit(-int(message.signal))
    return describe_exit(message.code)
