"""What papermill sees of nb2task: its two engines, the saving manager they share, and
the parameters translator.

Both engines are registered in papermill's engine registry (here, and as
``papermill.engine`` entry points), so ``papermill.execute_notebook(...,
engine_name="nb2task-fork")`` drives them on its own too: papermill injects the
parameters, adds the error banner and saves; the engines only run cells. This module
must be imported after papermill, which imports it while loading its entry points.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async, run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import Engine, NotebookExecutionManager, papermill_engines
from papermill.log import logger as papermill_logger
from papermill.models import Parameter
from papermill.translators import PythonTranslator, papermill_translators
from papermill.utils import merge_kwargs, remove_args

from .. import progress
from ..errors import OutputError
from ..paths import write_text_atomically
from ..redact import appears_in, redact_notebook, secrets

if TYPE_CHECKING:
    from ..schema import ParameterSchema

logger = logging.getLogger(__name__)

FORK_ENGINE = "nb2task-fork"
KERNEL_ENGINE = "nb2task-kernel"
INTERRUPT_GRACE_S = 3  # how long an interrupted cell has to report, when time is up


def write_notebook(nb: Any, path: str | Path, found_secrets: dict[str, str]) -> None:
    """Write the notebook as compact JSON, secrets redacted first, atomically: a reader
    (or an upload) sees the last whole save, never half of one; a save that fails (a full
    disk) leaves the last good one in place."""
    text = json.dumps(nb, ensure_ascii=False)
    # The walk costs ~1 ms a save; the test ~0.05: walk only when a secret is there.
    if found_secrets and appears_in(text, found_secrets):
        redact_notebook(nb, found_secrets)
        text = json.dumps(nb, ensure_ascii=False)
    try:
        write_text_atomically(path, text, mode=0o644)
    except OSError as err:  # a full disk, a quota: the run's own fault to report, once
        raise OutputError(
            f"cannot save the executed notebook to {path}: {err.strerror or err} "
            "(the last whole save is kept)"
        ) from None


class SavingManager(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's execution manager, saving the notebook once per cell (when it ends)
    instead of twice, and cheaply: compact JSON (the C encoder), no copy, no validation,
    atomically, secrets redacted (papermill's last write and the HTML use this notebook
    too)."""

    _secrets: dict[str, str] | None = None

    def save(self, **kwargs: Any) -> None:
        if self._secrets is None:
            self._secrets = secrets()  # the environment does not change during a run
        if self.output_path:
            write_notebook(self.nb, self.output_path, self._secrets)
        self.last_save_time = self.now()

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        # papermill's cell_start, minus its save (the cell's end saves), reporting progress.
        if self.log_output:
            papermill_logger.info(f"Executing Cell {(cell_index or 0) + 1:-<40}")
        if cell.cell_type == "code" and cell.source.strip():
            code = [c for c in self.nb.cells if c.cell_type == "code" and c.source.strip()]
            number = next((i for i, c in enumerate(code, 1) if c is cell), 0)
            progress.cell(number, len(code), cell.source)
        cell.metadata.papermill["start_time"] = self.now().isoformat()
        cell.metadata.papermill["status"] = self.RUNNING
        cell.metadata.papermill["exception"] = False

    def cell_complete(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        # papermill's cell_complete, reading its own timestamp with the standard library
        # (papermill's dateutil takes ~0.5 ms a cell).
        end_time = self.now()
        if self.log_output:
            papermill_logger.info(f"Ending Cell {(cell_index or 0) + 1:-<43}")
        metadata = cell.metadata.papermill
        metadata["end_time"] = end_time.isoformat()
        if metadata.get("start_time"):
            start_time = datetime.datetime.fromisoformat(metadata["start_time"])
            metadata["duration"] = (end_time - start_time).total_seconds()
        if metadata["status"] != self.FAILED:
            metadata["status"] = self.COMPLETED
        if cell.cell_type == "code":  # what else ran changed only times: the next save has them
            self.save()
        if self.pbar:
            self.pbar.update(1)


class RecordingEngine(Engine):  # type: ignore[misc]
    """What nb2task's engines share: the saving manager, the notebook's path in its
    metadata (not the whole notebook, which papermill records when given a notebook
    object), and ``record_metadata`` (what the run was: payload, task, versions) added
    before the first save, so a failed run's record has it too."""

    @classmethod
    def execute_notebook(
        cls,
        nb: Any,
        kernel_name: str,
        output_path: str | None = None,
        progress_bar: bool = False,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        notebook_path: str = "",
        record_metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if not isinstance(nb.metadata.papermill.get("input_path"), str):
            nb.metadata.papermill["input_path"] = notebook_path or None
        nb.metadata.update(record_metadata or {})
        nb_man = SavingManager(
            nb,
            output_path=output_path,
            progress_bar=False,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb


class ForkEngine(RecordingEngine):
    """papermill engine: the cells run in a child forked from a warm parent
    (``nb2task.engines.fork_client``).

    Engine arguments (through ``papermill.execute_notebook``): ``execution_timeout``
    (seconds per cell), ``run_timeout`` (seconds the whole run may take); from nb2task:
    ``child`` (the run's child, from the task's warm parent; without one, a warm parent
    is started for this run alone), ``stopping`` (why the run is being stopped, if it
    is), ``run_stats`` (receives the child's pid and private memory).
    """

    @classmethod
    def nb_kernel_name(cls, nb: Any, name: str | None = None) -> str:
        return name or nb.metadata.get("kernelspec", {}).get("name") or "python3"

    @classmethod
    def nb_language(cls, nb: Any, language: str | None = None) -> str:
        return language or "python"

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        execution_timeout: float | None = None,
        run_timeout: float | None = None,
        child: Any = None,
        stopping: Callable[[], BaseException | None] | None = None,
        run_stats: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        from .fork_client import ForkClient

        with contextlib.ExitStack() as stack:
            if child is None:
                child = stack.enter_context(_child_of_its_own(os.getcwd()))
            client = ForkClient(
                nb_man,
                child,
                log_output=log_output,
                cell_timeout=execution_timeout,
                timeout=run_timeout,
                stopping=stopping or (lambda: None),
            )
            try:
                client.execute()
            finally:
                child.kill()
                if run_stats is not None:
                    run_stats.update(
                        pid=child.pid,
                        private_kb=child.private_kb,
                        parent_threads=child.parent_threads,
                    )
        return nb_man.nb


@contextlib.contextmanager
def _child_of_its_own(cwd: str) -> Iterator[Any]:
    """A child forked by a warm parent started for this run (papermill running the engine
    outside nb2task)."""
    from .warm_parent import WarmParent

    parent = WarmParent()
    try:
        child = parent.fork()
        child.start(cwd, {})
        yield child
    finally:
        parent.close()


class BoundedOutputClient(PapermillNotebookClient):  # type: ignore[misc]
    """papermill's nbclient client, keeping in the notebook only what the record's limits
    allow, as each output arrives (``nb2task.record_limits``): both engines apply the
    kernel's messages with it, so nb2task never holds a flood, only its first part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from ..record_limits import OutputBudget

        super().__init__(*args, **kwargs)
        self.budget = OutputBudget.from_settings()

    def output(self, outs: list[Any], msg: dict[str, Any], display_id: Any, cell_index: int) -> Any:
        count = len(outs)
        out = super().output(outs, msg, display_id, cell_index)
        if out is None or not outs or outs[-1] is not out:
            return out  # an Output widget's (in its state), or nothing
        if len(outs) != count + 1:  # a delayed clear_output emptied the cell first
            self.budget.recount(outs[:-1], cell_index)
        return self.budget.admit(outs, cell_index, may_drop=not display_id)

    def clear_output(self, outs: list[Any], msg: dict[str, Any], cell_index: int) -> None:
        super().clear_output(outs, msg, cell_index)
        self.budget.recount(outs, cell_index)

    def _update_display_id(self, display_id: str, msg: dict[str, Any]) -> None:
        super()._update_display_id(display_id, msg)
        for cell_index, indices in self._display_id_map.get(display_id, {}).items():
            outputs = self.nb["cells"][cell_index]["outputs"]
            for index in indices:
                if index < len(outputs):
                    self.budget.bound_in_place(outputs, index, cell_index)


class SlicedPollingClient(BoundedOutputClient):
    """papermill's nbclient client, waiting for the kernel's messages a second at a time.

    nbclient's ``Output`` widget mimic sends its state on the shell channel while another
    task waits on that very socket for the cell's reply; ZeroMQ signals readiness by an
    edge, which the send can consume, and the waiting task then never wakes: the run hangs
    with client and kernel idle (nbclient#312). Waking each second to look again finds
    the reply that is there."""

    async def async_start_new_kernel_client(self) -> Any:
        client = await super().async_start_new_kernel_client()
        for channel in (client.shell_channel, client.iopub_channel):
            channel.get_msg = _in_slices(channel.get_msg)
        return client

    # nbclient binds its sync wrapper to its own coroutine: bind it to ours.
    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    async def _async_handle_timeout(self, timeout: int, cell: Any = None) -> Any:
        """A cell out of time ends as it does on a kernel nbclient owns (jupyter_client
        interrupts a kernel before it shuts it down): interrupted, its KeyboardInterrupt
        and traceback (where it was) in the cell; then nbclient's CellTimeoutError."""
        import asyncio
        import time

        if not self.interrupt_on_timeout and self.km is not None and cell is not None:
            await ensure_async(self.km.interrupt_kernel())
            deadline = time.monotonic() + INTERRUPT_GRACE_S
            while time.monotonic() < deadline and not any(
                o.get("output_type") == "error" for o in cell.get("outputs", [])
            ):
                await asyncio.sleep(0.05)  # nbclient's output task runs meanwhile
        return await super()._async_handle_timeout(timeout, cell)


def _in_slices(get_msg: Callable[..., Any], slice_s: float = 1.0) -> Callable[..., Any]:
    import asyncio
    import queue
    import time

    async def sliced(timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = slice_s if deadline is None else min(slice_s, deadline - time.monotonic())
            try:
                return await get_msg(timeout=max(0.0, wait))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0)

    return sliced


class KernelEngine(RecordingEngine):
    """papermill's nbclient engine, with nb2task's saving, the kernel it is handed
    (``km``), and a client that cannot miss the kernel's reply (``SlicedPollingClient``)."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        # As papermill's NBClientEngine, with our client.
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=papermill_logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        return SlicedPollingClient(nb_man, **final_kwargs).execute()


@lru_cache(maxsize=64)
def _schema(source: str) -> ParameterSchema:
    from ..schema import ParameterSchema  # here: stactask loads with it, papermill need not

    return ParameterSchema.from_source(source)


class SchemaTranslator(PythonTranslator):  # type: ignore[misc]
    """papermill's Python translator, inspecting parameters with ``ParameterSchema``."""

    @classmethod
    def inspect(cls, parameters_cell: Any) -> list[Parameter]:
        schema = _schema(parameters_cell.source)
        params = [Parameter(name, "str", "None", "") for name in sorted(schema.declared_reserved)]
        for p in schema.parameters:
            default = "None" if p.required else str(p.default) if p.computed else repr(p.default)
            params.append(Parameter(p.name, p.type_label, default, p.help))
        return params

    @classmethod
    def codify(cls, parameters: dict[str, Any], comment: str = "Parameters") -> str:
        lines = [cls.comment(comment)]
        lines += [cls.assign(name, cls.translate(value)) for name, value in parameters.items()]
        return "\n".join(lines) + "\n"


def use_schema_translator() -> None:
    """Read Python parameters cells with nb2task's schema (called when nb2task runs a
    notebook; papermill's own behaviour is left alone until then)."""
    papermill_translators.register("python", SchemaTranslator)


def register() -> None:
    """Register the engines (if papermill has not loaded them from the entry points)."""
    papermill_engines.register(FORK_ENGINE, ForkEngine)
    papermill_engines.register(KERNEL_ENGINE, KernelEngine)


register()
