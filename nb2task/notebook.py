"""Read a notebook as a task: its parameters cell, schema and settings.

Task settings live in the notebook's metadata under ``nb2task`` (see
``docs/notebook-contract.md``); anything missing falls back to a sensible default.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NotebookError
from .schema import ParameterSchema

logger = logging.getLogger(__name__)

PARAMETERS_TAG = "parameters"
SKIP_TAG = "nb2task-skip"
# Cells tagged so are the notebook's stactask ``validate()``: they run before the
# assets download, and ``--no-validate`` leaves them out.
VALIDATE_TAG = "nb2task-validate"
DOWNLOAD_TAG = "injected-download"  # the cell a run adds after them to download assets
# What unknown keys in the task's own options (process[0].tasks.<name>) get.
UNKNOWN_OPTIONS = ("error", "warn", "ignore")
METADATA_KEY = "nb2task"
# Task names end up in process[0].tasks keys, file names, image names and FilmDrop
# resource names; FilmDrop allows letters, digits and '-' only. One rule everywhere.
# A version as an image tag takes it (Docker's tag grammar).
VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
TASK_NAME = re.compile(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*")
ENGINES = ("fork", "kernel")
MAX_DESCRIPTION = 256


def normalise_task_name(stem: str) -> str:
    """A task name made from a file stem: other characters become '-' (band_ratio →
    band-ratio)."""
    return "-".join(part for part in re.split(r"[^A-Za-z0-9]+", stem) if part)


def check_task_name(name: str, where: str) -> str:
    """``name`` if it follows the task-name rule; NotebookError naming ``where`` if not."""
    if not TASK_NAME.fullmatch(name):
        hint = normalise_task_name(name)
        raise NotebookError(
            f"task name {name!r} ({where}): use letters, digits and single '-' "
            f"(FilmDrop's rule)" + (f", e.g. {hint!r}" if hint else "")
        )
    return name


@dataclass(frozen=True)
class LambdaSettings:
    """How the task runs on AWS Lambda (metadata ``nb2task.lambda``; ``false`` disables)."""

    enabled: bool = True
    memory_mb: int = 1024
    timeout_seconds: int = 900
    ephemeral_storage_mb: int = 2048


@dataclass(frozen=True)
class BatchSettings:
    """How the task runs on AWS Batch (metadata ``nb2task.batch``; ``false`` disables)."""

    enabled: bool = True
    vcpu: float = 1.0
    memory_mb: int = 4096
    timeout_seconds: int = 3600
    retry_attempts: int = 3


def _section(cls: type[Any], value: Any, key: str) -> Any:
    """A settings dataclass from a metadata mapping (or ``false``), checking types."""
    if value is False:
        return cls(enabled=False)
    if value is None or value is True:
        return cls()
    if not isinstance(value, dict):
        raise NotebookError(f"notebook metadata '{METADATA_KEY}.{key}' must be a mapping or false")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, item in value.items():
        if name not in fields:
            known = ", ".join(f for f in fields if f != "enabled")
            raise NotebookError(f"unknown setting '{METADATA_KEY}.{key}.{name}' (known: {known})")
        default = fields[name].default
        wanted: type[Any] = float if isinstance(default, float) else type(default)
        ok = isinstance(item, wanted) or (wanted is float and isinstance(item, int))
        if isinstance(item, bool) and wanted is not bool:
            ok = False
        if not ok or (wanted is not bool and item <= 0):
            raise NotebookError(
                f"setting '{METADATA_KEY}.{key}.{name}' must be a positive {wanted.__name__}, "
                f"got {item!r}"
            )
        values[name] = wanted(item)
    return cls(**values)


@dataclass(frozen=True)
class TaskSettings:
    """Settings of the task, from notebook metadata ``nb2task``."""

    name: str
    version: str = "0.1.0"
    description: str = ""
    download_assets: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    engine: str | None = None  # None: fork on Linux, kernel for non-Python kernels
    record_html: bool = False  # render the record as HTML on success too
    unknown_options: str = "error"  # error | warn | ignore: unknown task options
    lambda_: LambdaSettings = field(default_factory=LambdaSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], file_stem: str) -> TaskSettings:
        """Settings from a notebook's ``metadata.nb2task`` mapping."""
        if not isinstance(metadata, dict):
            raise NotebookError(f"notebook metadata '{METADATA_KEY}' must be a mapping")
        known = (
            "name", "version", "description", "download_assets", "requirements", "engine",
            "record_html", "unknown_options", "lambda", "batch",
        )  # fmt: skip
        unknown = sorted(set(metadata) - set(known))
        if unknown:
            raise NotebookError(
                f"unknown notebook metadata '{METADATA_KEY}.{unknown[0]}' "
                f"(known: {', '.join(known)})"
            )
        if metadata.get("name"):
            name = check_task_name(
                str(metadata["name"]), f"notebook metadata '{METADATA_KEY}.name'"
            )
        else:
            name = normalise_task_name(file_stem)
            if name != file_stem:
                logger.info("task name %r (from the file name %r)", name, file_stem)
            check_task_name(name, f"from the file name {file_stem!r}")
        engine = metadata.get("engine")
        if engine is not None and engine not in ENGINES:
            raise NotebookError(
                f"notebook metadata '{METADATA_KEY}.engine' must be one of: {', '.join(ENGINES)}"
            )
        record_html = metadata.get("record_html", False)
        if not isinstance(record_html, bool):
            raise NotebookError(
                f"notebook metadata '{METADATA_KEY}.record_html' must be true or false"
            )
        unknown_options = metadata.get("unknown_options", "error")
        if unknown_options not in UNKNOWN_OPTIONS:
            raise NotebookError(
                f"notebook metadata '{METADATA_KEY}.unknown_options' must be one of: "
                f"{', '.join(UNKNOWN_OPTIONS)}"
            )
        return cls(
            name=name,
            version=_version(metadata.get("version", "0.1.0")),
            description=_description(metadata.get("description", "")),
            download_assets=_str_list(metadata.get("download_assets", ()), "download_assets"),
            requirements=_str_list(metadata.get("requirements", ()), "requirements"),
            engine=engine,
            record_html=record_html,
            unknown_options=unknown_options,
            lambda_=_section(LambdaSettings, metadata.get("lambda"), "lambda"),
            batch=_section(BatchSettings, metadata.get("batch"), "batch"),
        )


