"""The two engines behind one seam: same outputs, same isolation, same faults.

Each test drives a real executor in this process: ``fork`` (a warm parent process,
one forked child per run) and ``kernel`` (a real ipykernel per run, via papermill's
nbclient engine). Both are papermill engines; papermill injects and saves.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from support import write_notebook

from nb2task.engines import Executor, Limits, create_executor
from nb2task.errors import NotebookCellError, NotebookDiedError, RunTimeoutError

ENGINES = ["fork", "kernel"]


@pytest.fixture(scope="module", params=ENGINES)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with create_executor(request.param, None, {}) as ex:
        yield ex


def run(executor: Executor, nb: Path, tmp_path: Path, **kwargs: Any) -> tuple[Any, Any]:
    """Execute ``nb``; return (the Execution or the error, the executed notebook on disk)."""
    node = nbformat.read(nb, as_version=4)
    out = tmp_path / f"{nb.stem}-{executor.name}.executed.ipynb"
    try:
        result: Any = executor.execute(
            node, kwargs.pop("parameters", {}), output_path=out, cwd=tmp_path, **kwargs
        )
    except Exception as err:  # noqa: BLE001 - the test looks at it
        result = err
    return result, nbformat.read(out, as_version=4) if out.exists() else None


# --- fidelity: the two engines' executed notebooks agree cell by cell -----------------

FIDELITY = {
    "streams": (
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n"
        "print('more stdout')\nsys.stdout.write('no newline')"
    ),
    "display": (
        "from IPython.display import display, HTML, Markdown\n"
        "display({'application/vnd.custom+json': {'a': [1, 2]}, 'text/plain': 'custom'},\n"
        "        raw=True, metadata={'application/vnd.custom+json': {'expanded': True}})\n"
        "display(HTML('<b>bold</b>'), Markdown('*md*'))\n"
        "print('between')\n"
        "display({'text/plain': 'second'}, raw=True)"
    ),
    "rich_repr": (
        "class Report:\n"
        "    def _repr_html_(self):\n        return '<table><tr><td>1</td></tr></table>'\n"
        "    def _repr_markdown_(self):\n        return '| a |\\n|---|\\n| 1 |'\n"
        "    def __repr__(self):\n        return 'Report()'\n"
        "Report()"
    ),
    "value": "x = {'a': 1}\nx",
    "matplotlib": (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([0, 1, 4])\nax.set_title('t')"
    ),
    "emit": (
        "import nb2task\n"
        "nb2task.emit({'type': 'Feature', 'stac_version': '1.1.0', 'id': 'x', 'geometry': None,\n"
        "              'properties': {'datetime': '2024-01-01T00:00:00Z'}, 'links': [],\n"
        "              'assets': {}})"
    ),
    "error": "def inner():\n    return 1 / 0\n\nprint('before')\ninner()",
    "syntax_error": "def broken(:\n    pass",
    "invalid_input": (
        "from stactask.exceptions import InvalidInput\nraise InvalidInput('no red band')"
    ),
    "sys_exit_0": "import sys\nprint('leaving')\nsys.exit(0)",
    "sys_exit_3": "import sys\nsys.exit(3)",
    "input": "input('name? ')",
    "magic": "%time y = sum(range(10))\n!echo shell escape",
}


def normalise(nb: Any) -> list[Any]:
    """What must match between engines: each cell's outputs and execution count, with
    memory addresses, timings and per-process temp paths masked."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append((cell.cell_type, cell.source))
            continue
        outputs = copy.deepcopy([dict(o) for o in cell.get("outputs", [])])
        for output in outputs:
            if "traceback" in output:
                # A frame inside the engine itself (input() raising) is each engine's own.
                output["traceback"] = [
                    frame
                    for frame in output["traceback"]
                    if "ipykernel/kernelbase.py" not in frame and "engines/shell.py" not in frame
                ]
        text = json.dumps(outputs, sort_keys=True)
        text = re.sub(r"0x[0-9a-f]{6,}", "0x…", text)
        text = re.sub(r"ipykernel_\d+[/\\\\]+\d+", "ipykernel_…", text)
        text = re.sub(r"(Wall time|CPU times)[^\"]*", r"\1…", text)
        cells.append((cell.execution_count, json.loads(text)))
    return cells


@pytest.mark.parametrize("case", sorted(FIDELITY))
def test_engines_agree_cell_by_cell(case: str, tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / f"{case}.ipynb", "flag = 1", "print('first cell')", FIDELITY[case], "'after'"
    )
    results = {}
    for name in ENGINES:
        with create_executor(name, None, {}) as ex:
            outcome, executed = run(ex, nb, tmp_path, parameters={"flag": 2})
        results[name] = (type(outcome).__name__, normalise(executed))
    assert results["fork"] == results["kernel"]
    # Both ran the notebook, papermill's way: the injected cell follows the parameters.
    assert results["fork"][1][1][1] == []


