"""The executor seam: how a task gets its notebook run, whatever the engine.

An ``Executor`` is held by the task: ``prepare`` (warm up ahead of the first payload),
``execute`` (one payload), ``close``. Each implementation drives a papermill engine
registered under its own name, so papermill still injects the parameters, adds the
error banner and saves the executed notebook; ``Execution`` is what a run gives back.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..runtime import EMIT_DIR_ENV

logger = logging.getLogger(__name__)

__all__ = ["EMIT_DIR_ENV", "Execution", "Executor", "Limits", "choose_engine", "create_executor"]


@dataclass(frozen=True)
class Limits:
    """Time limits of one run, in seconds (None: no limit)."""

    cell_timeout: float | None = None
    timeout: float | None = None


@dataclass
class Execution:
    """One run of a notebook: the executed notebook and the items it emitted."""

    notebook: Any  # the executed nbformat.NotebookNode (None where it stayed elsewhere)
    items: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    emit_calls: int = 0  # how many times emit() was called (an empty list counts)
    stopped_at: int | None = None  # the cell ("In [n]") that called sys.exit(0), if one did


class Executor(ABC):
    """Runs a notebook on one payload after another; the task holds one."""

    name: ClassVar[str]
    papermill_engine: ClassVar[str]

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = "python3",
        language: str = "python",
    ) -> None:
        self.notebook_path = notebook_path
        self.kernel_name = kernel_name
        self.language = language
        # The last runs' stats (engine, seconds, pids, private memory): for the bench.
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)

    def prepare(self) -> None:  # noqa: B027 - warming up is optional
        """Start warming up now, so that the first payload does not wait (non-blocking)."""

    def close(self) -> None:  # noqa: B027 - an executor may hold nothing
        """Release what the executor holds (processes, kernels)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def execute(
        self,
        node: Any,
        parameters: dict[str, Any],
        *,
        output_path: Path,
        cwd: Path,
        limits: Limits = Limits(),
        log_output: bool = True,
        record_metadata: dict[str, Any] | None = None,
    ) -> Execution:
        """Run ``node`` (the notebook as JSON) with ``parameters`` injected, in ``cwd``.
        The executed notebook is saved to ``output_path`` after every cell, and kept
        there whether the run succeeds or not; ``record_metadata`` is added to its
        metadata. Raise NotebookCellError (a cell raised),
        RunTimeoutError, NotebookDiedError or InvalidItemError (what it emitted)."""


def papermill_registry() -> Any:
    """``nb2task.engines.registry``, the papermill side, loaded after papermill itself:
    papermill loads that module from its engine entry points while it initialises, so
    importing the module first would find it half-defined."""
    import papermill  # noqa: F401 - first, see above

    from . import registry

    return registry


@contextlib.contextmanager
def emit_folder() -> Iterator[Path]:
    """A private folder for one run's emitted items, removed after the harvest."""
    path = Path(tempfile.mkdtemp(prefix="nb2task-emit-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def harvest(node: Any, emit_dir: Path | None) -> dict[str, Any]:
    """What a run left in its executed notebook: the emitted ``items``, the number of
    ``emit_calls``, and the cell a ``sys.exit(0)`` stopped it at (``stopped_at``)."""
    calls = sum(
        1
        for cell in node.cells
        for output in cell.get("outputs", [])
        if isinstance(output.get("data", {}).get(_emit_mimetype()), dict)
    )
    return {
        "items": read_emitted(node, emit_dir),
        "emit_calls": calls,
        "stopped_at": stopped_at(node),
    }


def stopped_at(node: Any) -> int | None:
    """The cell whose ``sys.exit(0)`` ended the run early (papermill counts that as
    success and stops), as its execution count; None if none did."""
    for cell in node.cells:
        for output in cell.get("outputs", []):
            if (
                output.get("output_type") == "error"
                and output.get("ename") == "SystemExit"
                and output.get("evalue") in ("", "0", "None")
            ):
                return int(cell.get("execution_count") or 0)
    return None


def _emit_mimetype() -> str:
    from ..runtime import EMIT_MIMETYPE

    return EMIT_MIMETYPE


def read_emitted(node: Any, emit_dir: Path | None) -> list[dict[str, Any]]:
    """Every item ``nb2task.emit`` published in the executed notebook, in order: inline,
    or (in a task run) from the file the output names in ``emit_dir``."""
    from ..errors import InvalidItemError
    from ..runtime import EMIT_MIMETYPE, EMITTED_FILE

    items: list[dict[str, Any]] = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(EMIT_MIMETYPE)
            if not isinstance(data, dict):
                continue
            if "items" in data:
                items.extend(data["items"])
                continue
            name = str(data.get("file", ""))
            if emit_dir is None or not EMITTED_FILE.fullmatch(name):
                raise InvalidItemError(f"emitted items at {name!r} are not where nb2task put them")
            try:
                document = json.loads((emit_dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InvalidItemError(f"cannot read the emitted items {name}: {err}") from None
            if not isinstance(document, dict) or not isinstance(document.get("items"), list):
                raise InvalidItemError(f"the emitted items file {name} was changed")
            items.extend(document["items"])
    return items


ENGINES = ("fork", "kernel")


def describe_exit(returncode: int | None) -> str:
    """How a process ended, in words (``returncode`` as subprocess gives it: a negative
    number is the signal that killed it)."""
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def default_engine() -> str:
    """``fork`` where processes can fork (Linux), else ``kernel``."""
    import os
    import sys

    return "fork" if hasattr(os, "fork") and sys.platform.startswith("linux") else "kernel"


def choose_engine(requested: str | None, setting: str | None, kernelspec: dict[str, Any]) -> str:
    """The engine for a notebook: asked for (``--engine``), else its metadata setting,
    else ``kernel`` for a kernel that is not Python, else the default."""
    for name in (requested, setting):
        if name:
            if name not in ENGINES:
                from ..errors import UsageError

                raise UsageError(f"unknown engine {name!r} (choose from: {', '.join(ENGINES)})")
            return name
    language = str(kernelspec.get("language") or "python").lower()
    return default_engine() if language == "python" else "kernel"


def create_executor(name: str, notebook_path: Path | None, kernelspec: dict[str, Any]) -> Executor:
    """An executor of the named engine for the notebook at ``notebook_path``."""
    kernel_name = str(kernelspec.get("name") or "python3")
    language = str(kernelspec.get("language") or "python")
    if name == "fork":
        from .fork import ForkExecutor

        return ForkExecutor(notebook_path, kernel_name, language)
    from .kernel import KernelExecutor

    return KernelExecutor(notebook_path, kernel_name, language)
