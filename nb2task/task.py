"""``NotebookTask``: a stactask ``Task`` whose ``process`` runs a notebook.

The lifecycle is stactask's own, through its unchanged ``handler(payload, **kwargs)``:

1. ``__init__``: stactask reads the payload; nb2task checks its structure (and its
   items' STAC schema unless ``check_schema=False``); the notebook's parameters are
   resolved and checked by its schema (types and constraints), before anything runs.
2. ``process(**parameters)``: download the assets the notebook wants, run it with
   ``payload``, ``workdir`` and the parameters injected (through the task's
   executor), check the items it emitted and upload their local assets, as a
   stactask ``process`` does (so per-collection upload options follow the collection
   the items have then, not the one assigned after).
3. stactask post-processes the items, assigns collections, cleans up the workdir.

stactask's ``validate()`` is the notebook's cells tagged ``nb2task-validate``: they
run first (the assets download after them) unless ``validate=False``
(``--no-validate``). The run's record and the output payload are written after the
handler: see ``nb2task.publish`` and ``nb2task.runner``.
"""

from __future__ import annotations

import atexit
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stactask import Task
from stactask.exceptions import InvalidInput

from . import progress
from .assets import download_assets
from .engines import Executor, Limits, choose_engine, create_executor
from .errors import Nb2TaskError, NoItemsError, NotebookCellError, NotebookExitedEarly
from .failure import with_traceback
from .harvest import check_emitted
from .notebook import Notebook
from .provenance import RUN_KEY, payload_section, run_section
from .runtime import DOWNLOADS_FOLDER, RUN_FILE
from .validation import check_payload

if TYPE_CHECKING:
    from .publish import Publication

INPUT_PAYLOAD_NAME = "input-payload.json"
# A task option nb2task itself reads (unless the notebook declares it as a parameter).
DOWNLOAD_ASSETS_OPTION = "download_assets"