# What notebooks look for in a kernel: under the fork engine they find it too.
KERNEL_LOOKALIKE = {
    "kernel": (
        "import sys, comm\nip = get_ipython()\n"
        "print(type(ip).__name__, 'ipykernel.zmqshell' in sys.modules, ip.kernel is not None,\n"
        "      ip.kernel.get_parent()['header']['msg_type'], 'IPKernelApp' in ip.config)\n"
        "c = comm.create_comm(target_name='nb2task.test', data={'a': 1})\nc.send({'b': 2})"
    ),
    "display_id": (
        "from IPython.display import display, update_display\n"
        "h = display('first', display_id=True)\ndisplay('other')\nh.update('second')\n"
        "update_display('third', display_id=h.display_id)"
    ),
    "clear_output": (
        "from IPython.display import clear_output\nprint('gone', end='')\n"
        "clear_output(wait=True)\nprint('kept')\nclear_output(wait=True)"
    ),
    "tqdm_auto": "from tqdm.auto import tqdm\nfor i in tqdm(range(5), desc='auto'):\n    pass",
    "tqdm_notebook": (
        "from tqdm.notebook import tqdm\nfor i in tqdm(range(5), desc='notebook'):\n    pass"
    ),
    "widgets": (
        "import ipywidgets\nlabel = ipywidgets.Label('hello')\ndisplay(label)\n"
        "out = ipywidgets.Output()\nwith out:\n    print('captured')\n"
        "    raise ValueError('inside')\nout"
    ),
}


