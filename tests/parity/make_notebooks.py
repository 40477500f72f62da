"""Writes the parity notebooks: each a port of one stactask test task (stactask/tasks.py).

Run it from anywhere (`.venv/bin/python tests/parity/make_notebooks.py`) after changing a
port here; the notebooks are committed, and tests/test_parity.py checks they match this.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SAMPLE = "../stactask/fixtures/sentinel2-l2a-j2k-payload.json"

# One port per task: (metadata, markdown, [(source, tags), ...]). The first code cell is the
# parameters cell; its `payload` default is the sample payload, so each runs in Jupyter.
PORTS: dict[str, tuple[dict[str, Any], str, list[tuple[str, list[str]]]]] = {
    "nothing-task": (
        # NothingTask.process(**kwargs) takes any option (the fixture's `do_nothing`).
        {
            "name": "nothing-task",
            "description": "this task does nothing",
            "unknown_options": "ignore",
        },
        "# nothing-task\n\nA port of stactask's `NothingTask`: it returns its items as they came.",
        [
            (
                f'payload = "{SAMPLE}"  # path of the input payload; nb2task injects the real one\n'
                'workdir = "."  # where the task writes its outputs',
                ["parameters"],
            ),
            (
                "import nb2task\n\n"
                "# return self.items_as_dicts\n"
                "nb2task.emit(nb2task.read_items(payload, as_dicts=True))",
                [],
            ),
        ],
    ),
    "failvalidation-task": (
        {"name": "failvalidation-task", "description": "this task always fails validation"},
        "# failvalidation-task\n\n"
        "A port of stactask's `FailValidateTask`: its validate step refuses every payload.",
        [
            (
                f'payload = "{SAMPLE}"  # path of the input payload; nb2task injects the real one\n'
                'workdir = "."  # where the task writes its outputs',
                ["parameters"],
            ),
            (
                "from stactask.exceptions import FailedValidation\n\n"
                "import nb2task\n\n"
                "# def validate(self): if self._payload: raise FailedValidation(...)\n"
                "if nb2task.read_payload(payload).to_dict():\n"
                '    raise FailedValidation("Extra context about what went wrong")',
                ["nb2task-validate"],
            ),
            (
                # Its own import: --no-validate leaves the validate cell out.
                "import nb2task\n\n"
                "# return self.items_as_dicts\n"
                "nb2task.emit(nb2task.read_items(payload, as_dicts=True))",
                [],
            ),
        ],
    ),
    "derived-item-task": (
        {"name": "derived-item-task", "description": "this task creates a derived item"},
        "# derived-item-task\n\n"
        "A port of stactask's `DerivedItemTask`: a copy of the first item, linked to it by "
        "`derived_from`.",
        [
            (
                f'payload = "{SAMPLE}"  # path of the input payload; nb2task injects the real one\n'
                'workdir = "."  # where the task writes its outputs\n'
                'parameter: str | None = None  # the original asserts it is "value"',
                ["parameters"],
            ),
            (
                "from stactask import Task\n\n"
                "import nb2task\n\n"
                "# assert kwargs['parameter'] == 'value'\n"
                'assert parameter == "value"',
                [],
            ),
            (
                "# return [self.create_item_from_item(self.items_as_dicts[0])]\n"
                "items = nb2task.read_items(payload, as_dicts=True)\n"
                "nb2task.emit([Task.create_item_from_item(items[0])])",
                [],
            ),
        ],
    ),
}


def notebook(name: str) -> nbformat.NotebookNode:
    """The port of task ``name`` as a notebook."""
    return build(name, *PORTS[name])


def build(
    name: str, metadata: dict[str, Any], markdown: str, cells: list[tuple[str, list[str]]]
) -> nbformat.NotebookNode:
    """A port as a notebook: a markdown cell, then code cells (``(source, tags)``), with
    stable cell ids (``<name>-<n>``) so that the committed files do not churn."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["nb2task"] = metadata
    nb.cells.append(new_markdown_cell(markdown))
    for source, tags in cells:
        cell = new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{name}-{index}"
    return nb


def path(name: str) -> Path:
    return HERE / name / f"{name}.ipynb"


def main() -> int:
    for name in PORTS:
        path(name).parent.mkdir(exist_ok=True)
        nbformat.write(notebook(name), path(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
