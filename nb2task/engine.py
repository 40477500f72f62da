"""Execute a notebook on a real Jupyter kernel, through papermill.

One function, ``execute``, is the seam: a later engine (a pre-started kernel kept
warm between payloads) can replace it without the task noticing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nbformat

from .errors import Nb2TaskError, NotebookCellError

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"


def execute(
    node: nbformat.NotebookNode,
    output_path: Path,
    parameters: dict[str, Any],
    cwd: Path,
    cell_timeout: float | None = None,
    log_output: bool = True,
) -> nbformat.NotebookNode:
    """Run ``node`` with ``parameters`` injected; the executed notebook is saved to
    ``output_path`` as it runs, and kept there whether the run succeeds or not."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        executed: nbformat.NotebookNode = papermill.execute_notebook(
            node,
            str(output_path),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            language="python",
            progress_bar=False,
            log_output=log_output,
            cwd=str(cwd),
            execution_timeout=cell_timeout,
            shutdown_kernel="immediate",
        )
        return executed
    except PapermillExecutionError as err:
        raise NotebookCellError(
            err.ename, err.evalue, err.cell_index, err.exec_count, err.source
        ) from None
    except CellTimeoutError as err:
        raise Nb2TaskError(f"a notebook cell ran longer than {cell_timeout} s") from err
    except DeadKernelError as err:
        raise Nb2TaskError(f"the notebook's kernel died: {err}") from err
