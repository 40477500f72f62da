"""``nb2task build``: a notebook in, a deployable Cirrus task build context out.

The context holds the cleaned notebook, its pinned requirements, one multi-stage
``Dockerfile`` (targets ``lambda`` and ``batch``, both thin layers over the shared
nb2task base image), the FilmDrop task ``definition.yaml``, the parameters' JSON
Schema and a README. Everything is rendered from the Jinja2 templates in
``nb2task/templates``; the same inputs give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from . import __version__
from .errors import BuildError
from .image_ref import check_reference, check_repository
from .notebook import BatchSettings, LambdaSettings, Notebook
from .render import render
from .workflow import write_workflows

logger = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = f"nb2task-base:{__version__}"
TASK_DIR = "/opt/nb2task/task"
LAMBDA_HANDLER = "nb2task.lambda_handler"
BATCH_COMMAND = ["run", "Ref::url", "--output", "Ref::url_out"]
MARKER = ".nb2task-context"
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# Lambda's hard limits.
LAMBDA_MAX_TIMEOUT_S = 900
LAMBDA_MAX_MEMORY_MB = 10_240
LAMBDA_MAX_STORAGE_MB = 10_240
# Packages that rarely fit a 10 GB Lambda image or its 15 minutes.
HEAVY_PACKAGES = {"torch", "tensorflow", "jax", "jaxlib", "cupy", "triton"}


@dataclass(frozen=True)
class BuildOptions:
    """What ``nb2task build`` was asked; ``None`` means: from the notebook's metadata."""

    output_dir: Path | None = None
    name: str | None = None
    requirements_file: Path | None = None
    base_image: str = DEFAULT_BASE_IMAGE
    image: str | None = None
    tag: str | None = None
    include: tuple[Path, ...] = ()
    lambda_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_url_requirements: bool = False


@dataclass(frozen=True)
class BuildContext:
    """A written build context and what is in it."""

    path: Path
    name: str
    lambda_image: str
    batch_image: str
    warnings: tuple[str, ...]


def build_context(notebook_path: str | Path, options: BuildOptions) -> BuildContext:
    """Write the build context for the notebook at ``notebook_path``."""
    notebook = Notebook.load(notebook_path, options.name)
    notebook.check_runnable_as_task()
    name = notebook.name  # Notebook.load checked it (the task-name rule)
    lambda_settings = _override(notebook.settings.lambda_, options.lambda_overrides)
    batch_settings = _override(notebook.settings.batch, options.batch_overrides)
    check_reference(options.base_image, "--base-image")
    if options.image is not None:
        check_repository(options.image, "--image")
    requirements = pinned_requirements(
        notebook, options.requirements_file, options.allow_url_requirements
    )
    image = options.image or f"nb2task/{name}"
    tag = options.tag or notebook.settings.version
    if not DOCKER_TAG.fullmatch(f"{tag}-lambda"):
        raise BuildError(
            f"image tag {tag!r} is not a valid Docker tag (letters, digits, '_', '.', '-'): "
            "set --tag or a plain metadata nb2task.version"
        )
    out = (options.output_dir or Path("build") / name).resolve()
    _check_replaceable(out)
    for extra in options.include:
        if not extra.exists():
            raise BuildError(f"--include {extra}: no such file or directory")
    notebook_file = f"{name}.ipynb"

    warnings = lambda_fit_warnings(lambda_settings, requirements)
    for message in warnings:
        logger.warning(message)

    values = {
        "name": name,
        "version": notebook.settings.version,
        "description": notebook.settings.description or f"nb2task notebook task {name}",
        "nb2task_version": __version__,
        "base_image": options.base_image,
        "task_dir": TASK_DIR,
        "notebook_file": notebook_file,
        "has_requirements": bool(requirements),
        "lambda": lambda_settings,
        "batch": batch_settings,
        "lambda_image": f"{image}:{tag}-lambda",
        "batch_image": f"{image}:{tag}-batch",
        "lambda_handler": LAMBDA_HANDLER,
        "batch_command": BATCH_COMMAND,
        "container_properties": container_properties(f"{image}:{tag}-batch", batch_settings),
        "parameters": notebook.schema.parameters,
        "warnings": warnings,
    }

    # Written beside the target, then swapped in: a failure leaves the old context whole.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            _write_context(staging, notebook, notebook_file, requirements, options.include, values)
        except UnicodeEncodeError as error:
            # A lone surrogate (a "\ud800" escape in the notebook's JSON) is not text.
            text = error.object[error.start : error.end]
            raise BuildError(f"the notebook holds text that is not Unicode ({text!r})") from None
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildContext(out, name, values["lambda_image"], values["batch_image"], warnings)


