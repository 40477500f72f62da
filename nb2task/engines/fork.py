"""The fork engine, seen from the task: each payload runs in a child forked from a warm
parent, started once and kept.

The task's process drives papermill (``nb2task.engines.driver``) against the child, as
nbclient drives a kernel (``nb2task.engines.fork_client``): it alone writes the executed
notebook. User code runs only in the child, so it can neither corrupt the record nor leak
into the next payload (globals, patched modules, environment, ``sys.modules``, working
directory).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .executor import Execution, Executor, Limits
from .fork_client import Child, ChildDidNotStart
from .warm_parent import WarmParent, WarmParentGone

if TYPE_CHECKING:
    from papermill.exceptions import PapermillExecutionError

    from ..errors import NotebookCellError

logger = logging.getLogger(__name__)


class ForkExecutor(Executor):
    """Runs each payload in a child forked from a warm parent."""

    name = "fork"

    def __init__(
        self,
        notebook_path: Path | None = None,
        kernel_name: str = "python3",
        language: str = "python",
        once: bool = False,
    ) -> None:
        super().__init__(notebook_path, kernel_name, language, once)
        self._parent: WarmParent | None = None
        self._lock = threading.Lock()
        self._children: set[Child] = set()  # in flight

    def prepare(self) -> None:
        self._warm_parent()
        # The driver's imports (papermill, nbformat), here, while the warm parent warms up.
        from . import driver  # noqa: F401

    def _warm_parent(self) -> WarmParent:
        """The warm parent; a new one if there is none yet or the last one died."""
        with self._lock:
            if self._parent is not None and not self._parent.alive:
                logger.warning(
                    "the warm parent died (%s): starting a new one", self._parent.death_notice()
                )
                self._parent.close()
                self._parent = None
            if self._parent is None:
                self._parent = WarmParent(self.notebook_path, once=self.once)
            return self._parent

    @property
    def warm_info(self) -> dict[str, Any]:
        """What the warm parent reported when ready (imports, threads, seconds)."""
        info = self._parent.info if self._parent is not None else None
        return info.to_wire() if info is not None else {}

    def close(self) -> None:
        with self._lock:
            parent, self._parent = self._parent, None
        if parent is not None:
            parent.close()

    def _kill_runs(self) -> None:
        with self._lock:
            children = list(self._children)
        for child in children:
            child.warm_parent.kill(child.run_id)

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

        from ..harvest import emit_folder, harvest
        from ..runtime import EMIT_DIR_ENV
        from . import driver, papermill_engines

        started = time.perf_counter()
        stats: dict[str, Any] = {"engine": self.name}
        with emit_folder() as emit_dir:
            child = self._child(str(cwd), {EMIT_DIR_ENV: str(emit_dir)})
            stats["fork_ms"] = round((time.perf_counter() - started) * 1000, 2)
            with self._lock:
                self._children.add(child)
            try:
                executed = driver.execute(
                    node,
                    parameters,
                    engine_name=papermill_engines.FORK_ENGINE,
                    output_path=output_path,
                    notebook_path=self.notebook_path,
                    kernel_name=self.kernel_name,
                    language=self.language,
                    record_metadata=record_metadata,
                    log_output=log_output,
                    cell_timeout=limits.cell_timeout,
                    run_timeout=limits.timeout,
                    child=child,
                    stopping=self.stopping,
                    run_stats=stats,
                )
            except PapermillExecutionError as err:
                raise cell_error(err) from None
            finally:
                with self._lock:
                    self._children.discard(child)
            found = harvest(executed, emit_dir)
        stats["seconds"] = round(time.perf_counter() - started, 4)
        self.history.append(stats)
        return Execution(executed, found["items"], stats, found["emit_calls"], found["stopped_at"])

    def _child(self, cwd: str, env: dict[str, str]) -> Child:
        """A started child; a dead warm parent is replaced once (no notebook code ran)."""
        from ..errors import NotebookDiedError

        for attempt in range(2):
            parent = self._warm_parent()
            try:
                child = parent.fork()
                child.start(cwd, env)
                return child
            except (WarmParentGone, ChildDidNotStart) as err:
                if attempt or parent.alive:
                    raise NotebookDiedError(
                        f"the notebook's process did not start: {err}"
                    ) from None
        raise AssertionError("unreachable")


def cell_error(err: PapermillExecutionError) -> NotebookCellError:
    """papermill's error for a cell that raised, as nb2task's."""
    from ..errors import NotebookCellError

    return NotebookCellError(err.ename, err.evalue, err.cell_index, err.exec_count, err.source)
