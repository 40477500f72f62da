"""The command line where no notebook runs: usage errors and ``inspect``.

These stop before any payload reaches an engine, so they run once, with the default
engine (the notebook-running tests run under each engine: test_run.py and others).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import NOTEBOOKS, make_payload, run_cli, write_notebook


@pytest.fixture
def params_notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "params.ipynb",
        'payload = "sample.json"  # the input payload\nn: int = 0',
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
    )


def test_missing_notebook_is_a_usage_error(write_json) -> None:
    result = run_cli("run", "/nonexistent.ipynb", write_json("in.json", make_payload()))
    assert result.returncode == 2
    assert (
        result.last_stderr_line
        == "nb2task.errors.NotebookError: notebook not found: /nonexistent.ipynb"
    )


@pytest.mark.parametrize(
    ("cli_args", "message"),
    [
        (["--timeout", "-1"], None),
        (["--logging", "LOUD"], None),
        (["--engine", "threads"], None),
        (["--task-name", "band_ratio"], "task name 'band_ratio' (--task-name): use letters"),
    ],
)
def test_command_line_mistakes_are_usage_errors(
    params_notebook: Path, write_json, tmp_path: Path, cli_args, message
) -> None:
    workdir = tmp_path / "work"
    result = run_cli(
        "run",
        params_notebook,
        write_json("in.json", make_payload()),
        "--workdir",
        workdir,
        *cli_args,
    )
    assert result.returncode == 2
    if message:
        assert message in result.last_stderr_line
    assert not workdir.exists()


def test_unwritable_local_output_fails_before_the_run(
    params_notebook: Path, write_json, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    result = run_cli(
        "run",
        params_notebook,
        write_json("in.json", make_payload()),
        "--output",
        tmp_path / "file" / "o.json",
        "--workdir",
        tmp_path / "work",
    )
    assert result.returncode == 2
    assert result.last_stderr_line.startswith("nb2task.errors.UsageError: --output ")
    assert not (tmp_path / "work").exists()
    assert (tmp_path / "file").read_text() == "x"


def test_inspect_table() -> None:
    result = run_cli("inspect", NOTEBOOKS / "ndvi.ipynb")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ndvi 0.1.0: ")
    assert lines[1].split() == ["name", "type", "default", "help"]
    threshold = next(line for line in lines if line.startswith("threshold"))
    assert threshold.split()[:3] == ["threshold", "number", "0.2"]
    assert threshold.endswith("NDVI below this is masked as nodata")
    assert lines[-1] == "injected by nb2task: payload, workdir"


def test_inspect_json_schema() -> None:
    result = run_cli("inspect", NOTEBOOKS / "ndvi.ipynb", "--json")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["title"] == "ndvi"
    assert schema["properties"]["threshold"] == {
        "type": "number",
        "default": 0.2,
        "description": "NDVI below this is masked as nodata",
    }
    assert set(schema["properties"]) == {"threshold", "red_asset", "nir_asset"}

    import jsonschema

    jsonschema.validate({"threshold": 0.4}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"threshold": "high"}, schema)
