"""``NotebookTask``: a stactask ``Task`` whose ``process`` runs a notebook.

The pipeline for one payload: check the payload and the parameters (before any
kernel starts) → write the input payload into the workdir → execute the notebook
with ``payload``, ``workdir`` and the task parameters injected → harvest and
validate the emitted items → assign collections → output payload.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, ClassVar

from stactask import Task
from stactask.exceptions import InvalidInput

from . import engine
from .errors import NotebookCellError
from .harvest import check_items, emitted_items
from .notebook import Notebook
from .payload import (
    absolutize_local_asset_hrefs,
    check_payload,
    dereference,
    load_payload,
    write_json,
)

INPUT_PAYLOAD_NAME = "input-payload.json"


class NotebookTask(Task):
    """A Cirrus task that runs a parameterized notebook. Make one with ``for_notebook``."""

    notebook: ClassVar[Notebook]

    @classmethod
    def for_notebook(cls, path: str | Path, task_name: str | None = None) -> type[NotebookTask]:
        """A NotebookTask class for the notebook at ``path``."""
        notebook = Notebook.load(path, task_name)
        settings = notebook.settings
        return type(
            f"NotebookTask_{settings.name}",
            (cls,),
            {
                "notebook": notebook,
                "name": settings.name,
                "version": settings.version,
                "description": settings.description or f"nb2task notebook {notebook.path.name}",
            },
        )

    def __init__(
        self,
        payload: dict[str, Any],
        *,
        overrides: dict[str, Any] | None = None,
        cell_timeout: float | None = None,
        **kwargs: Any,
    ):
        with warnings.catch_warnings():
            # stactask warns about the legacy collections mapping on every access.
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(payload, **kwargs)
            self.parameters_to_inject = self.notebook.schema.resolve(
                strict={**self.task_options, **(overrides or {})},
                lenient=self.payload.workflow_options,
            )
        self.cell_timeout = cell_timeout

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def executed_notebook_path(self) -> Path:
        """Where the executed notebook, the run's record, is kept."""
        return self._workdir / f"{self.name}.executed.ipynb"

    def process(self, **_: Any) -> list[dict[str, Any]]:
        """Run the notebook on the payload and return the items it emitted."""
        input_path = self._workdir / INPUT_PAYLOAD_NAME
        input_path.write_text(json.dumps(self.payload), encoding="utf-8")

        injected = dict(self.parameters_to_inject)
        declared = self.notebook.schema.declared_reserved
        if "payload" in declared:
            injected["payload"] = str(input_path)
        if "workdir" in declared:
            injected["workdir"] = str(self._workdir)

        self.logger.info("executing %s → %s", self.notebook.path, self.executed_notebook_path)
        try:
            executed = engine.execute(
                self.notebook.runnable(),
                self.executed_notebook_path,
                injected,
                cwd=self.notebook.path.parent,
                cell_timeout=self.cell_timeout,
            )
        except NotebookCellError as err:
            self.logger.error("executed notebook kept at %s", self.executed_notebook_path)
            if err.dotted_name == "stactask.exceptions.InvalidInput":
                raise InvalidInput(str(err)) from None
            raise
        items = check_items(emitted_items(executed), self._workdir)
        self.logger.info("the notebook emitted %d item(s)", len(items))
        return items

    def run(self) -> dict[str, Any]:
        """Process the payload and return the output payload."""
        try:
            items = [self._post_process_item(item) for item in self.process()]
            self.payload["features"] = items
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.assign_collections()
            return dict(self.payload)
        finally:
            self.cleanup_workdir()

    @classmethod
    def handler(cls, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run the task on a payload (or ``{"url": ...}``) and return the output payload."""
        document = dereference(payload)
        check_payload(document)
        return cls(document, **kwargs).run()

    def cleanup_workdir(self) -> None:
        """Remove a temporary workdir, but keep the executed notebook: it is the record."""
        if self._save_workdir or not self._workdir.exists():
            return
        for child in self._workdir.iterdir():
            if child == self.executed_notebook_path:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if self.executed_notebook_path.exists():
            self.logger.info("executed notebook kept at %s", self.executed_notebook_path)


def run_notebook(
    notebook: str | Path,
    input_url: str | Path | None = None,
    output_url: str | Path | None = None,
    *,
    task_name: str | None = None,
    overrides: dict[str, str] | None = None,
    **task_options: Any,
) -> dict[str, Any]:
    """Run ``notebook`` as a task on the payload at ``input_url`` (stdin if None),
    write the output payload to ``output_url`` (stdout if None) and return it.

    ``overrides`` are ``-p NAME VALUE`` strings, parsed by each parameter's type.
    ``task_options`` are stactask's: workdir, save_workdir, upload, validate.
    """
    task_class = NotebookTask.for_notebook(notebook, task_name)
    document = load_payload(input_url)
    if input_url is not None and "://" not in str(input_url):
        # Relative asset hrefs in a local payload file are relative to that file.
        absolutize_local_asset_hrefs(document, Path(input_url).resolve().parent)
    parsed = parse_overrides(task_class.notebook, overrides or {})
    output = task_class.handler(document, overrides=parsed, **task_options)
    write_json(output, output_url)
    return output


def parse_overrides(notebook: Notebook, overrides: dict[str, str]) -> dict[str, Any]:
    """Command-line ``-p NAME VALUE`` strings as typed values."""
    parsed: dict[str, Any] = {}
    for name, text in overrides.items():
        param = notebook.schema.get(name)
        parsed[name] = param.parse_cli_value(text) if param else text
    return parsed
