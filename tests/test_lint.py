"""``nb2task lint``: each check finds its problem where it is, a clean notebook has none,
and ``--strict`` turns warnings into a failing exit for CI. The import check uses this
venv's installed distributions, as lint does where a developer runs it."""

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


def test_parameters_cell_constraints(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "params.ipynb",
        "from typing import Annotated, Literal\n"
        "from annotated_types import Ge, Predicate\n"
        'payload = "x.json"\n'
        "count: int  # required\n"
        'mode: Literal["a", "b"]\n'
        'kind: Literal["x", "y"] = "z"\n'
        "limit: Annotated[int, Ge(0), Predicate(str.isdigit), 'a note'] = -1\n"
        "later: int\n"
        "later = 3  # the last declaration wins: not required\n"
        "payload: str",
        "import nb2task\nnb2task.emit([])",
    )
    assert found(nb) == [
        ("required-without-default", WARNING, 1, 4),
        ("required-without-default", WARNING, 1, 5),
        ("default-violates-constraint", ERROR, 1, 6),
        ("unknown-constraint", WARNING, 1, 7),
        ("unknown-constraint", WARNING, 1, 7),
        ("default-violates-constraint", ERROR, 1, 7),
    ]
    messages = [f.message for f in lint(nb)]
    assert messages[0].startswith("`count: int` has no value: in plain Jupyter the notebook ")
    assert "(`count: int = 0`)" in messages[0] and "payload still overrides it" in messages[0]
    assert "(`mode: Literal['a', 'b'] = 'a'`)" in messages[1]
    assert messages[2] == (
        "the default breaks the parameter's own constraint: "
        "parameter 'kind' must be one of ['x', 'y'], got 'z'"
    )
    assert messages[3].startswith("parameter 'limit': Predicate(str.isdigit) in Annotated[...] ")
    assert "'a note' in Annotated" in messages[4]
    assert messages[5].endswith("parameter 'limit' must be >= 0, got -1")


def test_the_suggested_sample_value_meets_the_constraints(tmp_path: Path) -> None:
    declarations = {
        "n: int": "0",
        "assets: Annotated[list[str], MinLen(1)]": "['']",
        "keys: Annotated[list[str], MinLen(1)] | Literal['all', 'ALL']": "['']",
        "size: Annotated[int, Ge(5)]": "5",
        "mode: Literal['b', 'a']": "'b'",
        "ratio: Annotated[float, Gt(0), Lt(1)]": "0.5",
        "step: Annotated[float, Ge(0.25), MultipleOf(0.1)]": "0.3",
        "even: Annotated[int, Gt(5), MultipleOf(4)]": "8",
        "name: Annotated[str, Len(3, 5)]": "'xxx'",
        "bands: Annotated[list[Literal['red', 'nir']], MinLen(2)]": "['red', 'red']",
        "low: Annotated[int, Le(-3)] | None": "-3",
        "options: dict": "{}",
    }
    nb = write_notebook(
        tmp_path / "samples.ipynb",
        "from typing import Annotated, Literal\n"
        "from annotated_types import Ge, Gt, Le, Len, Lt, MinLen, MultipleOf\n"
        'payload = "x.json"\n' + "\n".join(declarations) + "\n"
        "table: Annotated[dict, MinLen(1)]\nlong: Annotated[str, MinLen(1000)]",
        "import nb2task\nnb2task.emit([])",
    )
    findings = lint(nb)
    assert {f.code for f in findings} == {"required-without-default"}
    suggested = [f.message.split("A sample value ")[1].split(" lets it run")[0] for f in findings]
    assert suggested == [f"(`{d} = {v}`)" for d, v in declarations.items()] + [
        "(`table: Annotated[dict, MinLen(1)] = ...`, a value that meets its constraints)",
        "(`long: Annotated[str, MinLen(1000)] = ...`, a value that meets its constraints)",
    ]
    # Each suggestion is a default the parameter takes: with it, lint finds nothing.
    for declaration, value in declarations.items():
        nb = write_notebook(
            tmp_path / "one.ipynb",
            "from typing import Annotated, Literal\n"
            "from annotated_types import Ge, Gt, Le, Len, Lt, MinLen, MultipleOf\n"
            f'payload = "x.json"\n{declaration} = {value}',
            "import nb2task\nnb2task.emit([])",
        )
        assert found(nb) == [], declaration


