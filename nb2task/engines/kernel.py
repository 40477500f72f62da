"""The kernel engine: a Jupyter kernel per payload, through papermill's nbclient engine.

Kernels start in the background (``prepare``) so that one boots while the payload's
assets download; a warm process can keep a fresh spare ready for the next payload.
Each payload gets its own kernel, shut down once its notebook is saved. Chosen with
``--engine kernel``, and for notebooks whose kernel is not Python.

A kernel dies with the task's process, and is a subreaper: what the notebook starts
stays below it, however it escapes (a new session, a double fork), and is swept before
the kernel is shut down; a mark in the environment finds what left the tree altogether.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import processes
from .executor import Execution, Executor, Limits, describe_exit

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"
BOOT_TIMEOUT_S = 60

# Run silently in a new kernel before it is handed out: no execution count, no output,
# no name bound in the notebook's namespace; the notebook's own imports then find
# these modules loaded. (Failures are ignored: the notebook will report its own.)
PREIMPORT = "[__import__('importlib').import_module(m) for m in ('nb2task.runtime', 'pystac')]"


def _in_the_kernel_process() -> None:
    """Between fork and exec of a kernel: die with the thread that starts it, and keep
    what the notebook starts below the kernel (a subreaper)."""
    processes.die_with_parent(signal.SIGKILL)
    processes.become_subreaper()


class KernelLauncher:
    """Starts kernels off the calling thread; hands out one per notebook run."""

    def __init__(self, kernel_name: str = KERNEL_NAME) -> None:
        self.kernel_name = kernel_name
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nb2task-kernel")
        self._pending: dict[Path, concurrent.futures.Future[Any]] = {}
        self._retiring: list[concurrent.futures.Future[Any]] = []
        self._lock = threading.Lock()
        self.keep_spare = False
        # What escapes a kernel that dies (a daemon of its own session) comes back to
        # us, not to init, to be found and killed; and as PID 1 in a container, we are
        # whom orphans come to anyway.
        processes.become_subreaper()

    def prestart(self, cwd: Path) -> None:
        """Start a kernel for a notebook in ``cwd`` now, unless one is already starting."""
        with self._lock:
            if cwd not in self._pending:
                self._pending[cwd] = self._pool.submit(self._start, cwd)

    def take(self, cwd: Path) -> Any:
        """A started kernel manager for ``cwd``; give it back with ``retire``."""
        self.prestart(cwd)
        with self._lock:
            future = self._pending.pop(cwd)
        try:
            return future.result()
        finally:
            if self.keep_spare:
                self.prestart(cwd)

    def retire(self, km: Any, killed: Iterable[int] = ()) -> None:
        """Shut a used kernel down in the background: the result need not wait for it."""
        with self._lock:
            self._retiring.append(self._pool.submit(self._shutdown, km, killed))

    def _shutdown(self, km: Any, killed: Iterable[int]) -> None:
        pid = kernel_pid(km)
        shutdown(km, killed)
        _KERNEL_PIDS.discard(pid or -1)  # ended: its pid may be anyone's next

    def discard(self) -> None:
        """Shut down kernels started but not taken, and wait for retiring ones."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            retiring, self._retiring = self._retiring, []
        for future in pending:
            try:
                self._shutdown(future.result(timeout=BOOT_TIMEOUT_S), ())
            except Exception as err:  # noqa: BLE001 - closing anyway
                logger.debug("spare kernel: %s", err)
        concurrent.futures.wait(retiring, timeout=BOOT_TIMEOUT_S)

    def _start(self, cwd: Path) -> Any:
        from jupyter_client.manager import AsyncKernelManager

        from ..runtime import EMIT_DIR_ENV

        # IPC (unix sockets) rather than TCP: nothing listens on the network. The
        # socket path must be absolute: the kernel's cwd is not ours. The same private
        # folder receives the items the notebook emits.
        private = tempfile.mkdtemp(prefix="nb2task-kernel-")
        os.mkdir(os.path.join(private, "emitted"))
        km = AsyncKernelManager(
            kernel_name=self.kernel_name, transport="ipc", ip=os.path.join(private, "kernel")
        )
        env = {
            **os.environ,
            EMIT_DIR_ENV: os.path.join(private, "emitted"),
            processes.RUN_MARK: os.path.basename(private),
        }
        asyncio.run(_boot(km, cwd, env))
        return km


