"""The executor seam: how a task gets its notebook run, whatever the engine.

An ``Executor`` is held by the task: ``prepare`` (warm up ahead of the first payload),
``execute`` (one payload), ``interrupt`` (stop every run in flight), ``close``. Both
implementations run the notebook through the same papermill driver
(``nb2task.engines.driver``) in the task's own process; they differ in what runs the
cells: a child forked from a warm parent, or a Jupyter kernel.
"""

from __future__ import annotations

import collections
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Limits:
    """Time limits of one run, in seconds (None: no limit)."""

    cell_timeout: float | None = None
    timeout: float | None = None


@dataclass
class Execution:
    """One run of a notebook: the executed notebook and what it emitted."""

    notebook: Any  # the executed nbformat.NotebookNode
    items: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    emit_calls: int = 0  # how many times emit() was called (an empty list counts)
    stopped_at: int | None = None  # the cell ("In [n]") that called sys.exit(0), if one did


class Executor(ABC):
    """Runs a notebook on one payload after another; the task holds one."""

    name: ClassVar[str]

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = "python3",
        language: str = "python",
        once: bool = False,
    ) -> None:
        self.notebook_path = notebook_path
        self.kernel_name = kernel_name
        self.language = language
        self.once = once  # one payload only: warm up for it, not for the ones after
        # The stats hook: each run's engine, seconds, pid and (with
        # NB2TASK_MEMORY_STATS) private memory, the last hundred, for the bench.
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self._stop: BaseException | None = None

    def prepare(self) -> None:  # noqa: B027 - warming up is optional
        """Start warming up now, so that the first payload does not wait (non-blocking)."""

    def close(self) -> None:  # noqa: B027 - an executor may hold nothing
        """Release what the executor holds (processes, kernels)."""

    def interrupt(self, reason: BaseException) -> None:
        """Stop every run in flight: each ends with ``reason`` raised, its record saved.
        (For other threads' runs; a run on the interrupted thread ends by itself.)"""
        self._stop = reason
        self._kill_runs()

    def _kill_runs(self) -> None:  # noqa: B027 - nothing to kill by default
        """Kill the notebook's processes of every run in flight."""

    def stopping(self) -> BaseException | None:
        """Why runs are being stopped (``interrupt``), if they are: an error of its own
        for each run to raise (one exception object must not be raised by two threads)."""
        stop = self._stop
        return None if stop is None else type(stop)(*stop.args)

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
        metadata. Raise NotebookCellError (a cell raised), RunTimeoutError,
        NotebookDiedError, or the interrupt that stopped it."""


def describe_exit(returncode: int | None) -> str:
    """How a process ended, in words (``returncode`` as subprocess gives it: a negative
    number is the signal that killed it)."""
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