def _version(value: Any) -> str:
    """The task version, kept as written: one token of letters, digits, ``.``, ``-`` and
    ``_`` (``1.2.0``, ``2024-01-15``, ``1.0.0-rc.1``), as an image tag takes it. It
    reaches image tags, labels and YAML, so it is checked whatever ``--tag`` says."""
    where = f"notebook metadata '{METADATA_KEY}.version'"
    if not isinstance(value, str):
        raise NotebookError(f'{where} must be a string ("1.0", not 1.0), got {value!r}')
    if not VERSION.fullmatch(value):
        raise NotebookError(
            f"{where}: {value!r} is not a version (letters, digits, '.', '-', '_'; at most "
            "128, not starting with '.' or '-': it is the images' tag)"
        )
    return value


def _description(value: Any) -> str:
    """The task description: one line of text (it becomes an image label)."""
    where = f"notebook metadata '{METADATA_KEY}.description'"
    if not isinstance(value, str):
        raise NotebookError(f"{where} must be a string, got {value!r}")
    bad = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Cs")})
    if bad:
        raise NotebookError(
            f"{where} {value!r} has control characters ({', '.join(map(repr, bad))}): "
            "one line of text"
        )
    if len(value) > MAX_DESCRIPTION:
        raise NotebookError(f"{where} is over {MAX_DESCRIPTION} characters")
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    """A metadata value that is one string or a list of strings."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise NotebookError(f"notebook metadata '{METADATA_KEY}.{key}' must be a list of strings")


@dataclass(frozen=True)
class Notebook:
    """A notebook file, read once, with what nb2task needs to know of it."""

    path: Path
    node: dict[str, Any]  # the notebook as nbformat 4 JSON, cell sources as strings
    schema: ParameterSchema
    settings: TaskSettings
    has_parameters_cell: bool = True

    @classmethod
    def load(cls, path: str | Path, task_name: str | None = None) -> Notebook:
        """Read ``path`` and its parameters cell; raise NotebookError if unusable.
        ``task_name`` (``--task-name``) overrides the metadata's name."""
        path = Path(path)
        node = _read(path)
        cell = parameters_cell(node)
        schema = ParameterSchema.from_source(cell["source"]) if cell else ParameterSchema()
        metadata = node.get("metadata", {}).get(METADATA_KEY, {})
        if task_name and isinstance(metadata, dict):
            check_task_name(task_name, "--task-name")
            metadata = {**metadata, "name": task_name}
        settings = TaskSettings.from_metadata(metadata, file_stem=path.stem)
        _check_validate_cells(node, path)
        return cls(path.resolve(), node, schema, settings, has_parameters_cell=cell is not None)

    @property
    def kernelspec(self) -> dict[str, Any]:
        """The notebook's kernelspec metadata (empty if it has none)."""
        spec = self.node.get("metadata", {}).get("kernelspec", {})
        return dict(spec) if isinstance(spec, dict) else {}

    @property
    def name(self) -> str:
        return self.settings.name

    def check_runnable_as_task(self) -> None:
        """Raise NotebookError if the notebook cannot take a payload."""
        if not self.has_parameters_cell:
            raise NotebookError(
                f"{self.path.name} has no cell tagged 'parameters': without one it would run on "
                "its own sample data, not on the payload (tag the cell that sets `payload`)"
            )
        if "payload" not in self.schema.declared_reserved:
            logger.warning(
                "%s does not declare `payload` in its parameters cell: it will not see the "
                "input items",
                self.path.name,
            )

    def parameters_schema(self) -> dict[str, Any]:
        """The task's parameters as JSON Schema; other options are allowed unless the
        ``unknown_options`` setting refuses them."""
        schema = self.schema.json_schema(title=self.name)
        schema["additionalProperties"] = self.settings.unknown_options != "error"
        return schema

    @functools.cached_property
    def has_validate_cells(self) -> bool:
        """True if cells tagged ``nb2task-validate`` (the task's ``validate()``) exist."""
        return any(VALIDATE_TAG in _tags(c) for c in self.node["cells"] if SKIP_TAG not in _tags(c))

    def runnable(
        self, *, validate: bool = True, download_source: str | None = None
    ) -> dict[str, Any]:
        """A copy of the notebook to execute: ``nb2task-skip`` cells removed, and the
        validate cells too unless ``validate``; ``download_source``, if given, is a
        cell put after the last validate cell (or after the parameters cell)."""
        node = copy.deepcopy(self.node)
        cells = [c for c in node["cells"] if SKIP_TAG not in _tags(c)]
        if not validate:
            cells = [c for c in cells if VALIDATE_TAG not in _tags(c)]
        if download_source is not None:
            validates = [i for i, c in enumerate(cells) if VALIDATE_TAG in _tags(c)]
            parameters = [i for i, c in enumerate(cells) if PARAMETERS_TAG in _tags(c)]
            at = (validates or parameters or [-1])[-1] + 1
            cells.insert(at, _download_cell(download_source))
        node["cells"] = cells
        return node


