"""Hostile input, round 2: what enters through a record given to ``replay``, a golden
fixture tree, a ``-f`` YAML file or a Lambda event is data, checked where it enters with
a run's own rules. A wrong shape is one line with a defined exit code (UsageError, 2;
InvalidInput, 3); nothing is written outside the target folder; a regex or a YAML alias
cannot make nb2task hang."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    ENGINES,
    listing,
    make_payload,
    run_cli,
    run_task,
    warm_lambda,
    write_notebook,
)

from nb2task.scaffold import scaffold

FAILS = ('payload = "x.json"\nworkdir = "."\nn: int = 1\nlabel: str = "x"',)
CELLS = (
    "import nb2task\nitems = nb2task.read_items(payload)",
    "for item in items:\n    item.properties['ratio'] = 1 / (n - 2)\n    item.properties['label'] = label",
    "nb2task.emit(items)",
)
USAGE_ERROR = "nb2task.errors.UsageError: "
INVALID_INPUT = "stactask.exceptions.InvalidInput"


def assert_one_line(result: Any, code: int, name: str, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.last_stderr_line.startswith(name), result.stderr
    for fragment in fragments:
        assert fragment in result.last_stderr_line, result.stderr


# --- records given to replay -------------------------------------------------------------------


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A failed run's record (its payload kept inline), made once; tests tamper copies."""
    folder = tmp_path_factory.mktemp("record")
    nb = write_notebook(folder / "task" / "fails.ipynb", *FAILS, *CELLS)
    _, error = run_task(nb, make_payload(), folder / "run", parameters=(("n", "2"),))
    assert error is not None
    return folder / "run" / "fails.executed.ipynb"


