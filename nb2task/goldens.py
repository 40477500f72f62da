"""Golden fixtures: a notebook task's test cases, in either of two layouts::

    fixtures/{success,failure}/<case>/                 beside the notebook (``nb2task new``)
    tests/fixtures/payloads/{success,failure}/<case>/  cirrus-task-example's, the notebook at
                                                       the repository's root

and in each case folder::

    in.json       the input payload
    out.json      the expected output payload (a success)
    exception.txt a regex searched in the error's message (a failure), as
                  cirrus-task-example's ``pytest.raises(Exception, match=...)`` does; a first
                  line ``# match: last-line`` searches the whole last error line instead
    params.yaml   (optional) parameters, as ``run -f``

and ``ignore.txt`` (optional) beside ``success/`` and ``failure/``: more volatile keys, one
a line. A case with an ``exception.txt`` expects a failure, one with an ``out.json`` an
output (as cirrus-task-example's tests decide); one with neither, what its folder says.

Each case runs as ``run --local`` would, in a folder of its own, through one warm
runner. Outputs are compared after ``normalise``: timestamps and other volatile keys
masked, local paths written relative to the case, the notebook or the work folder, the
record's links dropped; numbers compare by value (``1`` is ``1.0``, as in JSON).
``nb2task test`` and the pytest plugin (``nb2task.pytest_plugin``) both use
``GoldenRunner``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .errors import UsageError, error_line

FIXTURES = "fixtures"
# Where a task's fixtures may be, from the notebook's folder: nb2task's layout, then
# cirrus-task-example's (tests/fixtures/payloads/ in the repository a notebook is the task of).
LAYOUTS = (Path(FIXTURES), Path("tests", FIXTURES, "payloads"))
KINDS = ("success", "failure")
INPUT, OUTPUT, EXCEPTION, PARAMS, IGNORE = (
    "in.json",
    "out.json",
    "exception.txt",
    ("params.yaml", "params.yml", "params.json"),
    "ignore.txt",
)
# Keys whose values change from run to run, wherever they appear in the output.
VOLATILE = frozenset({"created", "updated", "processing:datetime"})
MASK = "<volatile>"
MAX_DIFFERENCES = 20
# How long an exception.txt pattern may take to match (a fixture is not trusted code).
MATCH_TIMEOUT_S = 2
# What an exception.txt pattern is searched in: the error's message (cirrus-task-example's
# meaning, the default) or the whole last error line, ``dotted.ErrorName: message``.
MESSAGE, LAST_LINE = "message", "last-line"
MATCH_MODES = (MESSAGE, LAST_LINE)
_MATCH_HEADER = re.compile(r"#\s*match:\s*(\S*)\s*")


@dataclass(frozen=True)
class Case:
    """One golden case: ``<kind>/<name>``, expecting an output or a failure."""

    folder: Path

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def root(self) -> Path:
        """The fixtures folder the case is in (holding ``success/`` and ``failure/``)."""
        return self.folder.parent.parent

    @property
    def expects_failure(self) -> bool:
        # As cirrus-task-example's tests decide: the golden file present says, else the folder.
        if (self.folder / EXCEPTION).is_file():
            return True
        if (self.folder / OUTPUT).is_file():
            return False
        return self.folder.parent.name == "failure"

    @property
    def golden(self) -> Path:
        return self.folder / (EXCEPTION if self.expects_failure else OUTPUT)

    @property
    def parameters(self) -> dict[str, Any]:
        from .schema import read_parameters_file

        for name in PARAMS:
            if (self.folder / name).is_file():
                return read_parameters_file(self.folder / name)
        return {}


@dataclass(frozen=True)
class Expectation:
    """An ``exception.txt``: its pattern, and what it is searched in (``MATCH_MODES``)."""

    pattern: str
    mode: str = MESSAGE

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """The expectation ``text`` says; ValueError if its ``# match:`` line names no mode."""
        first, _, rest = text.strip().partition("\n")
        header = _MATCH_HEADER.fullmatch(first.strip())
        if header is None:
            return cls(text.strip())  # read as cirrus-task-example reads it: stripped
        if header[1] not in MATCH_MODES:
            raise ValueError(
                f"its first line {first.strip()!r} names no way to match: "
                f"'# match: {MESSAGE}' (the default) or '# match: {LAST_LINE}'"
            )
        return cls(rest.strip(), header[1])

    def format(self) -> str:
        """The file's text: the pattern, after a ``# match:`` line unless the default."""
        header = "" if self.mode == MESSAGE else f"# match: {self.mode}\n"
        return f"{header}{self.pattern}\n"

    @property
    def searched_in(self) -> str:
        return "the error's message" if self.mode == MESSAGE else "the last error line"


