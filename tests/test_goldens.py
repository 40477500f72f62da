"""Golden fixtures (``nb2task test`` and the pytest plugin): what is compared, what a
difference reads like, each way a case can fail, ``--update``, per-case parameters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nb2task.goldens import (
    MASK,
    VOLATILE,
    Case,
    GoldenRunner,
    differences,
    ignored_keys,
    normalise,
)
from nb2task.scaffold import scaffold


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

    # A failure case that fails otherwise, or not at all.
    other = copy_case(task, "failure/bad-parameter", "failure/other")
    (other.folder / "exception.txt").write_text("^ZeroDivisionError")
    outcome = golden.run(other)
    assert outcome.problems == [
        "the run failed differently:",
        "  expected a match for '^ZeroDivisionError'",
        "  got: stactask.exceptions.InvalidInput: parameter 'threshold' must be number, "
        "got str 'high'",
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

    failing = copy_case(task, "failure/bad-parameter", "failure/rewritten")
    (failing.folder / "exception.txt").unlink()
    assert golden.run(failing, update=True).updated
    assert (failing.folder / "exception.txt").read_text() == (
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
    saved, golden.volatile = golden.volatile, ignored_keys(task / "fixtures")
    try:
        assert golden.run(case).passed
    finally:
        golden.volatile = saved
        (task / "fixtures" / "ignore.txt").unlink()


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
