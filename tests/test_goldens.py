"""Golden fixtures (``nb2task test`` and the pytest plugin): what is compared, what a
difference reads like, each way a case can fail, ``--update``, per-case parameters, and a
task repository laid out as cirrus-task-example lays one (tests/fixtures/task-repo-layout:
payloads without features, a bare message in exception.txt)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import FIXTURES, run_cli

from nb2task.goldens import (
    LAST_LINE,
    MASK,
    MESSAGE,
    VOLATILE,
    Case,
    Expectation,
    GoldenRunner,
    case_of,
    differences,
    ignored_keys,
    normalise,
    task_cases,
)
from nb2task.scaffold import scaffold

TASK_REPO = FIXTURES / "task-repo-layout"  # cirrus-task-example's layout, our own task


def test_normalise_masks_volatile_keys_local_paths_and_the_record() -> None:
    document = {
        "features": [
            {
                "properties": {"created": "2026-01-01T00:00:00Z", "value": 3},
                "assets": {
                    "data": {"href": "/tmp/work-123/x.tif"},
                    "source": {"href": "file:///home/me/task/data/in.csv"},
                    "executed-notebook": {"href": "s3://b/x.ipynb", "roles": ["nb2task-record"]},
                },
            }
        ]
    }
    places = {"/tmp/work-123": "{workdir}", "/home/me/task": "{notebook}"}
    assert normalise(document, places) == {
        "features": [
            {
                "properties": {"created": MASK, "value": 3},
                "assets": {
                    "data": {"href": "{workdir}/x.tif"},
                    "source": {"href": "{notebook}/data/in.csv"},
                },
            }
        ]
    }


def test_differences_read_as_places_and_values() -> None:
    expected = {"features": [{"id": "a", "properties": {"v": 1, "old": True}}], "x": [1, 2]}
    actual = {"features": [{"id": "a", "properties": {"v": 1.5, "new:key": "z"}}], "x": [1]}
    assert differences(expected, actual) == [
        "features[0].properties.v: expected 1, got 1.5",
        "features[0].properties.old: missing (expected true)",
        'features[0].properties.new:key: not expected (got "z")',
        "x[1]: missing (expected 2)",
    ]
    assert differences({"a b": 1}, {"a b": "1"}) == ["['a b']: expected 1, got \"1\""]
    assert differences(expected, json.loads(json.dumps(expected))) == []


def test_numbers_compare_by_value_as_in_json() -> None:
    # cirrus-task-example compares with ==: an out.json's 2 is the task's 2.0.
    assert differences({"n": 2, "x": [0.0]}, {"n": 2.0, "x": [0]}) == []
    assert differences({"flag": 1}, {"flag": True}) == ["flag: expected 1, got true"]
    assert differences({"n": 2}, {"n": 2.5}) == ["n: expected 2, got 2.5"]


def test_an_exception_txt_is_a_pattern_and_how_to_match_it() -> None:
    # As cirrus-task-example reads it: the whole file, stripped, searched in the message.
    assert Expectation.parse("invalid") == Expectation("invalid", MESSAGE)
    assert Expectation.parse("\n^a (b)$\n\n") == Expectation("^a (b)$", MESSAGE)
    assert Expectation.parse("# match: last-line\n^KeyError: 'x'") == Expectation(
        "^KeyError: 'x'", LAST_LINE
    )
    assert Expectation.parse("#match:message\n^x$") == Expectation("^x$", MESSAGE)
    with pytest.raises(ValueError, match="names no way to match: '# match: message'"):
        Expectation.parse("# match: whole-line\n^x$")
    # Written back: the default form is the bare pattern, as cirrus-task-example keeps it.
    assert Expectation("^x$").format() == "^x$\n"
    assert Expectation("^x$", LAST_LINE).format() == "# match: last-line\n^x$\n"


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("goldens") / "gold"
    scaffold(folder)
    return folder


@pytest.fixture(scope="module")
def golden(task: Path):
    with GoldenRunner(task / "gold.ipynb") as runner:
        yield runner


def copy_case(task: Path, source: str, target: str) -> Case:
    destination = task / "fixtures" / target
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(task / "fixtures" / source, destination)
    return Case(destination)


def test_each_way_a_case_can_fail(task: Path, golden: GoldenRunner) -> None:
    # A changed output: the difference, where it is.
    changed = copy_case(task, "success/sample", "success/changed")
    out = json.loads((changed.folder / "out.json").read_text())
    out["features"][0]["properties"]["gold:mean"] = 1.0
    (changed.folder / "out.json").write_text(json.dumps(out))
    outcome = golden.run(changed)
    assert not outcome.passed
    assert outcome.problems[:2] == [
        "the output payload differs from out.json (1 difference(s)):",
        "  features[0].properties.gold:mean: expected 1.0, got 16.75",
    ]

    # A success case whose run fails: its error line and traceback.
    crash = copy_case(task, "success/sample", "success/crash")
    (crash.folder / "params.yaml").write_text("threshold: .inf\n")
    outcome = golden.run(crash)
    assert not outcome.passed
    assert outcome.problems[0].startswith(
        "the run failed: stactask.exceptions.InvalidInput: parameter 'threshold' must be a "
        "finite number"
    )

    # A failure case that fails otherwise (its message, or its last line), or not at all.
    other = copy_case(task, "failure/bad-parameter", "failure/other")
    (other.folder / "exception.txt").write_text("^ZeroDivisionError")
    outcome = golden.run(other)
    line = "stactask.exceptions.InvalidInput: parameter 'threshold' must be number, got str 'high'"
    assert outcome.problems == [
        "the run failed differently: exception.txt does not match the error's message",
        "  expected (exception.txt): '^ZeroDivisionError'",
        "  got (message):            \"parameter 'threshold' must be number, got str 'high'\"",
        f"  the error line: {line}",
    ]
    (other.folder / "exception.txt").write_text("# match: last-line\nZeroDivisionError")
    outcome = golden.run(other)
    assert outcome.problems == [
        "the run failed differently: exception.txt does not match the last error line",
        "  expected (exception.txt): 'ZeroDivisionError'",
        f'  got (error line):         "{line}"',
    ]
    (other.folder / "exception.txt").write_text("# match: everything\nx")
    assert golden.run(other).problems == [
        f"{other.folder / 'exception.txt'}: its first line '# match: everything' names no way "
        "to match: '# match: message' (the default) or '# match: last-line'"
    ]
    fine = copy_case(task, "failure/bad-parameter", "failure/fine")
    shutil.copyfile(task / "fixtures/success/sample/in.json", fine.folder / "in.json")
    outcome = golden.run(fine)
    assert outcome.problems == [
        'expected a failure matching "^stactask\\\\.exceptions\\\\.InvalidInput: parameter '
        "'threshold' must be number, got str 'high'$\", but the run succeeded"
    ]


def test_update_writes_goldens_that_then_pass(task: Path, golden: GoldenRunner) -> None:
    case = copy_case(task, "success/sample", "success/higher")
    (case.folder / "out.json").unlink()
    (case.folder / "params.json").write_text('{"threshold": 15}')
    assert golden.run(case).problems == ["no out.json yet: `nb2task test --update` records it"]
    assert golden.run(case, update=True).updated
    written = json.loads((case.folder / "out.json").read_text())
    assert written["features"][0]["properties"]["gold:count"] == 2  # params.json applied
    assert written["features"][0]["assets"]["summary"]["href"] == "{workdir}/sample-1_summary.json"
    assert golden.run(case).passed

    # A new exception.txt is the default form: the message, anchored.
    failing = copy_case(task, "failure/bad-parameter", "failure/rewritten")
    (failing.folder / "exception.txt").unlink()
    assert golden.run(failing, update=True).updated
    assert (failing.folder / "exception.txt").read_text() == (
        "^parameter 'threshold' must be number, got str 'high'$\n"
    )
    assert golden.run(failing).passed
    # One that says `# match: last-line` stays so.
    (failing.folder / "exception.txt").write_text("# match: last-line\nstale\n")
    assert golden.run(failing, update=True).updated
    assert (failing.folder / "exception.txt").read_text() == (
        "# match: last-line\n"
        "^stactask\\.exceptions\\.InvalidInput: parameter 'threshold' must be number, "
        "got str 'high'$\n"
    )
    assert golden.run(failing).passed


def test_ignore_txt_masks_more_keys(task: Path, golden: GoldenRunner) -> None:
    case = copy_case(task, "success/sample", "success/ignored")
    out = json.loads((case.folder / "out.json").read_text())
    out["features"][0]["properties"]["gold:mean"] = 0.0
    (case.folder / "out.json").write_text(json.dumps(out))
    (task / "fixtures" / "ignore.txt").write_text("# the mean changes\ngold:mean\n")
    assert ignored_keys(task / "fixtures") == VOLATILE | {"gold:mean"}
    try:
        assert golden.run(case).passed
    finally:
        (task / "fixtures" / "ignore.txt").unlink()
    assert not golden.run(case).passed


def test_the_pytest_plugin_collects_the_cases(tmp_path: Path) -> None:
    scaffold(tmp_path / "plugged")
    out = tmp_path / "plugged" / "fixtures" / "success" / "sample" / "out.json"
    out.write_text(out.read_text().replace("16.75", "16.5"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path / "plugged",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 4 passed" in proc.stdout
    assert "FAILED fixtures/success/sample/in.json::success/sample" in proc.stdout
    assert "features[0].properties.plugged:mean: expected 16.5, got 16.75" in proc.stdout
    assert "DeprecationWarning" not in proc.stdout


# --- A task repository in cirrus-task-example's layout -----------------------------------------


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the task repository: its notebook beside tests/fixtures/payloads/."""
    folder = tmp_path_factory.mktemp("cirrus") / "task-repo-layout"
    shutil.copytree(TASK_REPO, folder, ignore=shutil.ignore_patterns("conftest.py"))
    return folder


