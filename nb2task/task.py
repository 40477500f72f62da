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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from stactask import Task
from stactask.exceptions import InvalidInput

from . import engine
from .assets import S3Client, download_assets, upload_local_assets
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
from .record import link_record, record_prefix, render_html, upload_record

INPUT_PAYLOAD_NAME = "input-payload.json"
# A task option nb2task itself reads (unless the notebook declares it as a parameter).
DOWNLOAD_ASSETS_OPTION = "download_assets"


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
        timeout: float | None = None,
        download_assets: Sequence[str] | None = None,
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
        self._record_uploaded = False

    @property
    def workdir(self) -> Path:
        return self._workdir

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
        items = check_items(emitted_items(executed), self._workdir)
        self.logger.info("the notebook emitted %d item(s)", len(items))
        return items

    def run(self) -> dict[str, Any]:
        """Process the payload and return the output payload; keep the record either way."""
        try:
            features = [self._post_process_item(item) for item in self.process()]
            self.payload["features"] = features
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.assign_collections()
            if self._upload:
                features = upload_local_assets(self.payload, self.payload["features"])
                self._publish_record(features, features[0] if features else None)
            elif self._save_workdir:
                render_html(self.executed_notebook_path)  # the local record, readable
            return {**self.payload, "features": features}
        except BaseException:
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
            [p for p in (notebook, html) if p], prefix, S3Client(), bool(options.get("s3_urls"))
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
    def handler(cls, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run the task on a payload (or ``{"url": ...}``) and return the output payload."""
        document = dereference(payload)
        check_payload(document)
        return cls(document, **kwargs).run()

    def cleanup_workdir(self) -> None:
        """Remove a temporary workdir, but keep the executed notebook: it is the record."""
        if self._save_workdir or not self._workdir.exists():
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
    document = load_payload(input_url)
    if input_url is not None and "://" not in str(input_url):
        # Relative asset hrefs in a local payload file are relative to that file.
        absolutize_local_asset_hrefs(document, Path(input_url).resolve().parent)
    parsed = parse_overrides(task_class.notebook, overrides or {})
    if output_url is not None and "://" in str(output_url):
        # Where no path_template places the record, it goes beside the output payload.
        task_options.setdefault("record_prefix", str(output_url).rsplit("/", 1)[0])
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
