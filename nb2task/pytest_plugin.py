"""nb2task's pytest plugin (entry point ``pytest11``): golden fixtures as test items.

Wherever pytest collects, each ``fixtures/{success,failure}/<case>/in.json`` becomes a
test of the notebook beside ``fixtures/``, and each
``tests/fixtures/payloads/{success,failure}/<case>/in.json`` (cirrus-task-example's layout)
a test of the notebook beside ``tests/``, if there is one. Each runs as ``nb2task test``
runs it (one warm runner per notebook for the session): a task repository's CI is then one
``pytest`` call. ``--nb2task-update`` rewrites the goldens; ``-p no:nb2task`` turns the
plugin off.
This module is imported by every pytest run where nb2task is installed: it stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import STACTASK_LEGACY_WARNINGS

if TYPE_CHECKING:
    from .goldens import Case, GoldenRunner

_RUNNERS = pytest.StashKey[dict[Path, "GoldenRunner"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nb2task", "nb2task golden fixtures")
    group.addoption(
        "--nb2task-update",
        action="store_true",
        help="write each case's out.json / exception.txt from this run",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUNNERS] = {}
    # stactask warns about payloads' legacy keys when nb2task reads them: not the task's
    # business. pytest replaces the warning filters per test, so nb2task's own is repeated.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:stactask.*")
    config.addinivalue_line(
        "filterwarnings", f"ignore:{STACTASK_LEGACY_WARNINGS}:DeprecationWarning"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    for runner in config.stash.get(_RUNNERS, {}).values():
        runner.close()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    # Cheap checks first: this hook sees every file pytest walks past.
    if file_path.name != "in.json" or file_path.parent.parent.name not in ("success", "failure"):
        return None
    from .goldens import case_of

    if case_of(file_path) is None:
        return None
    collector: pytest.Collector = GoldenFile.from_parent(parent, path=file_path)
    return collector


class GoldenFile(pytest.File):
    """A case's ``in.json``: one test item."""

    def collect(self) -> Iterator[pytest.Item]:
        from .goldens import Case

        case = Case(self.path.parent)
        yield GoldenItem.from_parent(self, name=case.name, case=case)


class GoldenFailure(Exception):
    """A golden case did not pass; its message is what differs."""


class GoldenItem(pytest.Item):
    """One golden case of one notebook."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from .goldens import GoldenRunner, notebook_for

        notebook = notebook_for(self.case.folder.parent.parent).resolve()
        runners = self.config.stash[_RUNNERS]
        if notebook not in runners:
            runners[notebook] = GoldenRunner(notebook)
        update = bool(self.config.getoption("nb2task_update"))
        outcome = runners[notebook].run(self.case, update=update)
        if not outcome.passed:
            logs = [f"log: {line}" for line in outcome.logs[-8:]]
            raise GoldenFailure(
                "\n".join([f"{notebook.name}: {self.case.name}", *outcome.problems, *logs])
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .errors import Nb2TaskError

        if isinstance(excinfo.value, GoldenFailure | Nb2TaskError):
            return str(excinfo.value)  # a readable difference, or a layout problem
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"nb2task golden case {self.case.name}"
