"""``nb2task lint``: what would go wrong with a notebook as a task, found before it runs.

Each check looks at the notebook as a task run sees it (``nb2task-skip`` cells left out)
and yields findings: errors (the notebook cannot run as a task) and warnings (it runs,
but not as it should in the cloud). ``--strict`` makes warnings fail too, for CI.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from stactask.exceptions import InvalidInput

from .constraints import Form
from .errors import NotebookError
from .notebook import (
    METADATA_KEY,
    SKIP_TAG,
    TASK_NAME,
    VALIDATE_TAG,
    Notebook,
    normalise_task_name,
    parameters_cell,
)
from .schema import RESERVED, ConstraintError, Parameter, parameter_from_node

ERROR = "error"
WARNING = "warning"

# Absolute paths of one machine: home folders, scratch and mount points, drives.
LOCAL_PATH = re.compile(
    r"^(~[/\\]|/(home|Users|tmp|mnt|media|data|root|srv|var/folders|Volumes)(/|$)"
    r"|[A-Za-z]:[\\/])"
)
KERNEL_ONLY_MAGIC = re.compile(r"^\s*%(connect_info|qtconsole)\b")
KNOWN_CONSTRAINTS = (
    "Literal[...] and, in Annotated[...], annotated-types' Gt, Ge, Lt, Le, Interval, "
    "MultipleOf, MinLen, MaxLen, Len and pydantic's Field bounds"
)
# A sample value to suggest for a parameter without one, by its JSON type (then, if the
# parameter's constraints refuse it, one computed from them).
SAMPLES: dict[str, Any] = {
    "integer": 0,
    "number": 0.0,
    "string": "",
    "boolean": False,
    "array": [],
    "object": {},
    "null": None,
}
PIP_INSTALL = re.compile(r"(^|[\s!%'\"\[,])(pip3?|conda|mamba|uv pip)['\"]?[\s,]+['\"]?install\b")


@dataclass(frozen=True)
class Finding:
    """One problem: where (cell number from 1, line in the cell), what, how bad."""

    code: str
    severity: str
    message: str
    cell: int | None = None
    line: int | None = None

    def format(self, path: Path | str) -> str:
        """``path: cell N, line L: severity [code]: message``."""
        where = "".join(
            part
            for part in (
                f" cell {self.cell}" if self.cell is not None else "",
                f", line {self.line}" if self.line is not None else "",
            )
        )
        return (
            f"{path}:{where + ':' if where else ''} {self.severity} [{self.code}]: {self.message}"
        )


def lint(path: str | Path) -> list[Finding]:
    """Every finding for the notebook at ``path``, in notebook order."""
    path = Path(path)
    findings = list(_task_name(path))
    override = None
    if findings and findings[0].severity == ERROR:
        override = normalise_task_name(path.stem) or "task"  # to check the rest
    try:
        notebook = Notebook.load(path, override)
    except ConstraintError as err:
        return [*findings, Finding("bad-constraint", ERROR, str(err))]
    except NotebookError as err:
        return [*findings, Finding("unreadable", ERROR, str(err))]
    for check in (
        _parameters,
        _constraints,
        _cells,
        _validate_cells,
        _imports,
        _requirements,
        _kernel,
    ):
        findings.extend(check(notebook))
    return findings


def verdict(path: str | Path, findings: list[Finding], strict: bool = False) -> str | None:
    """Why ``findings`` fail the notebook at ``path`` (errors; warnings too if ``strict``),
    or None."""
    errors = sum(f.severity == ERROR for f in findings)
    warnings = sum(f.severity == WARNING for f in findings)
    if not errors and not (strict and warnings):
        return None
    return f"{Path(path).name}: {errors} error(s), {warnings} warning(s)" + (
        " (--strict)" if strict else ""
    )


def _task_name(path: Path) -> Iterator[Finding]:
    """A task name FilmDrop would reject, or one made up from the file name."""
    metadata = _raw_metadata(path)
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if name:
        if not TASK_NAME.fullmatch(str(name)):
            hint = normalise_task_name(str(name))
            yield Finding(
                "task-name",
                ERROR,
                f"task name {name!r} (metadata {METADATA_KEY}.name): FilmDrop allows letters, "
                f"digits and single '-'" + (f"; use {hint!r}" if hint else ""),
            )
        return
    derived = normalise_task_name(path.stem)
    if derived != path.stem:
        yield Finding(
            "task-name",
            WARNING,
            f"the task name comes from the file name {path.stem!r}, which FilmDrop rejects: "
            f"it becomes {derived!r}; set metadata {METADATA_KEY}.name to say so",
        )


def _raw_metadata(path: Path) -> Any:
    if path.suffix != ".ipynb":
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get(METADATA_KEY)
    except (OSError, ValueError, AttributeError):
        return {}


def _parameters(notebook: Notebook) -> Iterator[Finding]:
    """The parameters cell: present, declaring ``payload``, reserved names as paths."""
    cell = parameters_cell(notebook.node)
    if cell is None:
        yield Finding(
            "no-parameters-cell",
            ERROR,
            "no cell is tagged 'parameters': the notebook cannot take a payload",
        )
        return
    number = notebook.node["cells"].index(cell) + 1
    if "payload" not in notebook.schema.declared_reserved:
        yield Finding(
            "no-payload",
            WARNING,
            "the parameters cell does not declare `payload`: the notebook will not see the "
            "input items",
            number,
        )
    tree = _parse(cell["source"])
    for node in tree.body if tree is not None else []:
        target, annotation, value = _assignment(node)
        if target not in ("payload", "workdir"):
            if target == "download_assets":
                yield Finding(
                    "reserved-parameter",
                    WARNING,
                    "a parameter named 'download_assets' takes that task option from nb2task, "
                    "which then downloads no assets: rename it",
                    number,
                    node.lineno,
                )
            continue
        wrong_annotation = annotation is not None and ast.unparse(annotation) != "str"
        wrong_value = isinstance(value, ast.Constant) and not isinstance(value.value, str)
        if wrong_annotation or wrong_value:
            yield Finding(
                "reserved-parameter",
                WARNING,
                f"`{target}` is reserved: nb2task sets it to a path (a str); give it a "
                "plain string default, and use another name for a task parameter",
                number,
                node.lineno,
            )


def _constraints(notebook: Notebook) -> Iterator[Finding]:
    """Each declaration of the parameters cell: a required parameter (no value, so plain
    Jupyter fails), Annotated metadata nb2task does not check, a default its own
    constraints refuse."""
    cell = parameters_cell(notebook.node)
    tree = _parse(cell["source"]) if cell is not None else None
    if cell is None or tree is None:
        return
    number = notebook.node["cells"].index(cell) + 1
    for node in tree.body:
        try:
            param = parameter_from_node(node)
        except ConstraintError:  # Notebook.load read the same cell: not reached
            continue
        if param is None or param.name in RESERVED:
            continue
        final = notebook.schema.get(param.name)
        if isinstance(node, ast.AnnAssign) and node.value is None and final and final.required:
            declared = f"{param.name}: {ast.unparse(node.annotation)}"
            sample = _sample(param)
            suggested = (
                f"(`{declared} = {sample}`)"
                if sample is not None
                else f"(`{declared} = ...`, a value that meets its constraints)"
            )
            yield Finding(
                "required-without-default",
                WARNING,
                f"`{declared}` has no value: in plain Jupyter the notebook stops with a "
                f"NameError where `{param.name}` is first used. A sample value "
                f"{suggested} lets it run there and the payload still "
                "overrides it, but then a payload that leaves it out runs on that value "
                "instead of being refused",
                number,
                node.lineno,
            )
        for metadata in param.unknown:
            yield Finding(
                "unknown-constraint",
                WARNING,
                f"parameter '{param.name}': {metadata} in Annotated[...] is not a constraint "
                f"nb2task knows: it is not checked (nb2task checks {KNOWN_CONSTRAINTS})",
                number,
                node.lineno,
            )
        violation = param.default_violation()
        if violation:
            yield Finding(
                "default-violates-constraint",
                ERROR,
                f"the default breaks the parameter's own constraint: {violation}",
                number,
                node.lineno,
            )


def _sample(param: Parameter) -> str | None:
    """A value to suggest for ``param``, as Python source, that its own constraints
    accept (``None`` for a parameter of any type); None when none comes simply."""
    if not param.types:
        return "None"
    for form in param.forms:
        for value in _candidates(form):
            try:
                param.check(value)
            except InvalidInput:
                continue
            return '""' if value == "" else repr(value)
    return None


def _candidates(form: Form) -> Iterator[Any]:
    """Values that may meet ``form``: its first allowed values, else by each of its
    types the plain sample, then one at a bound (``Ge(5)``: 5, ``MinLen(2)``: 2 items)."""
    if "enum" in form.rules:
        yield from form.rules["enum"][:20]
        return
    if not form.types:
        yield None
    rules = form.rules
    for json_type in form.types:
        yield SAMPLES[json_type]
        if json_type in ("integer", "number"):
            yield from _numbers(rules, json_type == "integer")
        elif json_type == "string" and rules.get("minLength", 0) <= 40:
            yield "x" * rules.get("minLength", 0)
        elif json_type == "array" and rules.get("minItems", 0) <= 10:
            element = Form(form.items, rules=form.item_rules)
            elements = form.item_any_of or (element,)
            for sample in (v for f in elements for v in itertools.islice(_candidates(f), 20)):
                if _accepted(elements, sample):
                    yield [sample] * rules.get("minItems", 0)
                    break


def _numbers(rules: dict[str, Any], integer: bool) -> Iterator[int | float]:
    """Numbers at, next to and between the bounds, and the multiples of ``multipleOf``
    nearest them."""
    bounds = [Fraction(repr(rules[k])) for k in _BOUND_ORDER if k in rules]
    near = [n for b in bounds for n in (b, b + 1, b - 1)]
    if len(bounds) > 1:
        near.append((min(bounds) + max(bounds)) / 2)
    step = Fraction(repr(rules["multipleOf"])) if "multipleOf" in rules else None
    for number in near:
        for value in (number, Fraction(math.ceil(number)), Fraction(math.floor(number))):
            if step:
                yield from (_as_number(n, integer) for n in _multiples(value, step))
            yield _as_number(value, integer)


_BOUND_ORDER = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def _multiples(number: Fraction, step: Fraction) -> tuple[Fraction, Fraction]:
    return math.ceil(number / step) * step, math.floor(number / step) * step


def _as_number(number: Fraction, integer: bool) -> int | float:
    if integer:
        return math.ceil(number) if number.denominator != 1 else int(number)
    return float(number)


def _accepted(forms: tuple[Form, ...], value: Any) -> bool:
    return any(f.accepts(value) for f in forms)


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None, ast.expr | None]:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.annotation, node.value
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        if isinstance(target, ast.Name):
            return target.id, None, node.value
    return None, None, None


def _cells(notebook: Notebook) -> Iterator[Finding]:
    """Code cells a task runs: parseable, no local paths, no pip install, an emit."""
    emits = False
    for number, cell in enumerate(notebook.node["cells"], 1):
        if cell.get("cell_type") != "code" or SKIP_TAG in _tags(cell):
            continue
        source = str(cell.get("source", ""))
        for line_number, line in enumerate(source.splitlines(), 1):
            if not line.lstrip().startswith("#") and PIP_INSTALL.search(line):
                yield Finding(
                    "pip-install",
                    WARNING,
                    "installing packages in a cell: list them in metadata "
                    f"{METADATA_KEY}.requirements (or requirements.txt), which the image "
                    "installs once",
                    number,
                    line_number,
                )
            magic = KERNEL_ONLY_MAGIC.match(line)
            if magic:
                yield Finding(
                    "kernel-only",
                    WARNING,
                    f"%{magic.group(1)} needs a kernel's connection file: it fails under the "
                    "fork engine (the default; see the engines' docs)",
                    number,
                    line_number,
                )
        tree = _parse(source)
        if tree is None:
            yield Finding("syntax", ERROR, "this cell is not valid Python", number)
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) == "emit":
                emits = True
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and (node.func.id in ("exit", "quit"))
            ):
                yield Finding(
                    "kernel-only",
                    WARNING,
                    f"{node.func.id}() in a cell does not end a task run under the fork "
                    "engine (a kernel would exit, and the run fail): let the cells finish, "
                    "or raise",
                    number,
                    node.lineno,
                )
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and LOCAL_PATH.match(node.value)
            ):
                yield Finding(
                    "local-path",
                    WARNING,
                    f"hard-coded local path {node.value!r}: it exists on this machine only; "
                    "read inputs from the payload's assets and write to `workdir`",
                    number,
                    node.lineno,
                )
    if not emits:
        yield Finding(
            "no-emit",
            WARNING,
            "no cell calls nb2task.emit: the output payload will have no features",
        )


def _validate_cells(notebook: Notebook) -> Iterator[Finding]:
    """Names a validate cell binds (imports, assignments) that later cells use: with
    ``--no-validate`` the cell is left out, and those cells stop with a NameError."""
    bound: dict[str, int] = {}  # name -> the validate cell that binds it
    for number, cell in enumerate(notebook.node["cells"], 1):
        tags = _tags(cell)
        if cell.get("cell_type") != "code" or SKIP_TAG in tags:
            continue
        tree = _parse(str(cell.get("source", "")))
        if tree is None:
            continue
        if VALIDATE_TAG in tags:
            for name in _bound_names(tree):
                bound.setdefault(name, number)
            continue
        for name in _bound_names(tree):
            bound.pop(name, None)  # bound again here: this cell does not need the validate one
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        for name in sorted(used & set(bound)):
            yield Finding(
                "validate-cell-binds",
                WARNING,
                f"`{name}` is bound only in the validate cell {bound.pop(name)}, which "
                "--no-validate leaves out: bind it in another cell (imports in a cell of "
                "their own)",
                number,
            )


def _bound_names(tree: ast.Module) -> set[str]:
    """The names a cell's top-level statements bind."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _requirements(notebook: Notebook) -> Iterator[Finding]:
    """Requirements nb2task build refuses, or pins to whatever is installed where it runs."""
    from .build import is_pinned, parse_requirement, requirement_sources
    from .errors import BuildError

    try:
        sources = requirement_sources(notebook)
    except BuildError as error:
        yield Finding("bad-requirement", ERROR, str(error))
        return
    for where, line in sources:
        try:
            requirement = parse_requirement(line, where, allow_url=True)
        except BuildError as error:
            yield Finding("bad-requirement", ERROR, str(error))
            continue
        if not is_pinned(requirement):
            yield Finding(
                "unpinned-requirement",
                WARNING,
                f"requirement {line!r} is not pinned: nb2task build pins it to the version "
                "installed where it runs; write NAME==VERSION",
            )