@pytest.fixture(scope="module")
def ported(port: Path):
    with GoldenRunner(port / "task-repo-layout.py") as runner:
        yield runner


def port_case(port: Path, name: str, exception_txt: str | None = None) -> Case:
    """A copy of the repository's failure case, its exception.txt as given."""
    folder = port / "tests/fixtures/payloads/failure" / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(port / "tests/fixtures/payloads/failure/payload1", folder)
    if exception_txt is None:
        (folder / "exception.txt").unlink()
    else:
        (folder / "exception.txt").write_text(exception_txt)
    return Case(folder)


def test_cirrus_task_example_layout_passes_as_it_is(port: Path, ported: GoldenRunner) -> None:
    notebook, cases = task_cases(port)
    assert notebook == port / "task-repo-layout.py"
    assert [case.name for case in cases] == ["success/payload1", "failure/payload1"]
    success, failure = cases
    assert not success.expects_failure and failure.expects_failure
    # What makes them cirrus-task-example's: payloads without features, a bare message.
    for case in cases:
        assert "features" not in json.loads((case.folder / "in.json").read_text())
    assert (failure.folder / "exception.txt").read_text() == "refused"
    # Its out.json is the whole output payload (process and features), compared as is.
    out_json = json.loads((success.folder / "out.json").read_text())
    assert set(out_json) == {"id", "features", "process"}
    for case in cases:
        outcome = ported.run(case)
        assert outcome.passed, (case.name, outcome.problems)


