"""The path every entry point shares: options → task → outputs published → output written.

``RunOptions`` is what a run is asked (the CLI, the Lambda handler, ``--payloads`` and
the bench build one). ``Runner`` holds one notebook task and its executor, warm across
payloads, and runs a payload through stactask's handler, then publishes: outputs
uploaded, the record kept, the output payload written; on failure nothing but the
record. ``Workspace`` owns the work directory's lifetime.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import locks, progress
from .engines import Executor, Limits, choose_engine, create_executor
from .notebook import Notebook

if TYPE_CHECKING:
    from .publish import Output
    from .task import NotebookTask

logger = logging.getLogger(__name__)

LOCAL_WORKDIR = "local-output"
LOCAL_OUTPUT = "output-payload.json"


@dataclass(frozen=True)
class RunOptions:
    """How to run a notebook task: stactask's run options, plus nb2task's own."""

    workdir: Path | None = None  # kept; a temporary one if None
    save_workdir: bool | None = None  # keep a temporary workdir too
    upload: bool = True
    validate: bool = True  # stactask's: run the notebook's validate cells
    check_schema: bool = True  # the STAC schema of input and output items
    task_name: str | None = None
    parameters: tuple[tuple[str, str], ...] = ()  # -p NAME VALUE, parsed by the schema
    # Typed values under -p (-f FILE; a replayed run's), named in messages by the second.
    parameter_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parameter_values_from: str = "-f"
    download_assets: str | None = None  # comma-separated keys, '*' for all
    cell_timeout: float | None = None
    timeout: float | None = None
    engine: str | None = None  # fork | kernel; None: the notebook's setting or default
    html: bool | None = None  # render the record as HTML on success too
    log_output: bool = False  # cell output to the log as it comes
    require_items: bool = False  # a run that emits nothing fails
    # Follow a {"url"} payload to a local path too (the command line); in Lambda and in
    # the Batch image, only to s3://: a payload must not make the task read its disk.
    local_indirection: bool = True

    @classmethod
    def local(cls, workdir: Path | None = None, **options: Any) -> RunOptions:
        """stactask's ``--local``: workdir ``local-output/`` (kept), no upload."""
        return cls(
            workdir=workdir or Path(LOCAL_WORKDIR), save_workdir=True, upload=False, **options
        )

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @property
    def limits(self) -> Limits:
        return Limits(self.cell_timeout, self.timeout)


def retry_storage_errors() -> None:
    """Every AWS client nb2task (and stactask, stac-asset) makes retries with backoff: a
    503 SlowDown, a throttle or a reset connection is tried again (standard mode, 5
    attempts), unless the environment says otherwise."""
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", "5")


class Workspace:
    """A run's work directory: given (kept) or temporary (removed once nothing in it is
    needed: after upload; a failed run keeps its executed notebook)."""

    def __init__(self, workdir: Path | None, save: bool | None) -> None:
        self.temporary = workdir is None
        self.path = Path(tempfile.mkdtemp(prefix="nb2task-")) if workdir is None else workdir
        self.path.mkdir(parents=True, exist_ok=True)
        self.path = self.path.resolve()
        self.keep = bool(save) or not self.temporary

    def close(self, *, upload: bool, record: Path, record_uploaded: bool) -> None:
        """Remove what need not stay: with upload on, everything but a record that could
        not be uploaded; with upload off, nothing (the output payload points here)."""
        if self.keep or not self.path.exists():
            return
        if not upload:
            logger.info("outputs kept in %s (upload is off)", self.path)
            return
        if record_uploaded or not record.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child == record:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        logger.info("executed notebook kept at %s", record)


