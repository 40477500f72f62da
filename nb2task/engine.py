"""Execute a notebook on a real Jupyter kernel, through papermill.

Kernels start in the background (``prestart``) so that one boots while the payload's
assets download and papermill imports; a warm process (Lambda, ``--jobs``) can keep a
fresh spare kernel ready for the next payload. Each payload gets its own kernel: no
state leaks from one run into the next.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import nbformat

from .errors import Nb2TaskError, NotebookCellError, RunTimeoutError

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"


class KernelLauncher:
    """Starts kernels off the main thread; hands out one per notebook run."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nb2task-kernel")
        self._pending: dict[Path, concurrent.futures.Future[Any]] = {}
        self._retiring: list[concurrent.futures.Future[Any]] = []
        self._lock = threading.Lock()
        self.keep_spare = False

    def prestart(self, cwd: Path) -> None:
        """Start a kernel for a notebook in ``cwd`` now, unless one is already starting."""
        with self._lock:
            if cwd not in self._pending:
                self._pending[cwd] = self._pool.submit(_start_kernel, cwd)

    def take(self, cwd: Path) -> Any:
        """A started kernel manager for ``cwd``; the caller shuts it down."""
        self.prestart(cwd)
        with self._lock:
            future = self._pending.pop(cwd)
        try:
            km = future.result()
        finally:
            if self.keep_spare:
                self.prestart(cwd)
        return km

    def retire(self, km: Any) -> None:
        """Shut a used kernel down in the background: the result need not wait for it."""
        with self._lock:
            self._retiring.append(self._pool.submit(shutdown, km))

    def discard(self) -> None:
        """Shut down kernels started but not taken, and wait for retiring ones (at exit)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            retiring, self._retiring = self._retiring, []
        for future in pending:
            try:
                shutdown(future.result(timeout=60))
            except Exception as err:  # noqa: BLE001 - exiting anyway
                logger.debug("spare kernel: %s", err)
        concurrent.futures.wait(retiring, timeout=60)


def _start_kernel(cwd: Path) -> Any:
    from jupyter_client.manager import AsyncKernelManager

    # IPC (unix sockets) rather than TCP: nothing listens on the network, and ipykernel
    # does not warn about unencrypted TCP on every run.
    # The socket path must be absolute: the kernel's cwd is not ours.
    sockets = tempfile.mkdtemp(prefix="nb2task-kernel-")
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME, transport="ipc", ip=os.path.join(sockets, "kernel")
    )
    asyncio.run(_boot(km, cwd))
    return km


# Run silently in a new kernel before it is handed out: no execution count, no output,
# no name bound in the notebook's namespace; the notebook's own imports then find
# these modules loaded. (Failures are ignored: the notebook will report its own.)
PREIMPORT = "[__import__('importlib').import_module(m) for m in ('nb2task.runtime', 'pystac')]"


async def _boot(km: Any, cwd: Path) -> None:
    await km.start_kernel(cwd=str(cwd))
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        msg_id = client.execute(PREIMPORT, silent=True, store_history=False)
        while True:
            reply = await client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    finally:
        client.stop_channels()


def shutdown(km: Any) -> None:
    """Stop a kernel at once: its notebook is already saved."""
    try:
        asyncio.run(km.shutdown_kernel(now=True))
    except Exception as err:  # noqa: BLE001 - a kernel that will not die is killed by the OS
        logger.warning("kernel shutdown: %s", err)
    shutil.rmtree(os.path.dirname(km.ip), ignore_errors=True)


launcher = KernelLauncher()
atexit.register(launcher.discard)


def execute(
    node: nbformat.NotebookNode,
    output_path: Path,
    parameters: dict[str, Any],
    cwd: Path,
    cell_timeout: float | None = None,
    timeout: float | None = None,
    log_output: bool = True,
) -> nbformat.NotebookNode:
    """Run ``node`` with ``parameters`` injected; the executed notebook is saved to
    ``output_path`` as it runs, and kept there whether the run succeeds or not.

    ``cell_timeout`` bounds each cell, ``timeout`` the whole run (the kernel is killed).
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    km = launcher.take(cwd)
    watchdog = threading.Timer(timeout, _kill, (km,)) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    try:
        executed: nbformat.NotebookNode = papermill.execute_notebook(
            node,
            str(output_path),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            language="python",
            progress_bar=False,
            log_output=log_output,
            cwd=str(cwd),
            execution_timeout=cell_timeout,
            km=km,
        )
        return executed
    except PapermillExecutionError as err:
        raise NotebookCellError(
            err.ename, err.evalue, err.cell_index, err.exec_count, err.source
        ) from None
    except CellTimeoutError as err:
        raise RunTimeoutError(f"a notebook cell ran longer than {cell_timeout:g} s") from err
    except DeadKernelError as err:
        if watchdog and watchdog.finished.is_set():
            raise RunTimeoutError(f"the notebook ran longer than {timeout:g} s") from None
        raise Nb2TaskError(f"the notebook's kernel died: {err}") from err
    finally:
        if watchdog:
            watchdog.cancel()
        launcher.retire(km)


def _kill(km: Any) -> None:
    """Kill the kernel process: the running cell ends and nbclient reports a dead kernel."""
    logger.error("run timeout: killing the notebook's kernel")
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None:
        process.kill()