class NotebookTask(Task):
    """A Cirrus task that runs a parameterized notebook. Make one with ``for_notebook``."""

    notebook: ClassVar[Notebook]
    _shared_executor: ClassVar[Executor | None] = None

    @classmethod
    def for_notebook(
        cls, notebook: str | Path | Notebook, task_name: str | None = None
    ) -> type[NotebookTask]:
        """A NotebookTask class for a notebook (its path, or as loaded)."""
        if not isinstance(notebook, Notebook):
            notebook = Notebook.load(notebook, task_name)
            notebook.check_runnable_as_task()
        settings = notebook.settings
        task_class = type(
            f"NotebookTask_{settings.name}",
            (cls,),
            {
                "notebook": notebook,
                "name": settings.name,
                "version": settings.version,
                "description": settings.description or f"nb2task notebook {notebook.path.name}",
            },
        )
        # stactask's handler logs a failure with its traceback; ours are one line each.
        logging.getLogger(settings.name).addFilter(_NoTracebackForKnownErrors())
        return task_class

    @classmethod
    def shared_executor(cls) -> Executor:
        """The executor tasks of this class use when none is given (created once)."""
        if cls._shared_executor is None:
            notebook = cls.notebook
            name = choose_engine(None, notebook.settings.engine, notebook.kernelspec)
            cls._shared_executor = create_executor(name, notebook.path, notebook.kernelspec)
            atexit.register(cls._shared_executor.close)
        return cls._shared_executor

    def __init__(
        self,
        payload: dict[str, Any],
        workdir: str | Path | None = None,
        save_workdir: bool | None = None,
        upload: bool = True,
        validate: bool = True,
        *,
        check_schema: bool = True,
        publication: Publication | None = None,
        executor: Executor | None = None,
        cli_parameters: dict[str, str] | None = None,
        parameter_values: dict[str, Any] | None = None,
        parameter_values_from: str = "-f",
        download_assets: Sequence[str] | str | None = None,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
        log_output: bool = False,
        require_items: bool = False,
        payload_record: dict[str, Any] | None = None,
    ):
        # stactask calls validate() only when asked to validate (the notebook's validate
        # cells); nb2task checks the payload's structure always, the schema if asked.
        self.schema_checks = check_schema
        self.run_validate_cells = validate
        try:
            super().__init__(payload, workdir, save_workdir, upload=upload, validate=validate)
        except (TypeError, ValueError) as err:  # stactask's Payload.validate
            raise InvalidInput(f"invalid payload: {err}") from None
        check_payload(self.payload, schema=self.schema_checks)
        self.publication = publication
        options = self._known_options(dict(self.task_options))
        if self.notebook.schema.get(DOWNLOAD_ASSETS_OPTION) is None:
            option_assets = options.pop(DOWNLOAD_ASSETS_OPTION, None)
        else:
            option_assets = None
        self._parameters = self.notebook.schema.resolve(
            options,
            self.payload.workflow_options,
            cli_parameters,
            parameter_values,
            parameter_values_from,
        )
        # What the payload cannot bring back when the run is replayed.
        given = {*(parameter_values or {}), *(cli_parameters or {})}
        self.overrides = {k: v for k, v in self._parameters.items() if k in given}
        self.download_assets = _asset_keys(
            download_assets
            if download_assets is not None
            else option_assets
            if option_assets is not None
            else self.notebook.settings.download_assets
        )
        self.executor = executor or self.shared_executor()
        self.limits = limits
        self.log_output = log_output
        self.require_items = require_items
        self.payload_record = payload_record or payload_section(None, dict(self.payload))

    def validate(self) -> bool:
        """stactask's hook. A notebook's validate step is its ``nb2task-validate``
        cells, which run in the notebook before the assets download (see ``process``)."""
        return True

    def _known_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The task's options, less the unknown ones if the notebook's
        ``unknown_options`` setting says to warn about or ignore them (``error``: kept,
        for the schema to refuse)."""
        policy = self.notebook.settings.unknown_options
        if policy == "error":
            return options
        known = {*self.notebook.schema.names, DOWNLOAD_ASSETS_OPTION}
        unknown = sorted(name for name in options if name not in known)
        if unknown and policy == "warn":
            self.logger.warning(
                "ignoring unknown option(s) in process[0].tasks.%s: %s (the notebook declares: %s)",
                self.name,
                ", ".join(map(repr, unknown)),  # names from the payload: quoted, one line
                ", ".join(self.notebook.schema.names) or "none",
            )
        return {name: value for name, value in options.items() if name not in unknown}

    @property
    def parameters(self) -> dict[str, Any]:
        """The notebook's parameters for this payload (what ``process`` receives):
        workflow_options, then ``tasks.<name>``, then ``-p``, checked by its schema."""
        return dict(self._parameters)

    @property
    def workdir(self) -> Path:
        # stactask keeps the work directory private (``_workdir``) and has no accessor.
        return Path(self._workdir)

    @property
    def executed_notebook_path(self) -> Path:
        """Where the executed notebook, the run's record, is kept."""
        return self.workdir / f"{self.name}.executed.ipynb"

    def process(self, **parameters: Any) -> list[dict[str, Any]]:
        """Download assets, run the notebook on the payload, return the items it emitted."""
        self.executor.prepare()  # the input is valid: warm up while the assets download
        input_path = self.workdir / INPUT_PAYLOAD_NAME
        downloads = self.workdir / DOWNLOADS_FOLDER
        features = self.payload.items_as_dicts
        download_cell = None
        if self.download_assets and self._download_after_validate_cells():
            # The notebook's validate cells may refuse the payload: download after them,
            # in the notebook, with the same function.
            download_cell = _download_cell_source(input_path, self.download_assets, downloads)
        elif self.download_assets:
            progress.stage("download", f"assets {', '.join(self.download_assets)}")
            features = download_assets(features, self.download_assets, downloads)
        input_path.write_text(json.dumps({**self.payload, "features": features}), encoding="utf-8")
        run_facts = {
            "task_name": self.name,
            "task_version": self.version,
            "workdir": str(self.workdir),
        }
        (self.workdir / RUN_FILE).write_text(json.dumps(run_facts), encoding="utf-8")

        injected = dict(parameters)
        declared = self.notebook.schema.declared_reserved
        if "payload" in declared:
            injected["payload"] = str(input_path)
        if "workdir" in declared:
            injected["workdir"] = str(self.workdir)

        self.logger.info(
            "executing %s (%s engine) → %s",
            self.notebook.path.name,
            self.executor.name,
            self.executed_notebook_path,
        )
        try:
            execution = self.executor.execute(
                self.notebook.runnable(
                    validate=self.run_validate_cells, download_source=download_cell
                ),
                injected,
                output_path=self.executed_notebook_path,
                cwd=self.notebook.path.parent,
                limits=self.limits,
                log_output=self.log_output,
                record_metadata={RUN_KEY: self.run_record()},
            )
        except NotebookCellError as err:
            # The traceback is in the record: the error names the failing line.
            error = with_traceback(err, self.executed_notebook_path)
            if error.dotted_name == "stactask.exceptions.InvalidInput":
                raise InvalidInput(str(error)) from error
            raise error from None
        if execution.stopped_at is not None:
            if not execution.emit_calls:
                raise NotebookExitedEarly(
                    f"the notebook called sys.exit() in cell In [{execution.stopped_at}] "
                    "before emitting anything: call nb2task.emit([]) first to end a run "
                    "with no items"
                )
            self.logger.info("the notebook stopped at cell In [%s]", execution.stopped_at)
        items = check_emitted(execution.items, self.notebook.path.parent, self.schema_checks)
        self.logger.info("the notebook emitted %d item(s)", len(items))
        if not items:
            if self.require_items:
                raise NoItemsError("the notebook emitted no items (--require-items)")
            self.logger.warning(
                "the notebook emitted no items: the output payload has no features "
                "(--require-items makes this an error)"
            )
        if self.publication is not None and self.publication.upload and items:
            progress.stage("upload", f"the assets of {len(items)} item(s)")
            items = self.publication.upload_outputs(items)
        return items

    def _download_after_validate_cells(self) -> bool:
        """True when the metadata's downloads wait for the notebook's validate cells
        (they run in the kernel: a Python one)."""
        language = str(self.notebook.kernelspec.get("language") or "python").lower()
        return self.run_validate_cells and self.notebook.has_validate_cells and language == "python"

    def run_record(self) -> dict[str, Any]:
        """What the executed notebook records of this run (``nb2task.provenance``)."""
        return run_section(
            self.payload_record,
            self.name,
            self.version,
            self.executor.name,
            self.overrides,
            self.download_assets,
        )


class _NoTracebackForKnownErrors(logging.Filter):
    """Drops the traceback stactask's handler logs with nb2task's own (expected) errors:
    they are reported in one line, and the traceback shows only nb2task's internals."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, Nb2TaskError | InvalidInput):
            record.exc_info = None
            record.exc_text = None
        return True


def _download_cell_source(payload: Path, keys: Sequence[str], directory: Path) -> str:
    """The cell that downloads the run's assets in the notebook, after its validate
    cells: values written as Python literals (``repr``), never pasted as text."""
    call = f"download_payload_assets({str(payload)!r}, {list(keys)!r}, {str(directory)!r})"
    return (
        "# nb2task: the download_assets setting's assets download here, after the validate cells\n"
        f"__import__('nb2task.assets', fromlist=['assets']).{call}\n"
    )


def _asset_keys(value: Any) -> tuple[str, ...]:
    """Asset keys to download: a list, a comma-separated string, or ``*`` for all."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(k.strip() for k in value.split(",") if k.strip())
    if isinstance(value, list | tuple) and all(isinstance(k, str) for k in value):
        return tuple(value)
    raise InvalidInput(f"{DOWNLOAD_ASSETS_OPTION} must be a list of asset keys, got {value!r}")