# Every kernel this process started (any launcher's: a process may hold several runners),
# by pid, and a lock held while one starts: a sweep for strays must never take a kernel
# of ours for one, nor one whose pid is not known yet.
_KERNEL_PIDS: set[int] = set()
_LAUNCHING = threading.Lock()


def kill_strays(since: int) -> list[int]:
    """Kill what this process adopted since ``since`` (what escaped a kernel that died),
    but its kernels; the pids killed."""
    with _LAUNCHING:
        return processes.kill_adopted(since, _KERNEL_PIDS.__contains__)


async def _boot(km: Any, cwd: Path, env: dict[str, str]) -> None:
    # What the kernel writes to its own stdout/stderr (C libraries, subprocesses) is
    # not ours to print: our stdout may carry the output payload.
    with _LAUNCHING:  # no sweep meanwhile: until its pid is known, it is no stray
        await km.start_kernel(
            # As nbclient starts a Python kernel: history in memory (no sqlite file).
            extra_arguments=["--HistoryManager.hist_file=:memory:"] if km.ipykernel else [],
            cwd=str(cwd),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_in_the_kernel_process,
        )
        pid = kernel_pid(km)  # Popen returns once the kernel has exec'd
        if pid is not None:
            _KERNEL_PIDS.add(pid)
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=BOOT_TIMEOUT_S)
        msg_id = client.execute(PREIMPORT, silent=True, store_history=False)
        while True:
            reply = await client.get_shell_msg(timeout=BOOT_TIMEOUT_S)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    finally:
        client.stop_channels()


def private_dir(km: Any) -> Path:
    return Path(os.path.dirname(km.ip))


def kernel_pid(km: Any) -> int | None:
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return getattr(process, "pid", None)


def sweep(km: Any) -> list[int]:
    """Kill what the notebook started: below the kernel (a subreaper), and by mark. The
    pids killed below the kernel, to reap once it is gone."""
    pid = kernel_pid(km)
    below = processes.below(pid) if pid is not None else []
    if pid is not None:
        processes.kill_tree(pid)
    processes.kill_marked(private_dir(km).name)
    return below


def shutdown(km: Any, killed: Iterable[int] = ()) -> None:
    """Stop a kernel at once, and whatever it started: its notebook is saved. ``killed``:
    processes killed below it, ours to reap once it is gone."""
    killed = [*killed, *sweep(km)]
    try:
        asyncio.run(km.shutdown_kernel(now=True))
    except Exception as err:  # noqa: BLE001 - a kernel that will not die is killed below
        logger.warning("kernel shutdown: %s", err)
        kill(km)
    processes.kill_marked(private_dir(km).name)
    processes.reap(killed)
    shutil.rmtree(private_dir(km), ignore_errors=True)


def kill(km: Any) -> None:
    """Kill the kernel and all below it: the running cell ends, nbclient sees a dead kernel."""
    pid = kernel_pid(km)
    if pid is not None:
        processes.kill_tree(pid, include_root=True)
        processes.kill_group(pid)