def _download_cell(source: str) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": [DOWNLOAD_TAG]},
        "outputs": [],
        "source": source,
    }


def _check_validate_cells(node: dict[str, Any], path: Path) -> None:
    """NotebookError if a validate cell comes before the parameters cell (it would
    check the notebook's defaults, not the payload) or is not a code cell."""
    seen_parameters = False
    for index, cell in enumerate(node["cells"]):
        tags = _tags(cell)
        if PARAMETERS_TAG in tags and cell.get("cell_type") == "code":
            seen_parameters = True
        if VALIDATE_TAG not in tags or SKIP_TAG in tags:
            continue
        if cell.get("cell_type") != "code":
            raise NotebookError(
                f"{path.name}: cell {index} is tagged {VALIDATE_TAG!r} but is not code"
            )
        if not seen_parameters:
            raise NotebookError(
                f"{path.name}: cell {index} is tagged {VALIDATE_TAG!r} but comes before the "
                "parameters cell: it would check the defaults, not the payload"
            )


def _read(path: Path) -> dict[str, Any]:
    """The notebook as nbformat 4 JSON. An .ipynb file is read as plain JSON (loading
    nbformat costs ~0.2 s; papermill validates the notebook it runs); older formats and
    jupytext ``.py`` notebooks go through their readers."""
    if not path.is_file():
        raise NotebookError(f"notebook not found: {path}")
    if path.suffix == ".py":
        return _checked(_read_jupytext(path), path)
    try:
        node = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise NotebookError(f"cannot read notebook {path}: {err}") from None
    if not isinstance(node, dict) or node.get("nbformat") != 4:
        return _checked(_read_with_nbformat(path), path)
    return _checked(node, path)


