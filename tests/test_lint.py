"""``nb2task lint``: each check finds its problem where it is, a clean notebook has none,
and ``--strict`` turns warnings into a failing exit for CI."""

from __future__ import annotations

import json
from pathlib import Path

from support import NOTEBOOKS, run_cli, write_notebook

from nb2task.lint import ERROR, WARNING, lint, verdict


def found(path: Path) -> list[tuple[str, str, int | None, int | None]]:
    return [(f.code, f.severity, f.cell, f.line) for f in lint(path)]


def test_the_examples_are_clean_but_for_open_requirements() -> None:
    assert found(NOTEBOOKS / "minimal.ipynb") == []
    assert {code for code, *_ in found(NOTEBOOKS / "ndvi.ipynb")} == {"unpinned-requirement"}


def test_every_check_finds_its_problem_where_it_is(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "my_task.ipynb",
        "payload: dict = {}\nworkdir = '.'\ndownload_assets: list = []",
        "!pip install rasterio\nimport os",
        "# pip install in a comment is fine\nsrc = '/home/me/scene.tif'\nout = 'C:\\\\out.tif'",
        ("raise SystemExit('/home/me/only-exploring')", ["nb2task-skip"]),
        "x = (",
        "%connect_info\nif True:\n    exit()",
        metadata={"requirements": ["numpy>=1.26", "pystac==1.10.1"]},
    )
    assert found(nb) == [
        ("task-name", WARNING, None, None),  # my_task becomes my-task
        ("reserved-parameter", WARNING, 1, 1),  # payload: dict
        ("reserved-parameter", WARNING, 1, 3),  # download_assets shadows the option
        ("pip-install", WARNING, 2, 1),
        ("local-path", WARNING, 3, 2),
        ("local-path", WARNING, 3, 3),
        ("syntax", ERROR, 5, None),
        ("kernel-only", WARNING, 6, 1),  # %connect_info
        ("kernel-only", WARNING, 6, 3),  # exit()
        ("no-emit", WARNING, None, None),
        ("unpinned-requirement", WARNING, None, None),
    ]
    messages = {f.code: f.message for f in lint(nb)}
    assert "'my-task'" in messages["task-name"]
    assert "numpy>=1.26" in messages["unpinned-requirement"]


def test_notebooks_that_cannot_run_are_errors(tmp_path: Path) -> None:
    untagged = write_notebook(tmp_path / "untagged.ipynb", None, "import nb2task\nnb2task.emit([])")
    assert found(untagged) == [("no-parameters-cell", ERROR, None, None)]

    named = write_notebook(
        tmp_path / "named.ipynb",
        'payload = "x.json"',
        "import nb2task\nnb2task.emit([])",
        metadata={"name": "band_ratio"},
    )
    [finding] = lint(named)
    assert (finding.code, finding.severity) == ("task-name", ERROR)
    assert "use 'band-ratio'" in finding.message

    nb = write_notebook(tmp_path / "r.ipynb", "n = 1", "import nb2task\nnb2task.emit([])")
    node = json.loads(nb.read_text())
    node["metadata"]["kernelspec"] = {"name": "ir", "language": "R"}
    nb.write_text(json.dumps(node))
    assert found(nb) == [
        ("no-payload", WARNING, 1, None),
        ("non-python-kernel", WARNING, None, None),
    ]


def test_a_py_notebook_is_linted_too(tmp_path: Path) -> None:
    py = tmp_path / "percent.py"
    py.write_text('# %% tags=["parameters"]\npayload = "x.json"\n\n# %%\nprint("/tmp/scratch")\n')
    assert found(py) == [("local-path", WARNING, 2, 1), ("no-emit", WARNING, None, None)]


def test_strict_fails_on_warnings() -> None:
    ndvi = NOTEBOOKS / "ndvi.ipynb"
    result = run_cli("lint", NOTEBOOKS / "minimal.ipynb", ndvi, "--strict")
    assert result.returncode == 1, result.stderr
    assert f"{NOTEBOOKS / 'minimal.ipynb'}: no problems found" in result.stdout
    assert f"{ndvi}: warning [unpinned-requirement]: " in result.stdout
    assert result.last_stderr_line == (
        "nb2task.errors.LintError: ndvi.ipynb: 0 error(s), 2 warning(s) (--strict)"
    )
    # Without --strict, warnings pass.
    assert verdict("ndvi.ipynb", lint(ndvi), strict=False) is None