class Runner:
    """A notebook task ready for payloads, with its executor kept warm between them."""

    def __init__(
        self, notebook: str | Path, options: RunOptions = RunOptions(), once: bool = False
    ) -> None:
        """A runner for ``notebook`` (for one payload only, if ``once``: its engine then
        warms up for that one)."""
        self.options = options
        # An unusable notebook is refused before any process starts.
        loaded = Notebook.load(notebook, options.task_name)
        loaded.check_runnable_as_task()
        # The engine starts warming up next: its imports overlap stactask's below.
        engine = choose_engine(options.engine, loaded.settings.engine, loaded.kernelspec)
        self.executor: Executor = create_executor(engine, loaded.path, loaded.kernelspec, once=once)
        try:
            self.executor.prepare()
            from .task import NotebookTask

            self.task_class: type[NotebookTask] = NotebookTask.for_notebook(loaded)
        except BaseException:
            self.executor.close()
            raise

    @property
    def name(self) -> str:
        return self.task_class.name

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        source: str | Path | dict[str, Any] | None,
        output: Output,
        *,
        options: RunOptions | None = None,
        stdin: IO[str] | None = None,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Run the task on the payload at ``source`` (path, URL, stdin if None, or a
        parsed event); write the output payload to ``output`` and return what it returns.
        ``origin``: where a parsed ``source`` was read from, for the record."""
        options = options or self.options
        output.check()
        with locks.hold(claimed_paths(options, output)):
            return self._run(source, output, options, stdin, origin)

    def _run(
        self,
        source: str | Path | dict[str, Any] | None,
        output: Output,
        options: RunOptions,
        stdin: IO[str] | None,
        origin: str | None,
    ) -> dict[str, Any]:
        """``run``, with its workdir and output file to itself."""
        from . import payload as payload_io
        from .errors import error_line, exit_code
        from .provenance import payload_section, stamp_error
        from .publish import Publication

        document = payload_io.load(source, stdin, options.local_indirection)
        progress.begin(str(document.get("id") or "") or None)
        progress.stage("check", "the payload and its parameters")
        workspace = Workspace(options.workdir, options.save_workdir)
        html = (
            options.html
            if options.html is not None
            else self.task_class.notebook.settings.record_html
        )
        publication = Publication(document, options.upload, html, output.record_prefix)
        record = workspace.path / f"{self.name}.executed.ipynb"
        # A kept workdir may hold an earlier run's record: never report it as this one's.
        for stale in (record, record.with_suffix(".html")):
            stale.unlink(missing_ok=True)
        try:
            result = self.task_class.handler(
                document,
                workdir=workspace.path,
                save_workdir=True,  # the workspace decides, after publishing
                upload=options.upload,
                validate=options.validate,
                check_schema=options.check_schema,
                publication=publication,  # the task uploads, as a stactask process does
                executor=self.executor,
                cli_parameters=dict(options.parameters),
                parameter_values=dict(options.parameter_values),
                parameter_values_from=options.parameter_values_from,
                download_assets=options.download_assets,
                limits=options.limits,
                log_output=options.log_output,
                require_items=options.require_items,
                payload_record=payload_section(origin or source, document),
            )
            features = list(result["features"])
            if record.exists():
                publication.publish_record(record, features)
            written = output.write({**result, "features": features})
            progress.stage("done", outcome(document, features, output, record))
            return written
        except BaseException as err:
            if isinstance(err, Exception | KeyboardInterrupt) and record.exists():
                stamp_error(record, error_line(err), exit_code(err))
            publication.rollback()
            publication.publish_failure_record(record)
            raise
        finally:
            workspace.close(
                upload=options.upload,
                record=record,
                record_uploaded=publication.record_uploaded,
            )
            progress.begin(None)  # this thread's later records are not this payload's


def claimed_paths(options: RunOptions, output: Output) -> dict[str, Path]:
    """What a run must have to itself: a given workdir, and an output that is a local
    regular file (or will be); a temporary workdir, S3, stdout or a device are no one
    else's."""
    claims = {"--workdir": options.workdir} if options.workdir is not None else {}
    url = getattr(output, "url", None)
    if url is not None and ("://" not in url or url.startswith("file://")):
        path = Path(url.removeprefix("file://"))
        if not path.exists() or path.is_file():
            claims["--output"] = path
    return claims


def outcome(
    payload: dict[str, Any], features: list[dict[str, Any]], output: Output, record: Path
) -> str:
    """Where a successful run's outputs went, in one line: the output payload, the
    assets the run made (the ones not among the input's), the record."""
    from .record import RECORD_ROLE

    def assets(items: Any) -> list[dict[str, Any]]:
        items = items if isinstance(items, list) else []
        return [
            asset
            for item in items
            if isinstance(item, dict)
            for asset in (item.get("assets") or {}).values()
            if isinstance(asset, dict)
        ]

    from .publish import StreamOutput

    url = getattr(output, "url", None)
    where = _shown(url) if url else "stdout" if isinstance(output, StreamOutput) else "returned"
    parts = [f"{len(features)} item(s) → {where}"]
    known = {a.get("href") for a in assets(payload.get("features"))}
    made = [
        str(a["href"])
        for a in assets(features)
        if a.get("href") not in known and RECORD_ROLE not in (a.get("roles") or [])
    ]
    if made:
        folders = sorted({_shown(href.rsplit("/", 1)[0]) + "/" for href in made})
        parts.append(f"{len(made)} asset(s) in {', '.join(folders[:3])}")
    notebook = next(
        (
            str(a["href"])
            for a in assets(features)
            if RECORD_ROLE in (a.get("roles") or []) and str(a.get("type", "")).endswith("json")
        ),
        None,
    )
    if notebook or record.exists():
        parts.append(f"record {notebook or _shown(str(record))}")
    return "; ".join(parts)


def _shown(path: str) -> str:
    """A local path relative to the current folder when it is below it."""
    if "://" in path:
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
