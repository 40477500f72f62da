"""``nb2task replay RECORD``: from a run's executed notebook (local or ``s3://``) back to
a run here, on the same payload, parameters, task name and engine, or to a folder ready
for JupyterLab.

The record says what the run was (``nb2task.provenance``): the payload's URL and digest
(or the payload itself when it came with no URL), the parameters set on the command
line, the task, the engine, and how the run ended. The code that ran is in the record
too: replay runs it, unless the notebook it came from is here unchanged (then that one,
in its own folder) or ``--notebook`` names another.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError, error_line, exit_code
from .notebook import DOWNLOAD_TAG, ENGINES, TASK_NAME, Notebook
from .provenance import RUN_KEY, payload_digest, run_metadata

logger = logging.getLogger(__name__)

BANNER_TAG = "papermill-error-cell-tag"  # papermill's error banners
INJECTED_TAG = "injected-parameters"
REPLAY_WORKDIR = Path("local-output") / "replay"
JUPYTER_PAYLOAD = "payload.json"
JUPYTER_WORKDIR = "work"
# A record is read whole; one larger than this is not a record nb2task wrote.
MAX_RECORD_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Record:
    """An executed notebook, read, with what it says about its run."""

    url: str
    node: dict[str, Any]

    @property
    def run(self) -> dict[str, Any]:
        return run_metadata(self.node)

    @property
    def papermill(self) -> dict[str, Any]:
        section = self.node.get("metadata", {}).get("papermill", {})
        return dict(section) if isinstance(section, dict) else {}

    @property
    def task_name(self) -> str:
        return str(self.run.get("task", {}).get("name") or "")

    @property
    def error(self) -> str | None:
        """The recorded run's last error line, None if it succeeded."""
        error = self.run.get("error")
        return str(error["line"]) if isinstance(error, dict) and error.get("line") else None

    @property
    def workdir(self) -> str | None:
        """The recorded run's work folder (where its record was written)."""
        output = self.papermill.get("output_path")
        return str(Path(output).parent) if isinstance(output, str) else None