@dataclass
class Outcome:
    """What running a case gave: passed or not, and why not, in readable lines."""

    case: Case
    passed: bool
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    updated: bool = False
    logs: list[str] = field(default_factory=list)


def fixture_roots(notebook: Path) -> list[Path]:
    """The fixtures folders of a notebook that exist, in ``LAYOUTS`` order."""
    folder = notebook.resolve().parent
    return [folder / layout for layout in LAYOUTS if (folder / layout).is_dir()]


def task_folder(fixtures: Path) -> Path:
    """The folder of the notebook whose fixtures folder ``fixtures`` is (``LAYOUTS``)."""
    for layout in sorted(LAYOUTS, key=lambda layout: -len(layout.parts)):
        if fixtures.parts[-len(layout.parts) :] == layout.parts:
            return Path(*fixtures.parts[: -len(layout.parts)])
    return fixtures.parent


def case_of(in_json: Path) -> Case | None:
    """The case whose ``in.json`` this is, if it is in a fixtures layout (``LAYOUTS``);
    in cirrus-task-example's layout, only where a notebook is at the repository's root
    (else the fixtures are a hand-written task's, its own tests' business)."""
    case = Case(in_json.parent)
    if in_json.name != INPUT or case.folder.parent.name not in KINDS:
        return None
    folder = task_folder(case.root)
    if folder == case.root.parent:  # nb2task's layout: the root must be named fixtures
        return case if case.root.name == FIXTURES else None
    return case if notebook_candidates(folder) else None


def find_cases(fixtures: Path, selected: str | None = None) -> list[Case]:
    """Every case under ``fixtures`` (those whose name contains ``selected``), sorted;
    UsageError if one leads out of the tree (``check_case``)."""
    cases = [
        Case(entry.parent)
        for kind in KINDS
        for entry in sorted((fixtures / kind).glob(f"*/{INPUT}"))
    ]
    cases = [c for c in cases if selected is None or selected in c.name]
    for case in cases:
        check_case(case, fixtures)
    return cases


def in_tree(path: Path, root: Path) -> bool:
    """Whether ``path``, its symlinks followed, is inside ``root`` (resolved too)."""
    return path.resolve().is_relative_to(root.resolve())


def check_case(case: Case, fixtures: Path) -> None:
    """UsageError if the case folder or one of its files is a symlink out of ``fixtures``:
    a fixture tree is data (a clone, a pull request), and ``--update`` writes into it."""
    names = (INPUT, OUTPUT, EXCEPTION, *PARAMS)
    for path in (case.folder, *(case.folder / name for name in names)):
        if (path.exists() or path.is_symlink()) and not in_tree(path, fixtures):
            raise UsageError(
                f"golden case {case.name}: {path} leads out of {fixtures} (a symlink): "
                "refusing to read or write it"
            )


def task_cases(path: Path, selected: str | None = None) -> tuple[Path, list[Case]]:
    """The notebook at ``path`` (or the one in the folder ``path``) and its cases, in
    every layout it has (those whose name contains ``selected``); UsageError if none."""
    notebook = notebook_in(path) if path.is_dir() else path
    if not notebook.is_file():
        raise UsageError(f"no such notebook: {notebook}")
    cases = [case for root in fixture_roots(notebook) for case in find_cases(root, selected)]
    if not cases:
        folder = notebook.resolve().parent
        raise UsageError(
            f"no cases for {notebook.name} in {folder}: a case is a folder "
            f"{FIXTURES}/success/<case>/ (or failure/) with an in.json, or the same under "
            "tests/fixtures/payloads/ as cirrus-task-example lays them (`nb2task new` makes "
            "a task folder with some)"
        )
    return notebook, cases


def notebook_for(fixtures: Path) -> Path:
    """The notebook a fixtures folder belongs to: the one notebook of ``task_folder``."""
    return notebook_in(task_folder(fixtures), fixtures)


def notebook_in(folder: Path, fixtures: Path | None = None) -> Path:
    """The one notebook in ``folder``; UsageError if there is none, or several."""
    candidates = notebook_candidates(folder)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        whose = f"{fixtures} belongs to the one notebook in {folder}, and " if fixtures else ""
        raise UsageError(
            f"{whose}{folder} has {len(candidates)} notebook(s) ({found}): keep one task "
            "notebook per folder"
        )
    return candidates[0]


