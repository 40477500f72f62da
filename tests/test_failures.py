"""Failures a person can act on, and what a run says when it ends: the failing line and
the last frames of the traceback before the error line, a run that emits nothing,
``inspect`` on a notebook that cannot run, where the outputs went, ``-f`` files."""

from __future__ import annotations

from pathlib import Path

import pytest
from stactask.exceptions import InvalidInput
from support import make_payload, run_cli, run_task, write_notebook

from nb2task.errors import UsageError, error_line, exit_code
from nb2task.failure import context_lines
from nb2task.schema import ParameterSchema, read_parameters_file

DEEP = (
    "def inner(v):\n    return 1 / v\n\n\ndef middle(v):\n    return inner(v)\n\n\n"
    "def outer(v):\n    return middle(v)"
)


@pytest.mark.usefixtures("engine")
def test_a_failure_names_the_failing_line_and_shows_the_last_frames(
    tmp_path: Path, write_json
) -> None:
    nb = write_notebook(
        tmp_path / "deep.ipynb",
        'payload = "x.json"\nx: int = 1',
        DEEP,
        "y = 1\n# the call below fails\ntotal = outer(x)\nprint(total)",
    )
    params = tmp_path / "params.json"
    params.write_text('{"x": 0}')  # the run fails only if -f is read
    result = run_cli(
        "run", nb, write_json("in.json", make_payload()), "-f", params, "--workdir", tmp_path / "w"
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == (
        "ZeroDivisionError: division by zero (notebook cell In [4], line 3: total = outer(x))"
    )
    start = next(i for i, line in enumerate(lines) if line.startswith("the notebook failed"))
    context = lines[start:-1]
    assert context[0] == (
        "the notebook failed in cell In [4], line 3; traceback, last 3 of 4 frames "
        "(the executed notebook has all):"
    )
    shown = "\n".join(context)
    # The last three frames: outer, middle, inner (the cell's own frame is the one left out).
    assert "in outer(v)" in shown and "in middle(v)" in shown and "in inner(v)" in shown
    assert "----> 2     return 1 / v" in shown
    assert context[-1] == "  ZeroDivisionError: division by zero"
    assert "\x1b[" not in result.stderr  # no terminal colours in logs


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "syntax.ipynb", 'payload = "x.json"\nn: int = 0', "a = 1\nb = (\n"
    )
    work = tmp_path / "work"
    _, error = run_task(nb, make_payload(), work)
    assert error is not None
    assert error_line(error).startswith("SyntaxError: ")
    assert error_line(error).endswith("(notebook cell In [3], line 2: b = ()")
    assert context_lines(error)[0].startswith("the notebook failed in cell In [3], line 2;")
    assert (work / "syntax.executed.ipynb").exists()

    # Rejected before the notebook runs: that record is not this run's, and goes.
    _, error = run_task(nb, make_payload(), work, parameters=(("n", "many"),))
    assert error is not None and exit_code(error) == 3
    assert not (work / "syntax.executed.ipynb").exists()


@pytest.fixture
def emits_nothing(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "quiet.ipynb", 'payload = "x.json"', "import nb2task\nnb2task.emit([])"
    )


def test_a_run_that_emits_nothing_warns_or_fails(
    emits_nothing: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output, error = run_task(emits_nothing, make_payload(), tmp_path / "w")
    assert error is None and output is not None and output["features"] == []
    [warning] = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "quiet"]
    assert "the notebook emitted no items" in warning.getMessage()
    assert "--require-items makes this an error" in warning.getMessage()

    output, error = run_task(emits_nothing, make_payload(), tmp_path / "w2", require_items=True)
    assert output is None and error is not None
    assert error_line(error) == (
        "nb2task.errors.NoItemsError: the notebook emitted no items (--require-items)"
    )
    assert exit_code(error) == 1


def test_inspect_fails_on_a_notebook_that_cannot_run(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "untagged.ipynb", None, "threshold = 0.2")
    result = run_cli("inspect", nb)
    assert result.returncode == 2
    assert result.stdout.splitlines()[-1] == "injected by nb2task: none"
    assert result.last_stderr_line.startswith(
        "nb2task.errors.NotebookError: untagged.ipynb has no cell tagged 'parameters'"
    )


def test_a_run_says_where_its_outputs_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nb = write_notebook(
        tmp_path / "maker.ipynb",
        'payload = "x.json"\nworkdir = "."',
        "import nb2task, pathlib\n"
        "items = nb2task.read_items(payload)\n"
        "out = pathlib.Path(workdir) / 'out.txt'\nout.write_text('x')\n"
        "items[0].add_asset('out', __import__('pystac').Asset(str(out)))\n"
        "nb2task.emit(items)",
    )
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="nb2task.progress")
    _, error = run_task(nb, make_payload(), Path("local-output"))
    assert error is None
    done = [r.getMessage() for r in caplog.records if "] done: " in r.getMessage()]
    assert done == [
        "[test-collection/workflow-test-workflow/item-1] done: 1 item(s) → "
        "local-output/output-payload.json; 1 asset(s) in local-output/; "
        "record local-output/maker.executed.ipynb"
    ]


def test_parameters_from_a_file_sit_under_p(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "params.ipynb",
        'payload = "x.json"\na: str = "a"\nb: float = 0.5\nc: list[int] = []',
        "import nb2task\nitems = nb2task.read_items(payload)\n"
        "items[0].properties.update(a=a, b=b, c=c)\nnb2task.emit(items)",
    )
    params = tmp_path / "params.yaml"
    params.write_text("a: from-file\nb: 2\nc: [1, 2]\n")
    output, error = run_task(
        nb,
        make_payload(tasks={"params": {"a": "task", "b": 1.0}}),
        tmp_path / "w",
        parameter_values=read_parameters_file(params),
        parameters=(("b", "3.5"),),
    )
    assert error is None and output is not None
    props = output["features"][0]["properties"]
    assert (props["a"], props["b"], props["c"]) == ("from-file", 3.5, [1, 2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zz: 1\n", "-f {file}: zz: unknown parameter (the notebook declares: b)"),
        ("workdir: x\n", "-f {file}: workdir: 'workdir' is reserved: nb2task sets it"),
        ("b: high\n", "parameter 'b' must be number, got str 'high'"),
    ],
)
def test_a_bad_parameter_in_a_file_is_invalid_input(tmp_path: Path, text, message) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    schema = ParameterSchema.from_source("payload = 'x.json'\nb: float = 0.5")
    with pytest.raises(InvalidInput) as raised:
        schema.resolve({}, {}, {}, read_parameters_file(params), f"-f {params}")
    assert message.format(file=params) in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("- 1\n", "parameters must be a mapping"), ("a: [\n", "not valid YAML")],
)
def test_an_unreadable_parameters_file_is_a_usage_error(tmp_path: Path, text, message) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(UsageError, match=f"-f {params}: {message}"):
        read_parameters_file(params)


def test_run_help_says_py_notebooks_work() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert ".py file in jupytext's percent format" in text
    assert "works on a plain install" in text


def test_jupytext_comes_with_a_plain_install() -> None:
    from importlib.metadata import requires

    core = [r for r in requires("nb2task") or [] if "extra ==" not in r]
    assert any(r.startswith("jupytext") for r in core), core