class KernelExecutor(Executor):
    """Runs each payload on a fresh Jupyter kernel."""

    name = "kernel"

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = KERNEL_NAME,
        language: str = "python",
        once: bool = False,
    ) -> None:
        super().__init__(notebook_path, kernel_name, language, once)
        self.launcher = KernelLauncher(kernel_name)
        self._lock = threading.Lock()
        self._kernels: set[Any] = set()  # in flight

    @property
    def keep_spare(self) -> bool:
        return self.launcher.keep_spare

    @keep_spare.setter
    def keep_spare(self, value: bool) -> None:
        self.launcher.keep_spare = value

    def prepare(self) -> None:
        if self.notebook_path is not None:
            self.launcher.prestart(self.notebook_path.parent)
        from . import driver  # noqa: F401 - papermill's imports, while the kernel boots

    def close(self) -> None:
        self.launcher.discard()

    def _kill_runs(self) -> None:
        with self._lock:
            kernels = list(self._kernels)
        for km in kernels:
            kill(km)

    def execute(
        self,
        node: Any,
        parameters: dict[str, Any],
        *,
        output_path: Path,
        cwd: Path,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
        log_output: bool = True,
        record_metadata: dict[str, Any] | None = None,
    ) -> Execution:
        from papermill.exceptions import PapermillExecutionError

        from ..harvest import harvest
        from . import driver, papermill_engines
        from .fork import cell_error

        stats: dict[str, Any] = {"engine": self.name}
        started = time.perf_counter()
        since = processes.now_in_ticks()  # what we adopt from now on is this run's
        km = self.launcher.take(cwd)
        stats["pid"] = kernel_pid(km)
        with self._lock:
            self._kernels.add(km)
        time_up = threading.Event()
        watchdog = (
            threading.Timer(limits.timeout, self._time_up, (km, time_up))
            if limits.timeout
            else None
        )
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            executed = driver.execute(
                node,
                parameters,
                engine_name=papermill_engines.KERNEL_ENGINE,
                output_path=output_path,
                notebook_path=self.notebook_path,
                kernel_name=self.kernel_name,
                language=self.language,
                record_metadata=record_metadata,
                log_output=log_output,
                cell_timeout=limits.cell_timeout,
                error_for=lambda error: self._error_for(error, km, limits, time_up),
                km=km,
            )
            found = harvest(executed, private_dir(km) / "emitted")
        except PapermillExecutionError as err:
            raise cell_error(err) from None
        finally:
            if watchdog:
                watchdog.cancel()
            with self._lock:
                self._kernels.discard(km)
            # The kernel and all it started, now: the run must leave nothing running.
            # What escaped it, if it died, came back to us: killed by the tree and the
            # time it started, whatever its environment says.
            killed = sweep(km)
            processes.reap(kill_strays(since))
            self.launcher.retire(km, killed)
        stats["seconds"] = round(time.perf_counter() - started, 4)
        self.history.append(stats)
        return Execution(executed, found["items"], stats, found["emit_calls"], found["stopped_at"])

    def _error_for(
        self, error: BaseException, km: Any, limits: Limits, time_up: threading.Event
    ) -> BaseException:
        """What stopped the run, in nb2task's words (nbclient's timeout and dead kernel
        as RunTimeoutError and NotebookDiedError); an interrupt kills the kernel now."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError
        from papermill.exceptions import PapermillExecutionError

        from ..errors import NotebookDiedError, RunTimeoutError

        if isinstance(error, RunTimeoutError | NotebookDiedError):
            return error
        if time_up.is_set():  # the run's time is up: whatever ended it was the watchdog's doing
            return RunTimeoutError(f"the notebook ran longer than {limits.timeout:g} s")
        if isinstance(error, PapermillExecutionError):
            return error  # type: ignore[no-any-return]
        if isinstance(error, CellTimeoutError):
            if limits.cell_timeout is None:  # nbclient's own wait for output (iopub) ran out
                return RunTimeoutError(f"the kernel's output stopped coming: {error}")
            return RunTimeoutError(f"a notebook cell ran longer than {limits.cell_timeout:g} s")
        if isinstance(error, DeadKernelError):
            stop = self.stopping()
            if stop is not None:
                return stop
            process = getattr(km.provisioner, "process", None)
            ended = describe_exit(process.poll() if process is not None else None)
            return NotebookDiedError(f"the notebook's kernel died ({ended})")
        kill(km)  # interrupted (Ctrl-C, SIGTERM) or broken: the kernel ends with us, now
        return error

    @staticmethod
    def _time_up(km: Any, time_up: threading.Event) -> None:
        """The run's time is up: interrupt the running cell (its KeyboardInterrupt and
        traceback reach the notebook, as on a cell timeout), then kill the kernel."""
        from .papermill_engines import INTERRUPT_GRACE_S

        time_up.set()
        logger.error("run timeout: stopping the notebook's kernel")
        pid = kernel_pid(km)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGINT)  # the kernel's own session: its group
            time.sleep(INTERRUPT_GRACE_S)
        kill(km)