def _write_context(
    out: Path,
    notebook: Notebook,
    notebook_file: str,
    requirements: list[str],
    include: tuple[Path, ...],
    values: dict[str, Any],
) -> None:
    (out / "notebook").mkdir()
    _write_clean_notebook(notebook, out / "notebook" / notebook_file)
    for extra in include:
        _copy_include(extra, out / "notebook")
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
    schema = notebook.parameters_schema()
    (out / "parameters.schema.json").write_text(
        json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for template, target in (
        ("Dockerfile.j2", "Dockerfile"),
        ("definition.yaml.j2", "definition.yaml"),
        ("README.md.j2", "README.md"),
        ("dockerignore.j2", ".dockerignore"),
    ):
        (out / target).write_text(render(template, values), encoding="utf-8")
    write_workflows(out, values)
    (out / MARKER).write_text(
        "Written by nb2task build; nb2task build replaces this folder.\n", encoding="utf-8"
    )
    (out / MARKER).chmod(0o644)


def _check_replaceable(out: Path) -> None:
    """Only an empty folder or an earlier build context may be replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"-o {out}: a file is in the way")
    if any(out.iterdir()) and not (out / MARKER).exists():
        raise BuildError(
            f"-o {out} is not empty and was not written by nb2task build: choose another folder"
        )


def container_properties(image: str, batch: BatchSettings) -> str:
    """Batch's RegisterJobDefinition containerProperties, as the JSON string FilmDrop takes."""
    memory = str(batch.memory_mb)
    vcpu = f"{batch.vcpu:g}"
    properties = {
        "image": image,
        "command": BATCH_COMMAND,
        "resourceRequirements": [
            {"type": "VCPU", "value": vcpu},
            {"type": "MEMORY", "value": memory},
        ],
        "environment": [{"name": "NB2TASK_LOG_LEVEL", "value": "INFO"}],
    }
    return json.dumps(properties, indent=2, sort_keys=True)


def parse_requirement(text: str, where: str, allow_url: bool = False) -> Requirement:
    """``text`` as one plain requirement (``name[extras] specifier ; marker``); BuildError
    naming it and ``where`` for pip options, control characters (a newline would add a
    line to requirements.txt) and URL requirements unless ``allow_url``."""
    from packaging.requirements import InvalidRequirement

    bad = [c for c in text if unicodedata.category(c) == "Cc"]
    if bad:
        raise BuildError(f"requirement {text!r} ({where}) has control characters: one per line")
    if text.lstrip().startswith("-"):
        raise BuildError(f"requirement {text!r} ({where}) is a pip option: not allowed")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as error:
        raise BuildError(f"requirement {text!r} ({where}) cannot be read: {error}") from None
    if requirement.url and not allow_url:
        raise BuildError(
            f"requirement {text!r} ({where}) is a URL requirement: pass "
            "--allow-url-requirements to allow it"
        )
    return requirement


def is_pinned(requirement: Requirement) -> bool:
    """Whether ``requirement`` names one exact version (``==X``, no wildcard) or a URL."""
    if requirement.url:
        return True
    specs = list(requirement.specifier)
    return len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version


def read_requirements_file(path: Path) -> list[tuple[str, str]]:
    """The requirements in a requirements file, as ``(where, line)``, with pip's comment
    rule (`` #`` or a leading ``#`` starts a comment) and blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BuildError(f"cannot read requirements file {path}: {error}") from None
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()
        if line:
            found.append((f"{path.name} line {number}", line))
    return found


def pinned_requirements(
    notebook: Notebook, requirements_file: Path | None, allow_url: bool = False
) -> list[str]:
    """The task's requirements, each pinned (``==``): to the version installed here when
    the source leaves it open, since that is the version the notebook was tried with.
    Each is written as ``str(Requirement)``: what reaches requirements.txt was parsed."""
    pinned = []
    for where, line in requirement_sources(notebook, requirements_file):
        requirement = parse_requirement(line, where, allow_url)
        if not is_pinned(requirement):
            try:
                installed = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                raise BuildError(
                    f"requirement {line!r} is not pinned ({where}) and {requirement.name} is "
                    f"not installed here to pin it to: write {requirement.name}==VERSION"
                ) from None
            requirement.specifier = SpecifierSet(f"=={installed}")
        pinned.append(str(requirement))
    return sorted(set(pinned), key=str.lower)


def requirement_sources(
    notebook: Notebook, requirements_file: Path | None = None
) -> list[tuple[str, str]]:
    """The task's requirements as written, with where each came from:
    ``requirements_file``, else the notebook's metadata, else a ``requirements.txt``
    beside the notebook."""
    if requirements_file is not None:
        return read_requirements_file(requirements_file)
    if notebook.settings.requirements:
        where = "metadata nb2task.requirements"
        return [(where, line) for line in notebook.settings.requirements]
    if (beside := notebook.path.with_name("requirements.txt")).exists():
        return read_requirements_file(beside)
    return []


def requirement_lines(notebook: Notebook, requirements_file: Path | None = None) -> list[str]:
    """The task's requirements as written (see ``requirement_sources``)."""
    return [line for _, line in requirement_sources(notebook, requirements_file)]


def lambda_fit_warnings(settings: LambdaSettings, requirements: list[str]) -> tuple[str, ...]:
    """Why this task is unlikely to fit AWS Lambda, if it is."""
    if not settings.enabled:
        return ()
    warnings = []
    if settings.timeout_seconds > LAMBDA_MAX_TIMEOUT_S:
        warnings.append(
            f"lambda timeout {settings.timeout_seconds} s is over Lambda's "
            f"{LAMBDA_MAX_TIMEOUT_S} s: run this task on Batch"
        )
    if settings.memory_mb > LAMBDA_MAX_MEMORY_MB:
        warnings.append(
            f"lambda memory {settings.memory_mb} MB is over Lambda's {LAMBDA_MAX_MEMORY_MB} MB"
        )
    if settings.ephemeral_storage_mb > LAMBDA_MAX_STORAGE_MB:
        warnings.append(
            f"lambda ephemeral storage {settings.ephemeral_storage_mb} MB is over Lambda's "
            f"{LAMBDA_MAX_STORAGE_MB} MB"
        )
    heavy = sorted({r.split("==")[0].split("[")[0].lower() for r in requirements} & HEAVY_PACKAGES)
    if heavy:
        warnings.append(
            f"requirements {', '.join(heavy)} rarely fit Lambda's 10 GB image and 15 minutes: "
            "consider Batch only (metadata nb2task.lambda: false)"
        )
    return tuple(warnings)


def _override(settings: Any, overrides: dict[str, Any]) -> Any:
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(settings, **given) if given else settings


def _write_clean_notebook(notebook: Notebook, path: Path) -> None:
    """The notebook as it runs in the image: no skip cells, no outputs, stable cell ids."""
    node = nbformat.from_dict(notebook.runnable())  # type: ignore[no-untyped-call]
    for index, cell in enumerate(node.cells):
        cell["id"] = cell.get("id") or f"cell-{index}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    node.metadata.pop("papermill", None)
    # The image's name for the task, whatever the notebook's metadata said (--name).
    node.metadata.setdefault("nb2task", {})["name"] = notebook.name
    nbformat.write(node, str(path))  # type: ignore[no-untyped-call]


def _copy_include(source: Path, target_dir: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target_dir / source.name)
    else:
        shutil.copy2(source, target_dir / source.name)


def build_images(
    context: BuildContext,
    docker: str = "docker",
    network: str | None = None,
    push: bool = False,
) -> None:
    """Build (and optionally push) the context's Lambda and Batch images with ``docker``,
    its output streaming to stderr as progress."""
    import subprocess
    import sys

    steps = [
        ["build", "--target", target, "-t", image]
        + (["--network", network] if network else [])
        + [str(context.path)]
        for target, image in (("lambda", context.lambda_image), ("batch", context.batch_image))
    ]
    if push:
        steps += [["push", context.lambda_image], ["push", context.batch_image]]
    for step in steps:
        logger.info("%s %s", docker, " ".join(step))
        try:
            proc = subprocess.run([docker, *step], stdout=sys.stderr, stderr=sys.stderr)
        except FileNotFoundError:
            raise BuildError(f"cannot run {docker!r}: install Docker or pass --docker") from None
        if proc.returncode != 0:
            raise BuildError(f"'{docker} {' '.join(step)}' failed (exit {proc.returncode})")