def read_record(url: str | Path) -> Record:
    """The executed notebook at ``url`` (a path or an fsspec URL); UsageError if it is not
    a record nb2task wrote, is over ``MAX_RECORD_BYTES``, or has a field of the wrong
    shape (``record_problem``)."""
    text = str(url)
    try:
        if "://" in text:
            import fsspec

            with fsspec.open(text, "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        else:
            with Path(text).open("rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise UsageError(f"the record {text} is over {MAX_RECORD_BYTES // 1024**2} MB")
        node = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise UsageError(f"cannot read the record {text}: {' '.join(str(err).split())}") from None
    if not isinstance(node, dict) or not isinstance(node.get("cells"), list):
        raise UsageError(f"{text} is not a notebook")
    metadata = node.get("metadata", {})
    if not isinstance(metadata, dict) or not isinstance(metadata.get(RUN_KEY, {}), dict):
        raise UsageError(f"{text} is not a notebook: its metadata is not a mapping")
    record = Record(text, node)
    if not record.run:
        raise UsageError(
            f"{text} has no '{RUN_KEY}' metadata: it is not the executed notebook of an nb2task "
            "run (or comes from an nb2task older than replay); run the notebook with "
            "`nb2task run` and the payload instead"
        )
    problem = record_problem(record)
    if problem:
        raise UsageError(f"the record {text} cannot be replayed: {problem}")
    return record


def _shown(value: Any) -> str:
    return f"{value!r:.60}" if isinstance(value, str) else f"a {type(value).__name__}"


def _parameters_problem(values: Any, field: str) -> str | None:
    if not isinstance(values, dict):
        return f"{field} must be a mapping, not {_shown(values)}"
    bad = next((k for k in values if not (isinstance(k, str) and k.isidentifier())), None)
    if bad is not None:
        return f"{field} has a key that is not a parameter name: {_shown(bad)}"
    return None


def record_problem(record: Record) -> str | None:
    """What is wrong with a field replay uses, in one phrase; None if nothing is.

    A record is data from anywhere (a shared bucket, a bug report): every field that
    becomes a file name, a parameter, an engine or a URL gets a run's own rules."""
    run = record.run
    task = run.get("task", {})
    if not isinstance(task, dict):
        return f"{RUN_KEY}.task must be a mapping, not {_shown(task)}"
    name = task.get("name")
    # The name becomes a file name: the task-name rule keeps it a single plain name.
    if name is not None and not (isinstance(name, str) and TASK_NAME.fullmatch(name)):
        return f"{RUN_KEY}.task.name {_shown(name)} is not a task name (letters, digits, '-')"
    if not isinstance(task.get("version", ""), str):
        return f"{RUN_KEY}.task.version must be a string, not {_shown(task['version'])}"
    engine = run.get("engine")
    if engine is not None and engine not in ENGINES:
        return f"{RUN_KEY}.engine must be one of {', '.join(ENGINES)}, not {_shown(engine)}"
    problem = _parameters_problem(run.get("parameters") or {}, f"{RUN_KEY}.parameters")
    if problem:
        return problem
    keys = run.get("download_assets") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        return f"{RUN_KEY}.download_assets must be a list of asset keys, not {_shown(keys)}"
    payload = run.get("payload") or {}
    if not isinstance(payload, dict):
        return f"{RUN_KEY}.payload must be a mapping, not {_shown(payload)}"
    for key, kind in (("url", str), ("digest", str), ("inline", dict)):
        if payload.get(key) is not None and not isinstance(payload[key], kind):
            return f"{RUN_KEY}.payload.{key} must be a {kind.__name__}, not {_shown(payload[key])}"
    error = run.get("error")
    if error is not None and not (isinstance(error, dict) and isinstance(error.get("line"), str)):
        return f"{RUN_KEY}.error must be a mapping with a 'line' string, not {_shown(error)}"
    section = record.node.get("metadata", {}).get("papermill", {})
    if not isinstance(section, dict):
        return f"metadata.papermill must be a mapping, not {_shown(section)}"
    for key in ("input_path", "output_path"):
        if section.get(key) is not None and not isinstance(section[key], str):
            return f"metadata.papermill.{key} must be a string, not {_shown(section[key])}"
    # --jupyter writes these as `name = value` lines of code.
    problem = _parameters_problem(section.get("parameters") or {}, "metadata.papermill.parameters")
    if problem:
        return problem
    for index, cell in enumerate(record.node["cells"]):
        problem = _cell_problem(cell)
        if problem:
            return f"cells[{index}] {problem}"
    return None


def _cell_problem(cell: Any) -> str | None:
    if not isinstance(cell, dict):
        return f"must be a mapping, not {_shown(cell)}"
    metadata = cell.get("metadata", {})
    if not isinstance(metadata, dict):
        return f"metadata must be a mapping, not {_shown(metadata)}"
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return f"tags must be a list of strings, not {_shown(tags)}"
    source = cell.get("source", "")
    if not isinstance(source, str) and not (
        isinstance(source, list) and all(isinstance(line, str) for line in source)
    ):
        return f"source must be a string or a list of strings, not {_shown(source)}"
    if not isinstance(cell.get("outputs", []), list):
        return f"outputs must be a list, not {_shown(cell['outputs'])}"
    return None


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, UsageError if it resolves out of ``folder`` (a symlink there)."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"{path} leads out of {folder}: refusing to write there")
    return path


def write_new(path: Path, text: str) -> None:
    """Write ``path``, which must not exist: replay never overwrites a file it did not make."""
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{path} exists: replay does not overwrite it") from None


def recorded_notebook(record: Record) -> dict[str, Any]:
    """The notebook that ran, as the record has it: papermill's banners and injected
    parameters taken out, outputs cleared, the run's metadata dropped."""
    node = copy.deepcopy(record.node)
    cells = []
    for cell in node["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if BANNER_TAG in tags or INJECTED_TAG in tags or DOWNLOAD_TAG in tags:
            continue
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    node["cells"] = cells
    for key in ("papermill", RUN_KEY):
        node.get("metadata", {}).pop(key, None)
    return node


def _code(node: dict[str, Any]) -> list[str]:
    return [
        "".join(c["source"]) if isinstance(c.get("source"), list) else str(c.get("source", ""))
        for c in node.get("cells", [])
        if c.get("cell_type") == "code"
    ]


def notebook_to_run(record: Record, given: Path | None, folder: Path) -> Path:
    """``given``; else the notebook the run came from, if it is here unchanged; else the
    recorded code, written into ``folder``."""
    if given is not None:
        return given
    recorded = recorded_notebook(record)
    source = record.papermill.get("input_path")
    if isinstance(source, str) and Path(source).is_file():
        try:
            here = Notebook.load(source, record.task_name or None).runnable()
        except UsageError:
            here = {}
        if _code(here) == _code(recorded):
            return Path(source)
        logger.warning(
            "%s changed since the recorded run: replaying the recorded code "
            "(--notebook %s runs yours)",
            source,
            source,
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = inside(folder, f"{record.task_name or 'task'}.recorded.ipynb")
    path.unlink(missing_ok=True)  # a previous replay's: replaced, never written through
    write_new(path, json.dumps(recorded, indent=1) + "\n")
    return path


def payload_source(record: Record, given: str | None) -> str | dict[str, Any]:
    """Where the replay's payload comes from: ``given``, else the recorded URL, else the
    payload the record kept."""
    if given:
        return given
    section = record.run.get("payload") or {}
    if section.get("url"):
        return str(section["url"])
    if isinstance(section.get("inline"), dict):
        return dict(section["inline"])
    raise UsageError(
        f"{record.url} does not say where its payload is (it came with no URL and was too "
        "large to keep): pass it with --payload"
    )


def load_payload(record: Record, given: str | None) -> dict[str, Any]:
    """The replay's payload (``payload_source``), read; a recorded one that cannot be
    read here is a UsageError that says to give it."""
    from stactask.exceptions import InvalidInput

    from . import payload as payload_io

    source = payload_source(record, given)
    try:
        document = payload_io.load(source)
    except InvalidInput as err:
        if given:
            raise
        raise UsageError(
            f"the recorded payload cannot be read here ({err}): pass it with --payload"
        ) from None
    check_digest(record, document)
    return document


def check_digest(record: Record, document: dict[str, Any]) -> None:
    """Warn when the payload is not the one the recorded run had."""
    recorded = (record.run.get("payload") or {}).get("digest")
    if recorded and payload_digest(document) != recorded:
        logger.warning(
            "the payload differs from the recorded run's (digest %s, recorded %s): "
            "the replay may not reproduce it",
            payload_digest(document),
            recorded,
        )


@dataclass
class Replay:
    """A replayed run: what the record said, what happened here."""

    record: Record
    error: Exception | None
    workdir: Path

    def verdict(self) -> str:
        """Whether the recorded failure reproduced, in one line."""
        recorded = self.record.error
        now = error_line(self.error) if self.error is not None else None
        if recorded is None:
            if now is None:
                return "replay: the recorded run succeeded, and so did this one"
            return "replay: the recorded run succeeded, but this one failed"
        if now is None:
            return f"replay: the failure did not reproduce (this run succeeded); it was: {recorded}"
        if self._same(recorded, now):
            return "replay: the failure reproduces"
        return f"replay: this run failed differently; the recorded run failed with: {recorded}"

    def _same(self, recorded: str, now: str) -> bool:
        def plain(line: str, workdir: str | None) -> str:
            return line.replace(workdir, "{workdir}") if workdir else line

        return plain(recorded, self.record.workdir) == plain(now, str(self.workdir))

    @property
    def exit_code(self) -> int:
        return exit_code(self.error) if self.error is not None else 0


def replay(
    record: Record,
    notebook: Path | None = None,
    payload: str | None = None,
    workdir: Path = REPLAY_WORKDIR,
    engine: str | None = None,
) -> Replay:
    """Run the recorded run again here (``run --local`` into ``workdir``)."""
    from .publish import UrlOutput
    from .runner import Runner, RunOptions

    run = record.run
    if Path(record.url).resolve() == (workdir / f"{record.task_name}.executed.ipynb").resolve():
        raise UsageError(f"the replay would overwrite {record.url}: choose another --workdir")
    document = load_payload(record, payload)
    source = payload_source(record, payload)
    keys = run.get("download_assets") or []
    options = RunOptions.local(
        workdir,
        task_name=record.task_name or None,
        parameter_values=dict(run.get("parameters") or {}),
        parameter_values_from=f"the record's parameters ({record.url})",
        download_assets=",".join(keys) if keys else None,
        engine=engine or run.get("engine") or None,
    )
    path = notebook_to_run(record, notebook, workdir)
    logger.info(
        "replaying %s: task %s %s, %s engine, payload %s, parameters %s, notebook %s",
        record.url,
        record.task_name,
        run.get("task", {}).get("version", "?"),
        options.engine or "default",
        source if isinstance(source, str) else "kept in the record",
        json.dumps(run.get("parameters") or {}),
        path,
    )
    error: Exception | None = None
    with Runner(path, options, once=True) as runner:
        try:
            runner.run(document, UrlOutput(workdir / "output-payload.json"))
        except Exception as err:  # noqa: BLE001 - the verdict compares it with the record's
            error = err
    return Replay(record, error, workdir.resolve())


def prepare_jupyter(
    record: Record,
    folder: Path,
    payload: str | None = None,
    assets: str | None = None,
) -> Path:
    """Write the recorded notebook into ``folder`` for JupyterLab: the injected parameters
    pointing at the payload beside it (``payload.json``), the recorded outputs and error
    banners kept, a first cell saying where it failed; with ``assets`` (keys, or '' for
    those the run downloaded, else all), the payload's assets downloaded beside it."""
    from .assets import ALL_ASSETS, download_assets

    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty: choose a new folder for --jupyter")
    document = load_payload(record, payload)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JUPYTER_WORKDIR).mkdir()
    if assets is not None:
        keys = [k for k in assets.split(",") if k] or record.run.get("download_assets") or []
        document["features"] = download_assets(
            document.get("features", []), keys or [ALL_ASSETS], folder / "input-assets"
        )
    write_new(inside(folder, JUPYTER_PAYLOAD), json.dumps(document, indent=2))

    node = copy.deepcopy(record.node)
    values = {**(record.papermill.get("parameters") or {})}
    values.update(
        {
            k: v
            for k, v in (("payload", JUPYTER_PAYLOAD), ("workdir", JUPYTER_WORKDIR))
            if k in values
        }
    )
    # The run's own download cell points at its workdir: in Jupyter it has nothing to do.
    node["cells"] = [
        c for c in node["cells"] if DOWNLOAD_TAG not in c.get("metadata", {}).get("tags", [])
    ]
    for cell in node["cells"]:
        if INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            cell["source"] = (
                "# Parameters of the recorded run (payload and workdir: here)\n"
                + "".join(f"{name} = {value!r}\n" for name, value in values.items())
            )
    node["cells"].insert(0, _replay_cell(record))
    node.get("metadata", {}).pop(RUN_KEY, None)
    path = inside(folder, f"{record.task_name or 'task'}.ipynb")
    write_new(path, json.dumps(node, indent=1) + "\n")
    return path


def _replay_cell(record: Record) -> dict[str, Any]:
    """A markdown cell: what this notebook is, and where the recorded run failed."""
    run = record.run
    lines = [
        f"**Replay of** `{record.url}`: task `{record.task_name}` "
        f"{run.get('task', {}).get('version', '')}, nb2task {run.get('nb2task_version', '?')}, "
        f"{run.get('engine', '?')} engine.",
        "",
        f"The payload is `{JUPYTER_PAYLOAD}` beside this notebook; the run's parameters are in "
        "the cell after the parameters cell. Outputs go to `work/`.",
        "",
    ]
    if record.error:
        match = re.search(r"notebook cell (In \[\d+\](?:, line \d+)?)", record.error)
        where = f" in cell {match.group(1)}" if match else ""
        lines.append(
            f"The recorded run failed{where} (the red banner below marks the cell): "
            f"`{record.error}`. Run the cells above it, then that one."
        )
    else:
        lines.append("The recorded run succeeded.")
    return {
        "cell_type": "markdown",
        "id": "nb2task-replay",
        "metadata": {"tags": ["nb2task-skip"]},
        "source": "\n".join(lines),
    }