def tampered(record: Path, folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    node = json.loads(record.read_text())
    change(node)
    path = folder / "tampered.executed.ipynb"
    path.write_text(json.dumps(node))
    return path


def run_section(node: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = node["metadata"]["nb2task_run"]
    return section


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(node: dict[str, Any]) -> None:
        target = run_section(node)
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _papermill(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(node: dict[str, Any]) -> None:
        node["metadata"]["papermill"][key] = value

    return change


OUTSIDE = "{outside}"  # replaced by an absolute path outside every target folder

BAD_RECORDS = {
    "absolute task name": (_set("task", "name", value=OUTSIDE), "task.name"),
    "task name with ..": (_set("task", "name", value="../escaped"), "task.name"),
    "task name with a separator": (_set("task", "name", value="a/b"), "task.name"),
    "task name not a str": (_set("task", "name", value=["fails"]), "task.name"),
    "task not a mapping": (_set("task", value="fails"), "task must be a mapping"),
    "version not a str": (_set("task", "version", value={"v": 1}), "task.version"),
    "unknown engine": (_set("engine", value="docker"), "engine must be one of"),
    "parameters not a mapping": (_set("parameters", value=[1, 2]), "parameters must be"),
    "parameter name not an identifier": (
        _set("parameters", value={"n = 1; import os": 2}),
        "not a parameter name",
    ),
    "download_assets not a list": (_set("download_assets", value="data"), "download_assets"),
    "download_assets of numbers": (_set("download_assets", value=[1]), "download_assets"),
    "payload url not a str": (_set("payload", "url", value=5), "payload.url"),
    "payload inline not a mapping": (_set("payload", "inline", value="{}"), "payload.inline"),
    "payload not a mapping": (_set("payload", value="s3://b/k"), "payload must be"),
    "error not a mapping": (_set("error", value="boom"), "error must be"),
    "papermill input_path not a str": (_papermill("input_path", 5), "input_path"),
    "papermill parameter name is code": (
        _papermill("parameters", {"os.system('id') or x": 1}),
        "not a parameter name",
    ),
}


@pytest.mark.parametrize("mode", ["replay", "jupyter"])
@pytest.mark.parametrize("case", list(BAD_RECORDS), ids=str)
def test_a_record_of_the_wrong_shape_is_a_usage_error(
    record: Path, tmp_path: Path, case: str, mode: str
) -> None:
    change, fragment = BAD_RECORDS[case]
    outside = tmp_path / "outside"
    outside.mkdir()

    def with_outside(node: dict[str, Any]) -> None:
        change(node)
        run = run_section(node)
        if isinstance(run["task"], dict) and run["task"].get("name") == OUTSIDE:
            run["task"]["name"] = str(outside / "evil")

    path = tampered(record, tmp_path, with_outside)
    target = tmp_path / "target"
    extra: list[str | Path] = ["--jupyter" if mode == "jupyter" else "--workdir", target]
    result = run_cli("replay", path, *extra, timeout=120)
    assert_one_line(result, 2, USAGE_ERROR, "cannot be replayed", fragment)
    assert listing(outside) == []
    assert not (tmp_path / "escaped.recorded.ipynb").exists()
    assert not (tmp_path / "escaped.ipynb").exists()


def test_a_record_that_is_not_json_or_too_deep_is_a_usage_error(
    tmp_path: Path,
) -> None:
    shapes = ('{"cells": [], "metadata": []}', '{"cells": [], "metadata": {"nb2task_run": 5}}')
    for text in ("{", "[" * 100_000 + "]" * 100_000, '{"cells": 5}', "\xff", *shapes):
        path = tmp_path / "bad.executed.ipynb"
        path.write_text(text, encoding="latin-1" if text == "\xff" else "utf-8")
        result = run_cli("replay", path, "--workdir", tmp_path / "w", timeout=120)
        assert_one_line(result, 2, USAGE_ERROR)


def test_jupyter_never_overwrites_a_users_notebook(record: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine" / "analysis"
    mine.parent.mkdir()
    (mine.parent / "analysis.ipynb").write_text("my work\n")
    path = tampered(record, tmp_path, _set("task", "name", value=str(mine)))
    result = run_cli("replay", path, "--jupyter", tmp_path / "lab", timeout=120)
    assert_one_line(result, 2, USAGE_ERROR, "task.name")
    assert (mine.parent / "analysis.ipynb").read_text() == "my work\n"

    # A folder that is not empty (the user's notebook of the same name in it): refused.
    lab = tmp_path / "lab2"
    lab.mkdir()
    (lab / "fails.ipynb").write_text("my work\n")
    result = run_cli("replay", record, "--jupyter", lab, timeout=120)
    assert_one_line(result, 2, USAGE_ERROR, "not empty")
    assert (lab / "fails.ipynb").read_text() == "my work\n"


def test_replay_does_not_write_through_a_symlink_in_its_workdir(
    record: Path, tmp_path: Path
) -> None:
    # The notebook changed since the run: replay writes the recorded code into --workdir.
    notebook = record.parent.parent / "task" / "fails.ipynb"
    saved = notebook.read_text()
    write_notebook(notebook, *FAILS, CELLS[0], CELLS[2])
    try:
        victim = tmp_path / "victim.ipynb"
        victim.write_text("keep me\n")
        workdir = tmp_path / "again"
        workdir.mkdir()
        (workdir / "fails.recorded.ipynb").symlink_to(victim)
        result = run_cli("replay", record, "--workdir", workdir, timeout=120)
        assert_one_line(result, 2, USAGE_ERROR, "leads out of")
        assert victim.read_text() == "keep me\n"
    finally:
        notebook.write_text(saved)


# --- golden fixture trees ----------------------------------------------------------------------


@pytest.fixture
def task(tmp_path: Path) -> Path:
    folder = tmp_path / "gold"
    scaffold(folder)
    return folder


def _case_folder_out(task: Path, outside: Path) -> None:
    shutil.copytree(task / "fixtures/success/sample", outside / "case")
    (task / "fixtures/success/evil").symlink_to(outside / "case")


def _file_out(name: str, kind: str = "success/sample") -> Callable[[Path, Path], None]:
    def plant(task: Path, outside: Path) -> None:
        target = task / "fixtures" / kind / name
        if target.exists():
            shutil.copyfile(target, outside / name)
            target.unlink()
        else:
            (outside / name).write_text("{}\n")
        target.symlink_to(outside / name)

    return plant


SYMLINKS_OUT = {
    "case folder": _case_folder_out,
    "in.json": _file_out("in.json"),
    "out.json": _file_out("out.json"),
    "params.yaml": _file_out("params.yaml"),
    "exception.txt": _file_out("exception.txt", "failure/bad-parameter"),
}


@pytest.mark.parametrize("update", [False, True], ids=["test", "update"])
@pytest.mark.parametrize("case", list(SYMLINKS_OUT), ids=str)
def test_a_fixture_symlinked_out_of_the_tree_is_refused(
    task: Path, tmp_path: Path, case: str, update: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    SYMLINKS_OUT[case](task, outside)
    before = {p.name: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    result = run_cli("test", task, *(["--update"] if update else []), timeout=300)
    assert_one_line(result, 2, USAGE_ERROR, "leads out of")
    assert {p.name: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before


def test_update_replaces_a_golden_file_atomically(task: Path, tmp_path: Path) -> None:
    # An in-tree symlink is not written through either: the link's target stays as it is.
    fixtures = task / "fixtures"
    (fixtures / "shared.json").write_text("{}\n")
    out = fixtures / "success/sample/out.json"
    out.unlink()
    out.symlink_to(fixtures / "shared.json")
    result = run_cli("test", task, "--update", "-k", "sample", timeout=300)
    assert_one_line(result, 2, USAGE_ERROR, "symlink")
    assert (fixtures / "shared.json").read_text() == "{}\n"
    out.unlink()
    result = run_cli("test", task, "--update", "-k", "sample", timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["features"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


BACKTRACKING = ["(a+)+b", "(a|aa)+b", "(a|a)+z", "(.*a){20}z"]


@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_a_backtracking_exception_pattern_times_out_as_a_failure(
    task: Path, pattern: str, engine: str
) -> None:
    case = task / "fixtures/failure/bad-parameter"
    (case / "params.yaml").write_text(f"threshold: {'a' * 60}\n")
    (case / "exception.txt").write_text(pattern + "\n")
    started = time.monotonic()
    result = run_cli("test", task, "-k", "bad-parameter", timeout=120)
    assert time.monotonic() - started < 60  # a hang guard: the match stops after 2 s
    assert result.returncode == 1, result.stderr
    assert "exception.txt's pattern took over 2 s" in result.stdout + result.stderr
    assert "catastrophic backtracking" in result.stdout + result.stderr


def test_an_invalid_exception_pattern_is_a_failure(task: Path) -> None:
    (task / "fixtures/failure/bad-parameter/exception.txt").write_text("(unclosed\n")
    result = run_cli("test", task, "-k", "bad-parameter", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "is not a valid regex" in result.stdout + result.stderr


# --- YAML: -f files, params.yaml, definition.yaml -----------------------------------------------

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
YAML_BOMBS = {
    "billion laughs under the parameter": LAUGHS + "label: *i\n",
    "billion laughs at the top": LAUGHS,
    "wide mapping aliases": "x: &x {"
    + ",".join(f"k{i}: [1,2,3,4,5,6,7,8,9,10]" for i in range(100))
    + "}\n"
    + "y: &y ["
    + ",".join(["*x"] * 1000)
    + "]\nz: ["
    + ",".join(["*y"] * 100)
    + "]\n",
    "recursive alias": "label: &l [*l]\n",
}


@pytest.mark.parametrize("case", list(YAML_BOMBS), ids=str)
def test_a_yaml_alias_bomb_given_with_f_is_refused_fast(tmp_path: Path, case: str) -> None:
    text = YAML_BOMBS[case]
    assert len(text.encode()) < 12_000
    nb = write_notebook(tmp_path / "task.ipynb", *FAILS, *CELLS)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(make_payload()))
    started = time.monotonic()
    result = run_cli("run", nb, payload, "--local", "--workdir", tmp_path / "w", "-f", bomb)
    assert time.monotonic() - started < 30  # a generous hang guard: it takes well under 1 s
    assert_one_line(result, 2, USAGE_ERROR, "-f ")
    assert "alias" in result.last_stderr_line


def test_safe_yaml_bounds_every_loader() -> None:
    from nb2task import safe_yaml
    from nb2task.errors import UsageError

    started = time.monotonic()
    for text in (LAUGHS, "a: &a [*a]\n", "x" * (safe_yaml.MAX_BYTES + 1), "a: [\n"):
        with pytest.raises(UsageError):
            safe_yaml.load(text, "here")
    assert time.monotonic() - started < 10
    assert safe_yaml.load("a: &a [1, 2]\nb: *a\n", "here") == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    "definition",
    [LAUGHS, "- a list\n", "name: ../../etc/x\n", "name: 5\n", "description: no name\n"],
    ids=["alias bomb", "a list", "name with ..", "name not a str", "no name"],
)
def test_a_build_contexts_definition_is_checked(tmp_path: Path, definition: str) -> None:
    from nb2task.errors import UsageError
    from nb2task.submit import TaskSource

    (tmp_path / "definition.yaml").write_text(definition)
    started = time.monotonic()
    with pytest.raises(UsageError):
        TaskSource.at(tmp_path)
    assert time.monotonic() - started < 10


# --- Lambda events -----------------------------------------------------------------------------

EMITTER = (
    'payload = "x.json"\nworkdir = "."\nn: int = 0\n',
    "import nb2task\nitems = nb2task.read_items(payload)\nnb2task.emit(items)",
)


@pytest.fixture(scope="module", params=ENGINES)
def lambda_handler(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str
) -> Iterator[Callable[[Any], Any]]:
    """nb2task's Lambda handler on a small emitter notebook, one warm container per engine
    (as test_hostile.py's)."""
    notebook = write_notebook(tmp_path_factory.mktemp("lambda") / "events.ipynb", *EMITTER)
    with warm_lambda(notebook, str(request.param)) as handler:
        yield handler


BAD_EVENTS: dict[str, tuple[Any, str]] = {
    "null": (None, "not null"),
    "a path": ("/etc/passwd", "not str"),
    "a file URL": ("file:///x.json", "not str"),
    "an s3 URL as a bare string": ("s3://b/k.json", "not str"),
    "a list": ([], "not list"),
    "a number": (5, "not int"),
    "url a number": ({"url": 5}, '{"url"} payload must be a URL string, not int'),
    "url a list": ({"url": ["s3://b/k.json"]}, '{"url"} payload must be a URL string, not list'),
    "href a mapping": ({"href": {}}, '{"href"} payload must be a URL string, not dict'),
    "url empty": ({"url": ""}, "not an empty string"),
    "url null": ({"url": None}, '{"url"} payload must be a URL string, not null'),
    "url a local file": ({"url": "file:///etc/passwd"}, "must point at s3://"),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS), ids=str)
def test_a_lambda_event_that_is_not_a_payload_is_invalid(
    lambda_handler: Callable[[Any], Any], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    event, message = BAD_EVENTS[case]
    read: list[str] = []

    class Stdin:  # stdin is never read in Lambda
        def read(self, *args: Any) -> str:
            read.append("read")
            return json.dumps(make_payload())

    monkeypatch.setattr("sys.stdin", Stdin())
    with pytest.raises(Exception) as raised:
        lambda_handler(event)
    assert type(raised.value).__name__ == INVALID_INPUT, repr(raised.value)
    assert message in str(raised.value)
    assert read == []