def _checked(node: dict[str, Any], path: Path) -> dict[str, Any]:
    """``node`` with each cell's source as one string; NotebookError if it is unusable."""
    problem = structure_problem(node)
    if problem:
        raise NotebookError(f"cannot read notebook {path}: {problem}")
    try:  # a lone surrogate (a \ud800 escape in the JSON) is no text: no save could write it
        json.dumps(node, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start : err.end]
        raise NotebookError(f"cannot read notebook {path}: it holds {bad!r}, not text") from None
    for cell in node["cells"]:
        source = cell.get("source", "")
        cell["source"] = "".join(source) if isinstance(source, list) else source
    return node


CELL_TYPES = ("code", "markdown", "raw")


def structure_problem(node: dict[str, Any]) -> str | None:
    """What makes an nbformat 4 notebook unusable (what every engine and papermill rely
    on), in words; None if nothing does. Cheaper than nbformat's schema, which a run
    would load for this alone."""
    if not isinstance(node.get("metadata", {}), dict):
        return "its 'metadata' is not an object"
    for key in ("kernelspec", "language_info"):
        if not isinstance(node.get("metadata", {}).get(key, {}), dict):
            return f"its metadata '{key}' is not an object"
    cells = node.get("cells")
    if not isinstance(cells, list):
        return "its 'cells' are not a list"
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict):
            return f"cell {number} is not an object"
        if cell.get("cell_type") not in CELL_TYPES:
            return f"cell {number} has no cell_type of {', '.join(CELL_TYPES)}"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (
            isinstance(source, list) and all(isinstance(line, str) for line in source)
        ):
            return f"cell {number}'s source is not text (a string or a list of strings)"
        metadata = cell.get("metadata", {})
        if not isinstance(metadata, dict):
            return f"cell {number}'s metadata is not an object"
        tags = metadata.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            return f"cell {number}'s tags are not a list of strings"
        if cell["cell_type"] == "code":
            if not isinstance(cell.get("outputs", []), list):
                return f"cell {number}'s outputs are not a list"
            count = cell.get("execution_count")
            if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                return f"cell {number}'s execution_count is not a number"
    return None


def _read_with_nbformat(path: Path) -> dict[str, Any]:
    import nbformat

    try:
        node = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as err:  # nbformat raises several unrelated types
        raise NotebookError(f"cannot read notebook {path}: {err}") from err
    return dict(json.loads(json.dumps(node)))


def _read_jupytext(path: Path) -> dict[str, Any]:
    try:
        import jupytext
    except ImportError as err:
        raise NotebookError(
            f"{path} is a .py notebook: install jupytext to use it (pip install jupytext)"
        ) from err
    return dict(json.loads(json.dumps(jupytext.read(path))))


def _tags(cell: dict[str, Any]) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [str(t) for t in tags] if isinstance(tags, list) else []


def parameters_cell(node: dict[str, Any]) -> dict[str, Any] | None:
    """The first code cell tagged ``parameters``, if any."""
    for cell in node["cells"]:
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in _tags(cell):
            found: dict[str, Any] = cell
            return found
    return None
