"""The one papermill driver both engines share: a notebook in memory, run as
``papermill.execute_notebook`` runs it, from papermill's own building blocks.

papermill's ``execute_notebook`` takes a path: it writes, reads back and validates the
notebook it is handed, and validates again when it writes the last save (~10 ms a run).
This driver does the same steps on the notebook in memory: papermill's metadata, its
parameter injection (its translators; nb2task's registered for Python), its engine
registry, its error banner; the engine's saving manager writes every save. A test
checks that the two ways give the same executed notebook.

A run stopped from outside the notebook (a time limit, a dead process, Ctrl-C, SIGTERM)
is written into the record too: an error in the cell that was running, and the banner,
so the executed notebook says why it stopped where it did.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _not_importable(modules: tuple[str, ...]) -> Iterator[None]:
    """While inside, importing these modules fails (unless already imported)."""
    blocked = [m for m in modules if m not in sys.modules]
    for module in blocked:
        sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for module in blocked:
            if sys.modules.get(module, 0) is None:
                del sys.modules[module]


# papermill's I/O handlers (S3, Azure, GCS, HDFS, GitHub) import their libraries at import
# when installed: pyarrow, with numpy, is 50 MB and 0.15 s. The driver never reads or
# writes through papermill: without them, papermill's import is light.
with _not_importable(
    ("papermill.s3", "papermill.adl", "papermill.abs", "gcsfs", "pyarrow.fs", "github")
):
    import papermill  # noqa: F401

import nbformat  # noqa: E402
from papermill.engines import papermill_engines  # noqa: E402
from papermill.exceptions import PapermillExecutionError  # noqa: E402
from papermill.execute import (  # noqa: E402
    prepare_notebook_metadata,
    raise_for_execution_errors,
    remove_error_markers,
)
from papermill.parameterize import parameterize_notebook  # noqa: E402
from papermill.version import version as papermill_version  # noqa: E402

from . import papermill_engines as engines  # noqa: E402
from .papermill_engines import write_notebook  # noqa: E402


def execute(
    node: dict[str, Any],
    parameters: dict[str, Any],
    *,
    engine_name: str,
    output_path: Path,
    notebook_path: Path | None,
    kernel_name: str | None,
    language: str | None,
    record_metadata: dict[str, Any] | None,
    log_output: bool,
    cell_timeout: float | None,
    error_for: Callable[[BaseException], BaseException] = lambda error: error,
    **engine_kwargs: Any,
) -> Any:
    """Run the notebook ``node`` with ``parameters`` injected on the engine
    ``engine_name``; the executed notebook (saved at ``output_path`` as it runs). A cell
    that raised ends in papermill's PapermillExecutionError, the banner written; a run
    stopped otherwise in ``error_for(the engine's error)``, written into the record."""
    engines.use_schema_translator()
    nb = load(node)
    if parameters:
        nb = parameterize_notebook(
            nb, parameters, kernel_name=kernel_name, language=language, engine_name=engine_name
        )
    input_path = str(notebook_path) if notebook_path else None
    nb = prepare_notebook_metadata(nb, input_path, str(output_path))
    nb = remove_error_markers(nb)
    kernel_name = papermill_engines.nb_kernel_name(engine_name, nb, kernel_name)
    try:
        nb = papermill_engines.execute_notebook_with_engine(
            engine_name,
            nb,
            kernel_name=kernel_name,
            input_path=input_path,
            output_path=str(output_path),
            progress_bar=False,
            log_output=log_output,
            notebook_path=input_path or "",
            record_metadata=record_metadata,
            execution_timeout=cell_timeout,
            **engine_kwargs,
        )
    except BaseException as error:
        stop = error_for(error)
        record_stop(nb, stop, output_path)
        if stop is error:
            raise
        raise stop from None
    try:
        raise_for_execution_errors(nb, None)  # adds the banner; we write it
    except PapermillExecutionError as error:
        # A cell's error may be the stop's doing (a time limit interrupts the cell).
        stop = error_for(error)
        if stop is error:
            save(nb, output_path)
            raise
        record_stop(nb, stop, output_path)
        raise stop from None
    return nb  # saved as it is now when the engine's manager completed it


def load(node: dict[str, Any]) -> Any:
    """The notebook as papermill's ``load_notebook_node`` makes it: nbformat 4's latest
    minor version, papermill's metadata, every cell with tags and papermill metadata."""
    nb = nbformat.from_dict(node)  # type: ignore[no-untyped-call]
    nb = nbformat.v4.upgrade(nb) or nb  # type: ignore[no-untyped-call]
    if not hasattr(nb.metadata, "papermill"):
        nb.metadata["papermill"] = {
            "default_parameters": {},
            "parameters": {},
            "environment_variables": {},
            "version": papermill_version,
        }
    for cell in nb.cells:
        if not hasattr(cell.metadata, "tags"):
            cell.metadata["tags"] = []
        if not hasattr(cell.metadata, "papermill"):
            cell.metadata["papermill"] = {}
    return nb


def record_stop(nb: Any, stop: BaseException, output_path: Path) -> None:
    """Write why the run stopped into the cell that was running (an error output, the
    cell failed), with papermill's banner, and save."""
    from ..errors import error_name

    # The cell that was running: the last one started (cells run in order).
    started = [
        cell
        for cell in nb.cells
        if cell.get("cell_type") == "code" and cell.metadata.get("papermill", {}).get("start_time")
    ]
    running = started[-1] if started else None
    if running is not None:
        # After the cell's own error, if it had time to raise one (a cell interrupted
        # when its time was up: the traceback says where it was, this says why).
        name, message = error_name(stop), str(stop) or type(stop).__name__
        running.outputs.append(
            nbformat.v4.new_output(  # type: ignore[no-untyped-call]
                "error", ename=name, evalue=message, traceback=[f"{name}: {message}"]
            )
        )
        running.metadata.papermill.update(status="failed", exception=True)
        nb.metadata.papermill["exception"] = True
    for cell in nb.cells:  # only a code cell can have failed (papermill needs its count)
        if cell.get("cell_type") != "code" and "papermill" in cell.get("metadata", {}):
            cell.metadata.papermill["exception"] = None
    with contextlib.suppress(PapermillExecutionError):
        raise_for_execution_errors(nb, None)  # adds the banner
    save(nb, output_path)


def save(nb: Any, output_path: Path) -> None:
    from ..redact import secrets

    write_notebook(nb, output_path, secrets())
