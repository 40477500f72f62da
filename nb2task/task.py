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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from stactask import Task
from stactask.exceptions import InvalidInput

from . import engine
from .assets import S3Client, download_assets, upload_local_assets
from .errors import NotebookCellError, OutputError, UsageError
from .harvest import check_items, check_schema, emitted_items
from .notebook import Notebook
from .payload import check_output_url, check_payload, dereference, load_payload, write_json
from .record import link_record, record_prefix, render_html, upload_record

INPUT_PAYLOAD_NAME = "input-payload.json"
# Writes the output payload where the caller wants it and returns what the run returns.
Deliver = Callable[[dict[str, Any]], dict[str, Any]]
# A task option nb2task itself reads (unless the notebook declares it as a parameter).
DOWNLOAD_ASSETS_OPTION = "download_assets"


class NotebookTask(Task):
    """A Cirrus task that runs a parameterized notebook. Make one with ``for_notebook``."""

    notebook: ClassVar[Notebook]

    @classmethod
    def for_notebook(cls, path: str | Path, task_name: str | None = None) -> type[NotebookTask]:
        """A NotebookTask class for the notebook at ``path``."""
        notebook = Notebook.load(path, task_name)
        notebook.check_runnable_as_task()
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
        timeout: float | None = None,
        download_assets: Sequence[str] | str | None = None,
        record_prefix: str | None = None,
        **kwargs: Any,
    ):
        with warnings.catch_warnings():
            # stactask warns about the legacy collections mapping on every access.
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(payload, **kwargs)
            options = dict(self.task_options)
            declared = self.notebook.schema.get(DOWNLOAD_ASSETS_OPTION) is not None
            option_assets = (
                options.get(DOWNLOAD_ASSETS_OPTION)
                if declared
                else options.pop(DOWNLOAD_ASSETS_OPTION, None)
            )
            self.parameters_to_inject = self.notebook.schema.resolve(
                strict={**options, **(overrides or {})},
                lenient=self.payload.workflow_options,
            )
        self.download_assets = _asset_keys(
            download_assets
            if download_assets is not None
            else option_assets
            if option_assets is not None
            else self.notebook.settings.download_assets
        )
        self.cell_timeout = cell_timeout
        self.timeout = timeout
        self.record_prefix = record_prefix
        self._schema_checks = kwargs.get("validate", True)
        self._asset_uploads = S3Client()  # undone if the run fails after uploading
        self._record_uploaded = False

    def validate(self) -> bool:
        """stactask's hook (``--validate``): the input items against the STAC core schema."""
        for index, item in enumerate(self.payload.items_as_dicts):
            check_schema(item, f"payload feature {index} (id {item.get('id')!r})", InvalidInput)
        return True

    @property
    def executed_notebook_path(self) -> Path:
        """Where the executed notebook, the run's record, is kept."""
        return self._workdir / f"{self.name}.executed.ipynb"

    def process(self, **_: Any) -> list[dict[str, Any]]:
        """Download assets, run the notebook on the payload, return the items it emitted."""
        # The input is valid: boot the kernel while the assets download.
        engine.launcher.prestart(self.notebook.path.parent)
        features = download_assets(
            self.payload.items_as_dicts, self.download_assets, self._workdir / "input-assets"
        )
        input_path = self._workdir / INPUT_PAYLOAD_NAME
        input_path.write_text(json.dumps({**self.payload, "features": features}), encoding="utf-8")

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
                timeout=self.timeout,
            )
        except NotebookCellError as err:
            if err.dotted_name == "stactask.exceptions.InvalidInput":
                raise InvalidInput(str(err)) from None
            raise
        items = check_items(
            emitted_items(executed), self.notebook.path.parent, schema=self._schema_checks
        )
        self.logger.info("the notebook emitted %d item(s)", len(items))
        return items

    def run(self, deliver: Deliver | None = None) -> dict[str, Any]:
        """Process the payload and return the output payload (after ``deliver`` has
        written it, if given). On failure nothing uploaded stays but the run's record."""
        try:
            features = [self._post_process_item(item) for item in self.process()]
            self.payload["features"] = features
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.assign_collections()
            if self._upload:
                features = upload_local_assets(
                    self.payload, self.payload["features"], self._asset_uploads
                )
                self._publish_record(features, features[0] if features else None)
            elif self._save_workdir:
                # A kept workdir is the local record: make it readable (costs ~0.5 s).
                render_html(self.executed_notebook_path)
            output = {**self.payload, "features": features}
            return deliver(output) if deliver else output
        except BaseException:
            self._asset_uploads.delete_uploaded()
            self._keep_record_of_failure()
            raise
        finally:
            self.cleanup_workdir()

    def _publish_record(
        self, features: list[dict[str, Any]], placed_by: dict[str, Any] | None
    ) -> None:
        """Upload the executed notebook and its HTML; link them from ``features``."""
        notebook = self.executed_notebook_path
        if not notebook.exists():
            return
        html = render_html(notebook)
        prefix = record_prefix(self.payload, placed_by) or self.record_prefix
        if prefix is None or "://" not in prefix:
            self.logger.warning("no upload location for the run record; kept at %s", notebook)
            return
        options = self.payload.get_collection_upload_options(
            placed_by.get("collection") if placed_by else None
        )
        urls = upload_record(
            [p for p in (notebook, html) if p],
            prefix,
            S3Client(),
            s3_urls=bool(options.get("s3_urls")),
            headers=options.get("headers") or {},
        )
        self._record_uploaded = True
        self.logger.info("run record uploaded: %s", ", ".join(urls.values()))
        link_record(features, urls[notebook.name], urls.get(html.name) if html else None)

    def _keep_record_of_failure(self) -> None:
        notebook = self.executed_notebook_path
        if not notebook.exists():
            return
        self.logger.error("executed notebook kept at %s", notebook)
        if not self._upload:
            render_html(notebook)
            return
        try:
            placed_by = self._first_input_item_with_collection()
            self._publish_record([], placed_by)
        except Exception as err:  # noqa: BLE001 - the run's own error is what matters
            self.logger.warning("could not upload the run record: %s", err)

    def _first_input_item_with_collection(self) -> dict[str, Any] | None:
        from stactask.utils import find_collection

        items = self.payload.items_as_dicts
        if not items:
            return None
        item = dict(items[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            config = self.payload.collection_matchers or self.payload.collection_mapping
            item["collection"] = find_collection(config, item) or item.get("collection")
        return item

    @classmethod
    def handler(
        cls, payload: dict[str, Any], deliver: Deliver | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the task on a payload (or ``{"url": ...}``) and return the output payload."""
        document = check_payload(dereference(payload))
        return cls(document, **kwargs).run(deliver)

    def cleanup_workdir(self) -> None:
        """Remove a temporary workdir once its contents are safe elsewhere: outputs and
        record uploaded. Without upload, the outputs the payload points at stay; on a
        failed run, the executed notebook stays (its path is logged)."""
        if self._save_workdir or not self._workdir.exists():
            return
        if not self._upload:
            self.logger.info("outputs kept in %s (upload is off)", self._workdir)
            return
        if self._record_uploaded:
            super().cleanup_workdir()
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


def _asset_keys(value: Any) -> tuple[str, ...]:
    """Asset keys to download: a list, a comma-separated string, or ``*`` for all."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(k.strip() for k in value.split(",") if k.strip())
    if isinstance(value, list | tuple) and all(isinstance(k, str) for k in value):
        return tuple(value)
    raise InvalidInput(f"{DOWNLOAD_ASSETS_OPTION} must be a list of asset keys, got {value!r}")


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
    parsed = parse_overrides(task_class.notebook, overrides or {})
    check_output_url(output_url)
    document = load_payload(input_url)
    if output_url is not None and "://" in str(output_url):
        # Where no path_template places the record, it goes beside the output payload.
        task_options.setdefault("record_prefix", str(output_url).rsplit("/", 1)[0])

    def deliver(output: dict[str, Any]) -> dict[str, Any]:
        try:
            write_json(output, output_url)
        except Exception as err:
            raise OutputError(f"cannot write the output payload to {output_url}: {err}") from err
        return output

    return task_class.handler(document, deliver=deliver, overrides=parsed, **task_options)


def parse_overrides(notebook: Notebook, overrides: dict[str, str]) -> dict[str, Any]:
    """Command-line ``-p NAME VALUE`` strings as typed values; a wrong one is a usage error."""
    parsed: dict[str, Any] = {}
    for name, text in overrides.items():
        param = notebook.schema.get(name)
        if param is None:
            declared = ", ".join(notebook.schema.names) or "none"
            raise UsageError(f"-p {name}: no such parameter (the notebook declares: {declared})")
        try:
            parsed[name] = param.check(param.parse_cli_value(text))
        except InvalidInput as err:
            raise UsageError(f"-p {name}: {err}") from None
    return parsed
