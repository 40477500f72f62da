"""The kernel engine: a Jupyter kernel per payload, through papermill's nbclient engine.

Kernels start in the background (``prepare``) so that one boots while the payload's
assets download; a warm process can keep a fresh spare ready for the next payload.
Each payload gets its own kernel, shut down in the background once its notebook is
saved. Chosen with ``--engine kernel``, and for notebooks whose kernel is not Python.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import EMIT_DIR_ENV, Execution, Executor, Limits, describe_exit, processes

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"
BOOT_TIMEOUT_S = 60

# Run silently in a new kernel before it is handed out: no execution count, no output,
# no name bound in the notebook's namespace; the notebook's own imports then find
# these modules loaded. (Failures are ignored: the notebook will report its own.)
PREIMPORT = "[__import__('importlib').import_module(m) for m in ('nb2task.runtime', 'pystac')]"


class KernelLauncher:
    """Starts kernels off the calling thread; hands out one per notebook run."""

    def __init__(self, kernel_name: str = KERNEL_NAME) -> None:
        self.kernel_name = kernel_name
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nb2task-kernel")
        self._pending: dict[Path, concurrent.futures.Future[Any]] = {}
        self._retiring: list[concurrent.futures.Future[Any]] = []
        self._lock = threading.Lock()
        self.keep_spare = False

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

    def retire(self, km: Any) -> None:
        """Shut a used kernel down in the background: the result need not wait for it."""
        with self._lock:
            self._retiring.append(self._pool.submit(shutdown, km))

    def discard(self) -> None:
        """Shut down kernels started but not taken, and wait for retiring ones."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            retiring, self._retiring = self._retiring, []
        for future in pending:
            try:
                shutdown(future.result(timeout=BOOT_TIMEOUT_S))
            except Exception as err:  # noqa: BLE001 - closing anyway
                logger.debug("spare kernel: %s", err)
        concurrent.futures.wait(retiring, timeout=BOOT_TIMEOUT_S)

    def _start(self, cwd: Path) -> Any:
        from jupyter_client.manager import AsyncKernelManager

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


async def _boot(km: Any, cwd: Path, env: dict[str, str]) -> None:
    # What the kernel writes to its own stdout/stderr (C libraries, subprocesses) is
    # not ours to print: our stdout may carry the output payload.
    await km.start_kernel(
        cwd=str(cwd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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


def shutdown(km: Any) -> None:
    """Stop a kernel at once (its process group with it), and whatever it started that
    escaped the group: its notebook is saved."""
    try:
        asyncio.run(km.shutdown_kernel(now=True))
    except Exception as err:  # noqa: BLE001 - a kernel that will not die is killed below
        logger.warning("kernel shutdown: %s", err)
        kill(km)
    processes.kill_marked(private_dir(km).name)
    shutil.rmtree(private_dir(km), ignore_errors=True)


def kill(km: Any) -> None:
    """Kill the kernel's process group: the running cell ends, nbclient sees a dead kernel."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


class KernelExecutor(Executor):
    """Runs each payload on a fresh Jupyter kernel."""

    name = "kernel"
    papermill_engine = "nb2task-kernel"

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = KERNEL_NAME,
        language: str = "python",
    ) -> None:
        super().__init__(notebook_path, kernel_name, language)
        self.launcher = KernelLauncher(kernel_name)

    @property
    def keep_spare(self) -> bool:
        return self.launcher.keep_spare

    @keep_spare.setter
    def keep_spare(self, value: bool) -> None:
        self.launcher.keep_spare = value

    def prepare(self) -> None:
        if self.notebook_path is not None:
            self.launcher.prestart(self.notebook_path.parent)

    def close(self) -> None:
        self.launcher.discard()

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
        import nbformat
        import papermill
        from papermill.exceptions import PapermillExecutionError

        from ..errors import NotebookCellError
        from . import harvest, papermill_registry

        registry = papermill_registry()
        registry.use_schema_translator()

        stats: dict[str, Any] = {"engine": self.name}
        started = time.perf_counter()
        with self._session(cwd, limits, stats) as (engine_kwargs, emit_dir):
            try:
                executed = papermill.execute_notebook(
                    nbformat.from_dict(node),  # type: ignore[no-untyped-call]
                    str(output_path),
                    parameters=parameters,
                    engine_name=self.papermill_engine,
                    kernel_name=self.kernel_name,
                    language=self.language,
                    progress_bar=False,
                    log_output=log_output,
                    execution_timeout=limits.cell_timeout,
                    notebook_path=str(self.notebook_path or ""),
                    record_metadata=record_metadata,
                    **engine_kwargs,
                )
            except PapermillExecutionError as err:
                raise NotebookCellError(
                    err.ename, err.evalue, err.cell_index, err.exec_count, err.source
                ) from None
            found = harvest(executed, emit_dir)
        stats["seconds"] = round(time.perf_counter() - started, 4)
        self.history.append(stats)
        return Execution(executed, found["items"], stats, found["emit_calls"], found["stopped_at"])

    @contextlib.contextmanager
    def _session(
        self, cwd: Path, limits: Limits, stats: dict[str, Any]
    ) -> Iterator[tuple[dict[str, Any], Path]]:
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        from ..errors import NotebookDiedError, RunTimeoutError

        km = self.launcher.take(cwd)
        stats["pid"] = getattr(getattr(km.provisioner, "process", None), "pid", None)
        watchdog = threading.Timer(limits.timeout, self._time_up, (km,)) if limits.timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            yield {"km": km}, private_dir(km) / "emitted"
        except CellTimeoutError:
            raise RunTimeoutError(
                f"a notebook cell ran longer than {limits.cell_timeout:g} s"
            ) from None
        except DeadKernelError:
            if watchdog and watchdog.finished.is_set():
                raise RunTimeoutError(
                    f"the notebook ran longer than {limits.timeout:g} s"
                ) from None
            process = getattr(km.provisioner, "process", None)
            ended = describe_exit(process.poll() if process is not None else None)
            raise NotebookDiedError(f"the notebook's kernel died ({ended})") from None
        finally:
            if watchdog:
                watchdog.cancel()
            # The kernel and all it started, now: the run must leave nothing running.
            processes.kill_marked(private_dir(km).name)
            self.launcher.retire(km)

    @staticmethod
    def _time_up(km: Any) -> None:
        logger.error("run timeout: killing the notebook's kernel")
        kill(km)
