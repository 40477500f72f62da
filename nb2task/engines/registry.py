"""What papermill sees of nb2task: its two engines and its parameters translator.

Both engines are registered in papermill's engine registry (here, and as
``papermill.engine`` entry points), so ``papermill.execute_notebook(...,
engine_name="nb2task-fork")`` drives them: papermill injects the parameters, adds the
error banner and saves; the engines only run cells. This module stays light: papermill
imports it when it loads its entry points, and it must be imported after papermill:
use ``nb2task.engines.papermill_registry()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from papermill.engines import Engine, NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.log import logger as papermill_logger
from papermill.models import Parameter
from papermill.translators import PythonTranslator, papermill_translators

from .. import progress
from ..redact import appears_in, redact_notebook, secrets

if TYPE_CHECKING:
    from ..schema import ParameterSchema

logger = logging.getLogger(__name__)

FORK_ENGINE = "nb2task-fork"
KERNEL_ENGINE = "nb2task-kernel"


class SavingManager(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's execution manager, saving the notebook once per cell (when it ends)
    instead of twice, and cheaply: compact JSON (the C encoder; an indent would take
    Python's), no copy, no validation: ~0.3 ms, not ~3 ms. papermill writes the final
    notebook itself, validated, in nbformat's form."""

    _secrets: dict[str, str] | None = None

    def save(self, **kwargs: Any) -> None:
        # Secrets out first: papermill's own last write and the HTML use this notebook too.
        # The environment does not change during a run; a notebook is walked only when a
        # secret is in it (the walk costs ~1 ms a save, the test ~0.05).
        if self._secrets is None:
            self._secrets = secrets()
        text = json.dumps(self.nb, ensure_ascii=False)
        if self._secrets and appears_in(text, self._secrets):
            redact_notebook(self.nb, self._secrets)
            text = json.dumps(self.nb, ensure_ascii=False)
        if self.output_path:
            Path(self.output_path).write_text(text, encoding="utf-8")
        self.last_save_time = self.now()

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        # papermill's cell_start, minus its save: the cell's end saves.
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
        # papermill's cell_complete, parsing its own timestamp with the standard library
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
        self.save()
        if self.pbar:
            self.pbar.update(1)


class RecordingEngine(Engine):  # type: ignore[misc]
    """What nb2task's engines share: the saving manager, and the notebook's path (not
    the whole notebook, which papermill records when given a notebook object) in the
    executed notebook's metadata, with ``record_metadata`` (what the run was: payload,
    task, versions) added before the first save, so a failed run's record has it too."""

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


class KernelEngine(RecordingEngine, NBClientEngine):  # type: ignore[misc]
    """papermill's nbclient engine, with nb2task's saving and the kernel it is handed (``km``)."""


class ForkEngine(RecordingEngine):
    """papermill engine: runs the cells in a forked child (``nb2task.engines.cells``).

    Engine arguments (through ``papermill.execute_notebook``): ``child`` (a started
    ``cells.Child``, as a run leader passes it; without one, a warm parent is started
    for this run alone and forks it), ``run_cwd`` and ``run_env`` (for such a child),
    ``execution_timeout`` (seconds per cell), ``run_timeout`` (seconds the whole run may
    take), ``run_stats`` (a dict that receives the child's pid and private memory).
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
        child: Any = None,
        run_cwd: str | Path | None = None,
        run_env: dict[str, str] | None = None,
        run_timeout: float | None = None,
        run_stats: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        from contextlib import ExitStack

        from . import cells

        with ExitStack() as stack:
            if child is None:
                child = stack.enter_context(_child_of_a_new_warm_parent(run_cwd, run_env))
            cells.run_cells(
                nb_man,
                child,
                log_output=log_output,
                cell_timeout=execution_timeout,
                timeout=run_timeout,
                stats=run_stats if run_stats is not None else {},
            )
        return nb_man.nb


@contextmanager
def _child_of_a_new_warm_parent(
    cwd: str | Path | None, env: dict[str, str] | None
) -> Iterator[Any]:
    """A child forked for this run by a warm parent started for it (papermill running
    the engine outside nb2task: its own process may have threads, so it does not fork)."""
    import socket

    from .cells import RemoteChild
    from .zygote import ZygoteProcess

    zygote = ZygoteProcess()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        run_id, pid = zygote.start(
            "cells", theirs, cwd=str(cwd or os.getcwd()), env=dict(env or {})
        )
        theirs.close()
        assert pid is not None  # start() waited for the fork
        yield RemoteChild(zygote, ours, pid, run_id)
    finally:
        theirs.close()
        zygote.close()


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