def _imports(notebook: Notebook) -> Iterator[Finding]:
    """Modules the cells import that neither the task's requirements nor nb2task's image
    provide: the task would fail with ModuleNotFoundError in its image. ``nb2task-skip``
    cells are left out: they never run in a task, nor reach the image."""
    from .build import parse_requirement, requirement_sources
    from .errors import BuildError

    try:
        lines = [
            parse_requirement(line, where, allow_url=True)
            for where, line in requirement_sources(notebook)
        ]
    except BuildError:  # _requirements says so
        return
    from packaging.utils import canonicalize_name

    required = {canonicalize_name(r.name) for r in lines}
    covered: set[str] = set()  # filled at the first import outside the standard library
    seen: set[str] = set()
    folder = notebook.path.parent
    for number, cell in enumerate(notebook.node["cells"], 1):
        if cell.get("cell_type") != "code" or SKIP_TAG in _tags(cell):
            continue
        tree = _parse(str(cell.get("source", "")))
        for module, line in _imported(tree.body if tree is not None else []):
            top = module.partition(".")[0]
            if top in seen or top in sys.stdlib_module_names or top == "nb2task":
                continue
            seen.add(top)
            if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
                continue  # the notebook's own module (nb2task build --include)
            if not covered:
                covered = _closure((r.name, frozenset(r.extras)) for r in lines)
                covered |= _image_distributions()
            dists = _providers().get(top, [])
            if {canonicalize_name(d) for d in dists} & covered:
                continue
            if not dists and canonicalize_name(IMPORT_ALIASES.get(top, top)) in required:
                continue  # not installed here, but named by a requirement
            if dists:
                from importlib.metadata import version

                dist = dists[0]
                why = (
                    f"{top!r} comes from {dist} (installed here: {dist}=={version(dist)}), "
                    f"which neither the task's requirements nor nb2task's image provide: add "
                    f"it to metadata {METADATA_KEY}.requirements"
                )
            else:
                why = (
                    f"no distribution installed here provides {top!r}, and no requirement is "
                    f"named so: add the one that does to metadata {METADATA_KEY}.requirements"
                )
            yield Finding(
                "import-not-in-requirements", WARNING, f"import {module}: {why}", number, line
            )