def notebook_candidates(folder: Path) -> list[Path]:
    """The notebooks in ``folder``: ``.ipynb`` files (not executed ones) and jupytext
    percent ``.py`` files with a parameters cell."""
    return [p for p in sorted(folder.glob("*.ipynb")) if not p.name.endswith(".executed.ipynb")] + [
        p for p in sorted(folder.glob("*.py")) if _is_percent_notebook(p)
    ]


def _is_percent_notebook(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return "# %%" in text and "parameters" in text


def ignored_keys(fixtures: Path) -> frozenset[str]:
    """The volatile keys: nb2task's, and those listed in ``fixtures/ignore.txt``."""
    path = fixtures / IGNORE
    if not path.is_file():
        return VOLATILE
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return VOLATILE | {line for line in lines if line}


def normalise(document: Any, places: dict[str, str], volatile: frozenset[str] = VOLATILE) -> Any:
    """``document`` as golden files keep it: the values of ``volatile`` keys masked, the
    folders in ``places`` (path -> placeholder) replaced in every string, assets that are
    the run's record left out."""
    from .record import RECORD_ROLE

    if isinstance(document, dict):
        kept = {}
        for key, value in document.items():
            if isinstance(value, dict) and RECORD_ROLE in (value.get("roles") or []):
                continue
            kept[key] = MASK if key in volatile else normalise(value, places, volatile)
        return kept
    if isinstance(document, list):
        return [normalise(value, places, volatile) for value in document]
    if isinstance(document, str):
        for path, placeholder in sorted(places.items(), key=lambda p: -len(p[0])):
            document = document.replace(f"file://{path}", placeholder).replace(path, placeholder)
        return document
    return document


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """What differs between two JSON documents, one readable line per place."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = []
        for key in [*expected, *(k for k in actual if k not in expected)]:
            place = f"{where}.{key}" if re.fullmatch(r"[\w:-]+", key) else f"{where}[{key!r}]"
            if key not in actual:
                lines.append(f"{place.lstrip('.')}: missing (expected {_short(expected[key])})")
            elif key not in expected:
                lines.append(f"{place.lstrip('.')}: not expected (got {_short(actual[key])})")
            else:
                lines += differences(expected[key], actual[key], place)
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        lines = []
        for index in range(max(len(expected), len(actual))):
            place = f"{where}[{index}]"
            if index >= len(actual):
                lines.append(f"{place.lstrip('.')}: missing (expected {_short(expected[index])})")
            elif index >= len(expected):
                lines.append(f"{place.lstrip('.')}: not expected (got {_short(actual[index])})")
            else:
                lines += differences(expected[index], actual[index], place)
        return lines
    if expected == actual and _json_type(expected) == _json_type(actual):
        return []
    place = where.lstrip(".") or "(the document)"
    return [f"{place}: expected {_short(expected)}, got {_short(actual)}"]


def _json_type(value: Any) -> str:
    """JSON's type of a value: ``1`` and ``1.0`` are both numbers, ``true`` is not one."""
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else type(value).__name__


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GoldenRunner:
    """Runs the cases of one notebook through one warm runner."""

    def __init__(self, notebook: Path, engine: str | None = None) -> None:
        from .runner import Runner, RunOptions

        self.notebook = notebook.resolve()
        self.volatile = VOLATILE  # each case adds its fixtures folder's ignore.txt
        engine = engine or settings.current().engine
        self.options = RunOptions(upload=False, save_workdir=True, engine=engine)
        self.runner = Runner(self.notebook, self.options)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> GoldenRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, case: Case, update: bool = False) -> Outcome:
        """Run ``case``, compare with its golden file (or write it, if ``update``)."""
        from .failure import context_lines
        from .publish import UrlOutput

        check_case(case, case.root)  # the pytest plugin makes its cases itself
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="nb2task-golden-"))
        places = {
            str(workdir.resolve()): "{workdir}",
            str(case.folder.resolve()): "{case}",
            str(self.notebook.parent): "{notebook}",
        }
        volatile = self.volatile | ignored_keys(case.root)
        output: dict[str, Any] | None = None
        error: Exception | None = None
        outcome = Outcome(case, False)
        try:
            with _captured_logs() as logs:
                try:
                    options = self.options.replace(
                        workdir=workdir,
                        parameter_values=case.parameters,
                        parameter_values_from=f"{case.name}/params",
                    )
                    output = self.runner.run(
                        case.folder / INPUT, UrlOutput(workdir / "out.json"), options=options
                    )
                except Exception as err:  # noqa: BLE001 - the case says whether it should fail
                    error = err
            outcome = Outcome(case, True, logs=logs)
            if error is not None:
                failure = Failure(
                    normalise(error_line(error), places), normalise(own_message(error), places)
                )
                self._judge_failure(outcome, failure, context_lines(error), update)
            else:
                self._judge_output(outcome, normalise(output, places, volatile), volatile, update)
        finally:
            if error is None or outcome.passed:  # a failed case keeps its record
                shutil.rmtree(workdir, ignore_errors=True)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _judge_output(
        self, outcome: Outcome, actual: Any, volatile: frozenset[str], update: bool
    ) -> None:
        case = outcome.case
        if case.expects_failure:
            if update:
                return self._fail(outcome, "the run succeeded: a failure case cannot be updated")
            expected = _expectation(case.golden)
            wanted = f" matching {expected.pattern!r}" if isinstance(expected, Expectation) else ""
            return self._fail(outcome, f"expected a failure{wanted}, but the run succeeded")
        if update:
            _write(case.golden, json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
            outcome.updated = True
            return None
        if not case.golden.is_file():
            return self._fail(outcome, f"no {OUTPUT} yet: `nb2task test --update` records it")
        try:
            expected = normalise(json.loads(_read(case.golden)), {}, volatile)
        except ValueError as err:
            return self._fail(outcome, f"{case.golden} is not JSON: {err}")
        found = differences(expected, actual)
        if found:
            shown = found[:MAX_DIFFERENCES]
            more = len(found) - len(shown)
            self._fail(
                outcome,
                f"the output payload differs from {OUTPUT} ({len(found)} difference(s)):",
                *[f"  {line}" for line in shown],
                *([f"  ... and {more} more"] if more > 0 else []),
                "(`nb2task test --update`, or `pytest --nb2task-update`, accepts the new output)",
            )
        return None

    def _judge_failure(
        self, outcome: Outcome, failure: Failure, context: list[str], update: bool
    ) -> None:
        case = outcome.case
        if not case.expects_failure:
            return self._fail(outcome, f"the run failed: {failure.line}", *context)
        expected = _expectation(case.golden)
        if update:
            mode = expected.mode if isinstance(expected, Expectation) else MESSAGE
            _write(case.golden, Expectation(exact_pattern(failure.text(mode)), mode).format())
            outcome.updated = True
            return None
        if expected is None:
            return self._fail(outcome, f"no {EXCEPTION} yet: `nb2task test --update` records it")
        if isinstance(expected, str):
            return self._fail(outcome, f"{case.golden}: {expected}")
        searched = failure.text(expected.mode)
        try:
            matched = bounded_search(expected.pattern, searched)
        except re.error as err:
            return self._fail(outcome, f"{case.golden} is not a valid regex: {err}")
        except MatchError as err:
            return self._fail(outcome, f"cannot match {case.golden}: {err}")
        except TimeoutError:
            return self._fail(
                outcome,
                f"{EXCEPTION}'s pattern took over {MATCH_TIMEOUT_S:g} s to match "
                f"{expected.searched_in} (catastrophic backtracking?): {expected.pattern!r}",
                f"  the error line: {failure.line}",
            )
        if not matched:
            self._fail(outcome, *mismatch(expected, failure))
        return None

    @staticmethod
    def _fail(outcome: Outcome, *problems: str) -> None:
        outcome.passed = False
        outcome.problems.extend(problems)


@dataclass(frozen=True)
class Failure:
    """How a run failed: its last error line, and the error's own message."""

    line: str
    message: str

    def text(self, mode: str) -> str:
        """What an exception.txt of ``mode`` is searched in."""
        return self.message if mode == MESSAGE else self.line


def own_message(error: BaseException) -> str:
    """The error's message as the notebook's code raised it (``str(exception)``, as
    cirrus-task-example's ``pytest.raises(match=)`` sees it): a cell's error without the
    ``(notebook cell ...)`` that nb2task's last line adds; secrets redacted, on one line
    (whitespace runs are one space, as on the last line)."""
    from .errors import NotebookCellError
    from .redact import redact

    text = error.evalue if isinstance(error, NotebookCellError) else str(error)
    return " ".join(redact(text).split())


def exact_pattern(text: str) -> str:
    """A regex matching exactly ``text``, as ``--update`` writes it: spaces left legible,
    the placeholders of local folders (``normalise``) matching any path."""
    pattern = "^" + re.escape(text).replace("\\ ", " ") + "$"
    for placeholder in ("{workdir}", "{case}", "{notebook}"):
        pattern = pattern.replace(re.escape(placeholder), ".*")
    return pattern


def mismatch(expected: Expectation, failure: Failure) -> list[str]:
    """What a failed match reads like: the pattern, what it was searched in, and where an
    exact pattern (``^literal$``) first parts from it."""
    searched = failure.text(expected.mode)
    wanted = f"expected ({EXCEPTION}):"
    got = f"got ({'message' if expected.mode == MESSAGE else 'error line'}):".ljust(len(wanted))
    lines = [
        f"the run failed differently: {EXCEPTION} does not match {expected.searched_in}",
        f"  {wanted} {expected.pattern!r}",
        f"  {got} {searched!r}",
    ]
    literal = _literal(expected.pattern)
    if literal is not None:
        at = next(
            (i for i, (a, b) in enumerate(zip(literal, searched, strict=False)) if a != b),
            min(len(literal), len(searched)),
        )
        lines.append(
            f"  they part at character {at + 1}: expected {literal[at : at + 30]!r}, "
            f"got {searched[at : at + 30]!r}"
        )
    if expected.mode == MESSAGE:
        lines.append(f"  the error line: {failure.line}")
    return lines


def _literal(pattern: str) -> str | None:
    """The text an anchored pattern of plain (or escaped) characters matches, else None."""
    found = re.fullmatch(r"\^((?:\\\W|[^\\.^$*+?{}\[\]|()])*)\$", pattern)
    return None if found is None else re.sub(r"\\(\W)", r"\1", found[1])


def _expectation(path: Path) -> Expectation | str | None:
    """The expectation of an ``exception.txt``: None if there is none, a problem (str)
    if its first line names no way to match."""
    if not path.is_file():
        return None
    try:
        return Expectation.parse(_read(path))
    except ValueError as err:
        return str(err)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _write(path: Path, text: str) -> None:
    """Write a golden file atomically (a temporary file beside it, then a rename), never
    through a symlink."""
    if path.is_symlink():
        raise UsageError(f"{path} is a symlink: --update does not write through it")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def bounded_search(pattern: str, line: str) -> bool:
    """Whether ``pattern`` matches in ``line``, given ``MATCH_TIMEOUT_S``: Python's
    ``re`` cannot be interrupted (a backtracking pattern holds the GIL for hours), so it
    runs in a forked child that is killed when time is up. re.error if the pattern is not
    a regex, TimeoutError if time ran out."""
    compiled = re.compile(pattern)  # re.error here, in the parent
    read_end, write_end = os.pipe()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the
            pid = os.fork()  # child only matches and exits
    except OSError as err:  # no process to spare (a limit, memory)
        os.close(read_end)
        os.close(write_end)
        raise MatchError(f"cannot start a process to match in: {err.strerror}") from None
    if pid == 0:  # the child
        try:
            os.close(read_end)
            os.write(write_end, b"1" if compiled.search(line) else b"0")
        except BaseException:  # noqa: BLE001 - said as such, not as a timeout
            os.write(write_end, b"E")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = b""
    try:
        poller = select.poll()  # not select(): a descriptor may be over 1023
        poller.register(read_end, select.POLLIN | select.POLLHUP)
        if poller.poll(MATCH_TIMEOUT_S * 1000):
            answer = os.read(read_end, 1)
    finally:
        os.close(read_end)
        if not answer:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not answer:
        raise TimeoutError(f"the pattern took over {MATCH_TIMEOUT_S} s")
    if answer == b"E":
        raise MatchError("matching failed in its process (out of memory?)")
    return answer == b"1"


class MatchError(Exception):
    """The pattern could not be matched at all (no process for it, or it failed there)."""


@contextmanager
def _captured_logs() -> Iterator[list[str]]:
    """The warnings and errors logged while inside (shown with a failed case)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Keep(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


def run_notebook(
    notebook: str | Path,
    payload: str | Path | dict[str, Any],
    parameters: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run a notebook task on a payload as ``run --local`` does (for a task's own tests);
    the output payload, or the run's error raised."""
    from .publish import UrlOutput
    from .runner import Runner, RunOptions

    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nb2task-test-"))
    options = RunOptions.local(folder, parameter_values=dict(parameters or {}))
    with Runner(notebook, options) as runner:
        return runner.run(payload, UrlOutput(folder / "output-payload.json"))