def test_a_constraint_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "bad.ipynb",
        'payload = "x.json"\nLIMIT = 3\nn: Annotated[int, Ge(LIMIT)] = 1',
        "import nb2task\nnb2task.emit([])",
    )
    [finding] = lint(nb)
    assert (finding.code, finding.severity) == ("bad-constraint", ERROR)
    assert finding.message.startswith(
        "parameters cell, line 3: parameter 'n': Ge(LIMIT): LIMIT is not a literal"
    )
    result = run_cli("lint", nb)
    assert result.returncode == 1
    assert "error [bad-constraint]: parameters cell, line 3" in result.stdout


def imports_found(path: Path) -> list[tuple[str, int | None, int | None]]:
    return [
        (f.message.split(":")[0], f.cell, f.line)
        for f in lint(path)
        if f.code == "import-not-in-requirements"
    ]


def test_imports_not_covered_by_the_requirements(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("VALUE = 1\n")
    covered = (
        "import os, sys, json\nfrom typing import Annotated\nimport pystac, stactask.exceptions\n"
        "import yaml, annotated_types, boto3\nimport helpers\nfrom . import sibling\n"
        "from nb2task import emit"
    )
    optional = (
        "try:\n    import orjson\nexcept ImportError:\n    orjson = None\n"
        "def later():\n    import pandas\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import xarray"
    )
    uncovered = (
        "import numpy as np\nimport matplotlib.pyplot as plt\nfrom sklearn import cluster\n"
        "import debugpy\nif True:\n    import not_a_module_anywhere\nimport numpy"
    )
    nb = write_notebook(
        tmp_path / "imports.ipynb",
        'payload = "x.json"',
        covered,
        optional,
        ("import geopandas", ["nb2task-skip"]),
        uncovered,
        "import nb2task\nnb2task.emit([])",
    )
    assert imports_found(nb) == [
        ("import numpy", 5, 1),  # once, where it is first imported
        ("import matplotlib.pyplot", 5, 2),
        ("import sklearn", 5, 3),
        ("import debugpy", 5, 4),  # nb2task requires it, but its image removes it
        ("import not_a_module_anywhere", 5, 6),
    ]
    messages = {f.message.split(":")[0]: f.message for f in lint(nb)}
    sklearn = messages["import sklearn"]
    assert "'sklearn' comes from scikit-learn (installed here: scikit-learn==" in sklearn
    assert sklearn.endswith("add it to metadata nb2task.requirements")
    assert (
        "no distribution installed here provides 'not_a_module_anywhere'"
        in messages["import not_a_module_anywhere"]
    )


def test_requirements_cover_imports_with_what_they_require(tmp_path: Path) -> None:
    cells = ("import rasterio\nimport numpy\nimport cv2\nimport mylib", "import nb2task")
    nb = write_notebook(
        tmp_path / "covered.ipynb",
        'payload = "x.json"',
        *cells,
        # rasterio requires numpy; cv2 is not installed here but opencv-python provides it.
        metadata={"requirements": ["rasterio==1.4.3", "opencv-python==4.10.0.84", "mylib==1"]},
    )
    assert imports_found(nb) == []
    # A requirements.txt beside the notebook counts when the metadata has none.
    other = tmp_path / "beside"
    nb = write_notebook(other / "task.ipynb", 'payload = "x.json"', *cells)
    assert [m for m, *_ in imports_found(nb)] == [
        "import rasterio",
        "import numpy",
        "import cv2",
        "import mylib",
    ]
    (other / "requirements.txt").write_text("rasterio==1.4.3\nopencv-python==4\nmylib==1\n")
    assert imports_found(nb) == []


def test_a_name_bound_only_in_a_validate_cell_is_a_warning(tmp_path: Path) -> None:
    """--no-validate leaves the validate cells out: what they bind is gone for the rest."""
    nb = write_notebook(
        tmp_path / "v.ipynb",
        'payload = "x.json"',
        (
            "import nb2task\nfrom stactask.exceptions import InvalidInput\nlimit = 3",
            ["nb2task-validate"],
        ),
        "items = nb2task.read_items(payload)[:limit]",
        "import nb2task\nnb2task.emit(items)",
    )
    found = [f for f in lint(nb) if f.code == "validate-cell-binds"]
    assert [(f.cell, f.severity) for f in found] == [(3, WARNING), (3, WARNING)]
    assert "`limit` is bound only in the validate cell 2" in found[0].message
    assert "`nb2task`" in found[1].message
    clean = write_notebook(
        tmp_path / "clean.ipynb",
        'payload = "x.json"',
        "import nb2task",
        (
            "if not nb2task.read_items(payload):\n    raise ValueError('empty')",
            ["nb2task-validate"],
        ),
        "nb2task.emit(nb2task.read_items(payload))",
    )
    assert not [f for f in lint(clean) if f.code == "validate-cell-binds"]