# Import names whose distribution is named otherwise, for modules not installed here
# (installed ones are looked up in their distributions' metadata).
IMPORT_ALIASES = {
    "PIL": "pillow",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "osgeo": "gdal",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "jwt": "pyjwt",
    "dotenv": "python-dotenv",
}
# What Dockerfile.base uninstalls from nb2task's stack (debugging and completion only).
REMOVED_FROM_IMAGE = frozenset({"debugpy", "jedi", "parso"})
_OPTIONAL_IMPORT = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _imported(body: list[ast.stmt]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for each import a cell runs as it runs: its statements and their
    blocks, not function or class bodies (run when called, if ever), and not a ``try``
    that catches ImportError (an optional import, with its fallback)."""
    for node in body:
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.module, node.lineno
        elif isinstance(node, ast.Try | ast.TryStar):
            if not any(_catches_import_error(h) for h in node.handlers):
                yield from _imported(node.body)
                for handler in node.handlers:
                    yield from _imported(handler.body)
            yield from _imported(node.orelse)
            yield from _imported(node.finalbody)
        elif isinstance(node, ast.If | ast.For | ast.AsyncFor | ast.While):
            if not (isinstance(node, ast.If) and _annotation_only(node.test)):
                yield from _imported(node.body)
            yield from _imported(node.orelse)
        elif isinstance(node, ast.With | ast.AsyncWith):
            yield from _imported(node.body)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        (n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else "")
        in _OPTIONAL_IMPORT
        for n in names
    )


def _annotation_only(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:``: a block that never runs."""
    name = (
        test.id
        if isinstance(test, ast.Name)
        else test.attr
        if isinstance(test, ast.Attribute)
        else ""
    )
    return name == "TYPE_CHECKING"


@functools.cache
def _providers() -> dict[str, list[str]]:
    """Import name -> the installed distributions that provide it."""
    from importlib.metadata import packages_distributions

    return {name: list(dists) for name, dists in packages_distributions().items()}


@functools.cache
def _image_distributions() -> frozenset[str]:
    """The distributions in nb2task's image: nb2task and what it requires (no extras),
    installed here, less what the base image removes."""
    return frozenset(_closure([("nb2task", frozenset())]) - REMOVED_FROM_IMAGE)


def _closure(roots: Iterable[tuple[str, frozenset[str]]]) -> set[str]:
    """The canonical names of ``roots`` (name, extras) and of everything they require,
    as far as it is installed here."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    queue = list(roots)
    while queue:
        name, extras = queue.pop()
        key = (canonicalize_name(name), extras)
        if key in walked:
            continue
        walked.add(key)
        found.add(key[0])
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in lines:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
                queue.append((requirement.name, frozenset(requirement.extras)))
    return found


def _kernel(notebook: Notebook) -> Iterator[Finding]:
    language = str(notebook.kernelspec.get("language") or "python").lower()
    if language != "python":
        yield Finding(
            "non-python-kernel",
            WARNING,
            f"the notebook's kernel is {language!r}: it runs on the kernel engine only, with a "
            "kernel the image must provide; nb2task's images have Python's",
        )


def _tags(cell: dict[str, Any]) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _parse(source: str) -> ast.Module | None:
    """A cell's code as Python (IPython's magics and ``!`` commands turned into calls)."""
    if any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()):
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)  # type: ignore[no-untyped-call]
    try:
        return ast.parse(source)
    except SyntaxError:
        return None