def lookalike(nb: Any) -> Any:
    """The cells and the widget state, with what changes from run to run masked: widget
    model ids, and tqdm's times and rates."""
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    models = list((widgets or {}).get("state", {}).values())

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            value = re.sub(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", "<id>", value)
            return re.sub(r"\[[^\[\]]*it/s\]", "[time]", value)
        if isinstance(value, dict):
            return {k: masked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [masked(v) for v in value]
        return value

    return {
        "cells": masked(normalise(nb)),
        "widgets": sorted(json.dumps(masked(m), sort_keys=True) for m in models),
    }


@pytest.mark.parametrize("case", sorted(KERNEL_LOOKALIKE))
def test_what_notebooks_look_for_in_a_kernel(case: str, tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / f"{case}.ipynb", None, KERNEL_LOOKALIKE[case], "'after'")
    results = {}
    for name in ENGINES:
        with create_executor(name, None, {}) as ex:
            outcome, executed = run(ex, nb, tmp_path)
        assert not isinstance(outcome, Exception), outcome
        results[name] = lookalike(executed)
    assert results["fork"] == results["kernel"]
    if case == "kernel":
        [out] = results["fork"]["cells"][0][1]
        assert out["text"] == "ZMQInteractiveShell True True execute_request True\n"
    if case.startswith("tqdm"):  # a widget bar, at 100 % when it ended
        assert "application/vnd.jupyter.widget-view+json" in json.dumps(results["fork"])
        assert "100%" in json.dumps(results["fork"]["widgets"])


def test_a_figure_is_a_png_through_the_inline_backend(executor: Executor, tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "fig.ipynb", None, FIDELITY["matplotlib"])
    _, executed = run(executor, nb, tmp_path)
    [figure] = [o for o in executed.cells[0].outputs if o.output_type == "display_data"]
    assert figure.data["image/png"].startswith("iVBORw0KGgo")  # base64 of a PNG header
    assert executed.metadata.language_info.name == "python"


def test_emitted_items_come_back_by_reference(executor: Executor, tmp_path: Path) -> None:
    """400 items reach the output but not the executed notebook (a reference, a summary)."""
    nb = write_notebook(
        tmp_path / "many.ipynb",
        None,
        "import nb2task\nitem = {'type': 'Feature', 'stac_version': '1.1.0', 'geometry': None,\n"
        "  'properties': {'datetime': '2024-01-01T00:00:00Z', 'pad': 'x' * 2000},\n"
        "  'links': [], 'assets': {}}\n"
        "nb2task.emit([dict(item, id=f'item-{i}') for i in range(400)])\n"
        "nb2task.emit(dict(item, id='last'))",
    )
    execution, executed = run(executor, nb, tmp_path)
    assert [i["id"] for i in execution.items] == [f"item-{i}" for i in range(400)] + ["last"]
    size = (tmp_path / f"many-{executor.name}.executed.ipynb").stat().st_size
    assert size < 100_000, size
    text = executed.cells[0].outputs[0].data["text/plain"]
    assert "emitting 400 item(s)" in text and "... and 380 more" in text


# --- isolation: nothing one run does reaches the next --------------------------------


def test_nothing_leaks_into_the_next_run(executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    first = write_notebook(
        tmp_path / "first.ipynb",
        None,
        "import math, os, sys, types\n"
        "LEAKED_GLOBAL = 1\n"
        "math.sqrt = lambda x: 'patched'\n"
        "os.environ['NB2TASK_LEAK'] = 'yes'\n"
        "sys.modules['leaked_module'] = types.ModuleType('leaked_module')\n"
        "os.chdir('elsewhere')\n"
        "print(math.sqrt(4))",
    )
    second = write_notebook(
        tmp_path / "second.ipynb",
        None,
        "import math, os, sys\n"
        "print({'global': 'LEAKED_GLOBAL' in globals(), 'sqrt': math.sqrt(4),\n"
        "       'env': os.environ.get('NB2TASK_LEAK'), 'module': 'leaked_module' in sys.modules,\n"
        "       'cwd': os.path.basename(os.getcwd())})",
    )
    _, executed_first = run(executor, first, tmp_path)
    assert executed_first.cells[0].outputs[0].text == "patched\n"  # it did patch
    _, executed_second = run(executor, second, tmp_path)
    seen = executed_second.cells[0].outputs[0].text
    assert seen == (
        "{'global': False, 'sqrt': 2.0, 'env': None, 'module': False, "
        f"'cwd': '{tmp_path.name}'}}\n"
    )


def test_patching_json_cannot_corrupt_the_record(tmp_path: Path) -> None:
    """A notebook that patches json.dumps: the fork engine's child encodes with a bound
    encoder, and the notebook is written by another process, so the record is whole."""
    nb = write_notebook(
        tmp_path / "patch.ipynb",
        None,
        "import json\njson.dumps = lambda *a, **k: 'patched'\nprint(json.dumps({'a': 1}))",
        "print('next cell')",
    )
    with create_executor("fork", None, {}) as ex:
        _, executed = run(ex, nb, tmp_path)
    assert [c.outputs[0].text for c in executed.cells] == ["patched\n", "next cell\n"]
    assert json.loads((tmp_path / "patch-fork.executed.ipynb").read_text())["cells"]


# --- faults: one clean error, the partial notebook kept, the next run fine -----------

FAULTS = {
    "os_exit": ("import os\nos._exit(3)", NotebookDiedError, "exited with status 3"),
    "sigkill": (
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        NotebookDiedError,
        "SIGKILL",
    ),
    "memory": (
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))\n"
        "blob = bytearray(4 * 1024**3)",
        NotebookCellError,
        "MemoryError",
    ),
    "cell_timeout": ("while True:\n    pass", RunTimeoutError, "a notebook cell ran longer"),
    "run_timeout": (
        "import time\nwhile True:\n    time.sleep(0.01)",
        RunTimeoutError,
        "the notebook ran longer",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_end_cleanly_and_the_next_run_works(
    executor: Executor, fault: str, tmp_path: Path
) -> None:
    code, error, words = FAULTS[fault]
    nb = write_notebook(tmp_path / f"{fault}.ipynb", None, "print('done before the fault')", code)
    limits = Limits(cell_timeout=3) if fault == "cell_timeout" else Limits(timeout=3)
    started = time.monotonic()
    outcome, executed = run(executor, nb, tmp_path, limits=limits)
    assert isinstance(outcome, error), outcome
    assert words in f"{outcome} {getattr(outcome, 'ename', '')}"
    assert time.monotonic() - started < 60
    # The partial executed notebook is kept: the cell before the fault has its output.
    first = next(c for c in executed.cells if c.cell_type == "code")
    assert first.outputs[0].text == "done before the fault\n"
    # The same warm executor runs the next payload.
    ok = write_notebook(tmp_path / "ok.ipynb", None, "print('fine')")
    outcome, executed = run(executor, ok, tmp_path)
    assert executed.cells[0].outputs[0].text == "fine\n"


def test_a_dead_warm_parent_is_replaced(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "ok.ipynb", None, "print('fine')")
    with create_executor("fork", None, {}) as ex:
        run(ex, nb, tmp_path)
        pid = ex.warm_info["pid"]  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        outcome, executed = run(ex, nb, tmp_path)
        assert executed.cells[0].outputs[0].text == "fine\n", outcome
        assert ex.warm_info["pid"] != pid  # type: ignore[attr-defined]


def test_the_warm_parent_preimports_the_notebooks_modules(tmp_path: Path) -> None:
    (tmp_path / "local_helper.py").write_text("VALUE = 1\n")
    nb = write_notebook(
        tmp_path / "imports.ipynb",
        None,
        "import numpy as np\nfrom local_helper import VALUE\nimport no_such_module_here",
    )
    with create_executor("fork", nb, {}) as ex:
        ex.prepare()
        run(ex, nb, tmp_path)
        info = ex.warm_info  # type: ignore[attr-defined]
    assert "numpy" in info["imported"]
    # Modules beside the notebook are imported afresh by each run (they may change).
    assert "local_helper" not in info["imported"]
    assert not any("no_such_module_here" in f for f in info["failed"])
