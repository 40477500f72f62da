"""Test helpers: notebooks and payloads made on the fly, the CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NB2TASK = str(Path(sys.executable).parent / "nb2task")


def sample_item(item_id: str = "item-1", **properties: Any) -> dict[str, Any]:
    """A small valid STAC item."""
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": "test-collection",
        "geometry": {"type": "Point", "coordinates": [10.0, 50.0]},
        "bbox": [10.0, 50.0, 10.0, 50.0],
        "properties": {"datetime": "2024-05-01T10:00:00Z", **properties},
        "links": [{"rel": "self", "href": f"https://example.com/items/{item_id}"}],
        "assets": {},
    }


def make_payload(
    tasks: dict[str, dict[str, Any]] | None = None,
    workflow_options: dict[str, Any] | None = None,
    features: list[dict[str, Any]] | None = None,
    **process: Any,
) -> dict[str, Any]:
    """A Cirrus process payload around ``features`` (one sample item by default)."""
    definition: dict[str, Any] = {"workflow": "test-workflow", "upload_options": {}}
    if tasks is not None:
        definition["tasks"] = tasks
    if workflow_options is not None:
        definition["workflow_options"] = workflow_options
    definition.update(process)
    return {
        "type": "FeatureCollection",
        "id": "test-collection/workflow-test-workflow/item-1",
        "features": features if features is not None else [sample_item()],
        "process": [definition],
    }


def write_notebook(
    path: Path,
    parameters: str | None,
    *cells: str | tuple[str, list[str]],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a notebook: a ``parameters`` cell (if given) then code cells.

    A cell given as ``(source, tags)`` carries those tags.
    """
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if metadata is not None:
        nb.metadata["nb2task"] = metadata
    if parameters is not None:
        cell = new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for spec in cells:
        source, tags = (spec, []) if isinstance(spec, str) else spec
        cell = new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(*args: str | Path, stdin: str | None = None, cwd: Path | None = None) -> CliResult:
    """Run the real ``nb2task`` console script."""
    proc = subprocess.run(
        [NB2TASK, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
