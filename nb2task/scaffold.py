"""``nb2task new NAME``: a task folder that runs, tests and builds at once.

Rendered from ``templates/new/common`` and ``templates/new/<template>``: files ending in
``.j2`` are Jinja2 templates, the rest are copied; ``__name__`` and ``__module__`` in a
path become the task's name and its Python module name. The notebook is kept there as a
jupytext percent-format file (readable, diffable) and written as ``.ipynb`` with the
template's ``nb2task`` metadata (``nb2task.json.j2``). The sample golden case is the
sample payload itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UsageError
from .notebook import METADATA_KEY, TASK_NAME, normalise_task_name

TEMPLATES = Path(__file__).parent / "templates" / "new"
TEMPLATE_NAMES = ("minimal", "ndvi")
SETTINGS = "nb2task.json.j2"  # the notebook's nb2task metadata, not a file of the task
SAMPLE_CASE = Path("fixtures/success/sample")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def scaffold(target: str | Path, template: str = "minimal") -> list[Path]:
    """Write a new task folder at ``target`` (its name is the task's) from ``template``;
    return the files written, relative to it."""
    target = Path(target)
    name = target.resolve().name
    if not TASK_NAME.fullmatch(name):
        hint = normalise_task_name(name)
        raise UsageError(
            f"task name {name!r}: use letters, digits and single '-' (FilmDrop's rule)"
            + (f", e.g. {hint!r}" if hint else "")
        )
    if template not in TEMPLATE_NAMES:
        raise UsageError(
            f"unknown template {template!r} (choose from: {', '.join(TEMPLATE_NAMES)})"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} already exists and is not empty: choose a new folder")
    values = {
        "name": name,
        "module": name.replace("-", "_"),
        "template": template,
        "nb2task_version": __version__,
    }
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for source in (TEMPLATES / "common", TEMPLATES / template):
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source)
            if str(relative) == SETTINGS:
                continue
            written.append(_write(path, target / _target_path(relative, values), values))
    notebook = target / f"{name}.py"
    settings = json.loads(_render(TEMPLATES / template / SETTINGS, values))
    written.append(_as_ipynb(notebook, settings))
    notebook.unlink()
    written.remove(notebook)
    written.append(_sample_case(target / f"{name}.payload.json", target / SAMPLE_CASE))
    return sorted(p.relative_to(target) for p in written)


def _target_path(relative: Path, values: dict[str, Any]) -> Path:
    parts = [
        part.replace("__name__", values["name"]).replace("__module__", values["module"])
        for part in relative.parts
    ]
    if parts[-1] == "gitignore":  # a dotfile would not be packaged
        parts[-1] = ".gitignore"
    return Path(*parts).with_suffix("") if parts[-1].endswith(".j2") else Path(*parts)


def _write(source: Path, target: Path, values: dict[str, Any]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".j2":
        target.write_text(_render(source, values), encoding="utf-8")
    else:
        shutil.copyfile(source, target)
    return target


def _render(source: Path, values: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # notebooks, JSON, Markdown, TOML
    )
    return env.get_template(source.relative_to(TEMPLATES).as_posix()).render(**values)


def _as_ipynb(percent: Path, settings: dict[str, Any]) -> Path:
    """The percent-format notebook as ``.ipynb``, with stable cell ids and its metadata."""
    import jupytext
    import nbformat

    node = jupytext.read(percent, fmt="py:percent")
    for index, cell in enumerate(node.cells):
        cell["id"] = f"cell-{index}"
    node.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        METADATA_KEY: settings,
    }
    path = percent.with_suffix(".ipynb")
    nbformat.write(node, str(path))  # type: ignore[no-untyped-call]
    return path


def _sample_case(payload: Path, case: Path) -> Path:
    """The sample payload as the golden case ``success/sample`` (its relative hrefs made
    relative to the case's folder)."""
    document = json.loads(payload.read_text(encoding="utf-8"))
    up = "../" * len(SAMPLE_CASE.parts)
    for feature in document.get("features", []):
        for asset in feature.get("assets", {}).values():
            href = str(asset.get("href", ""))
            if href and "://" not in href and not href.startswith("/"):
                asset["href"] = up + href
    case.mkdir(parents=True, exist_ok=True)
    path = case / "in.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