def test_an_anchored_message_passes_and_the_last_line_is_the_explicit_option(
    port: Path, ported: GoldenRunner
) -> None:
    # The message is the notebook's own (str(exception)), without nb2task's cell note.
    assert ported.run(port_case(port, "anchored", "^refused$\n")).passed
    last_line = (
        "# match: last-line\n"
        '^ValueError: refused \\(notebook cell In \\[\\d+\\], line \\d+: raise ValueError\\("refused"\\)\\)$'
    )
    assert ported.run(port_case(port, "last-line", last_line)).passed
    # The last line starts with the error's name: a message pattern does not match it.
    outcome = ported.run(port_case(port, "not-the-line", "# match: last-line\n^refused$"))
    assert outcome.problems[:2] == [
        "the run failed differently: exception.txt does not match the last error line",
        "  expected (exception.txt): '^refused$'",
    ]
    assert outcome.problems[2].startswith("  got (error line):         'ValueError: refused (")


def test_a_wrong_message_fails_with_a_readable_difference(port: Path, ported: GoldenRunner) -> None:
    outcome = ported.run(port_case(port, "wrong", "^refused payload$\n"))
    assert not outcome.passed
    assert outcome.problems[:4] == [
        "the run failed differently: exception.txt does not match the error's message",
        "  expected (exception.txt): '^refused payload$'",
        "  got (message):            'refused'",
        "  they part at character 8: expected ' payload', got ''",
    ]
    assert outcome.problems[4].startswith(
        "  the error line: ValueError: refused (notebook cell In ["
    )


def test_update_writes_the_message_form(port: Path, ported: GoldenRunner) -> None:
    case = port_case(port, "recorded")
    assert ported.run(case).problems == ["no exception.txt yet: `nb2task test --update` records it"]
    assert ported.run(case, update=True).updated
    assert (case.folder / "exception.txt").read_text() == "^refused$\n"
    assert ported.run(case).passed


def run_pytest(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest in ``folder``, as a task repository's CI runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_nb2task_test_and_pytest_find_cirrus_task_example_layout(tmp_path: Path) -> None:
    task = tmp_path / "task-repo-layout"
    shutil.copytree(TASK_REPO, task, ignore=shutil.ignore_patterns("conftest.py"))
    result = run_cli("test", task)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"2 case(s) in {task / 'tests/fixtures/payloads'}" in result.stdout
    assert "2 case(s) passed" in result.stdout

    out = task / "tests/fixtures/payloads/success/payload1/out.json"
    out.write_text(out.read_text().replace('"GREETING"', '"other"'))
    proc = run_pytest(task)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout
    assert "FAILED tests/fixtures/payloads/success/payload1/in.json::success/payload1" in (
        proc.stdout
    )
    assert 'features[0].properties.label: expected "other", got "GREETING"' in proc.stdout

    # A hand-written task's repository (no notebook beside tests/): its fixtures are left
    # to its own tests.
    (task / "task-repo-layout.py").unlink()
    proc = run_pytest(task)
    assert proc.returncode == 5, proc.stdout + proc.stderr  # no tests collected


def test_which_in_json_is_a_case(tmp_path: Path) -> None:
    def case(path: str) -> bool:
        file = tmp_path / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("{}")
        return case_of(file) is not None

    assert case("a/fixtures/success/x/in.json")
    assert not case("a/data/success/x/in.json")  # ours: the folder is named fixtures
    assert not case("a/fixtures/success/x/out.json")
    assert not case("b/tests/fixtures/payloads/failure/x/in.json")  # no notebook in b/
    (tmp_path / "b" / "task.ipynb").write_text("{}")
    assert case("b/tests/fixtures/payloads/failure/x/in.json")
