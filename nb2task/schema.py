"""The parameter schema of a notebook, read from its ``parameters`` cell.

Each top-level assignment in the cell is a parameter. Its type comes from the
annotation or, failing that, from the literal default (papermill's rules); a
trailing ``# comment`` is its help text; an annotation without a value makes it
required. ``payload`` and ``workdir`` are reserved: nb2task fills them itself.
"""

from __future__ import annotations

import ast
import io
import json
import math
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NotebookError, UsageError, invalid_input

RESERVED = ("payload", "workdir")

# Python type name -> JSON Schema type name.
_JSON_TYPES = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "dict": "object",
    "List": "array",
    "Tuple": "array",
    "Dict": "object",
    "None": "null",
    "NoneType": "null",
}

_MISSING = object()


class Computed(str):
    """A default that is an expression (kept as its source text), not a literal."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of the notebook."""

    name: str
    types: tuple[str, ...]  # JSON Schema type names; empty means any type
    default: Any = _MISSING
    help: str = ""
    items: tuple[str, ...] = ()  # for a list: its elements' JSON types; empty means any

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def computed(self) -> bool:
        """True when the default is an expression evaluated in the notebook."""
        return isinstance(self.default, Computed)

    @property
    def type_label(self) -> str:
        label = " | ".join(self.types) if self.types else "any"
        if self.items:
            label = label.replace("array", f"array of {' | '.join(self.items)}")
        return label

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if len(self.types) == 1:
            schema["type"] = self.types[0]
        elif self.types:
            schema["type"] = list(self.types)
        if self.items:
            schema["items"] = {"type": self.items[0] if len(self.items) == 1 else list(self.items)}
        if not self.required and not self.computed:
            schema["default"] = self.default
        if self.help:
            schema["description"] = self.help
        return schema

    def parse_cli_value(self, text: str) -> Any:
        """A ``-p NAME VALUE`` string as this parameter's value: JSON unless a string is wanted."""
        if self.types == ("string",):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def check(self, value: Any) -> Any:
        """Return ``value`` (an int widened to float where a number is wanted), or raise."""
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid_input(
                f"parameter '{self.name}' must be a finite number, got {value!r} "
                "(NaN and infinity are not JSON)"
            )
        if not self.types:
            return value
        for json_type in self.types:
            if _is_json_type(value, json_type):
                if json_type == "array" and self.items:
                    return [self._check_element(i, element) for i, element in enumerate(value)]
                return float(value) if json_type == "number" else value
        raise invalid_input(
            f"parameter '{self.name}' must be {self.type_label}, "
            f"got {type(value).__name__} {_short(value)}"
        )

    def _check_element(self, index: int, element: Any) -> Any:
        if isinstance(element, float) and not math.isfinite(element):
            raise invalid_input(f"parameter '{self.name}'[{index}] must be a finite number")
        for json_type in self.items:
            if _is_json_type(element, json_type):
                return float(element) if json_type == "number" else element
        raise invalid_input(
            f"parameter '{self.name}'[{index}] must be {' | '.join(self.items)}, "
            f"got {type(element).__name__} {_short(element)}"
        )


def _short(value: Any) -> str:
    """A value for a one-line message: its repr, cut."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_json_type(value: Any, json_type: str) -> bool:
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "array":
        return isinstance(value, list | tuple)
    if json_type == "object":
        return isinstance(value, dict)
    if json_type == "null":
        return value is None
    return True


@dataclass(frozen=True)
class ParameterSchema:
    """All parameters of a notebook, in cell order."""

    parameters: tuple[Parameter, ...] = ()
    declared_reserved: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_source(cls, source: str) -> ParameterSchema:
        """Read the schema from the source of a ``parameters`` cell."""
        if any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()):
            # IPython syntax (%matplotlib inline, !cmd): as the kernel will see it.
            from IPython.core.inputtransformer2 import TransformerManager

            source = TransformerManager().transform_cell(source)  # type: ignore[no-untyped-call]
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise NotebookError(
                f"the parameters cell is not valid Python (line {err.lineno}: {err.msg})"
            ) from err
        except UnicodeEncodeError as err:  # a lone surrogate (a \ud800 escape in the JSON)
            raise NotebookError(
                f"the parameters cell holds a character that is not text ({err.reason}: "
                f"{err.object[err.start : err.end]!r})"
            ) from err
        comments = _trailing_comments(source)
        params: list[Parameter] = []
        reserved: set[str] = set()
        for node in tree.body:
            param = _parameter_from_node(node, comments)
            if param is None:
                continue
            if param.name in RESERVED:
                reserved.add(param.name)
            else:
                params = [p for p in params if p.name != param.name] + [param]
        return cls(tuple(params), frozenset(reserved))

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def get(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def resolve(
        self,
        task_options: dict[str, Any],
        workflow_options: dict[str, Any] | None = None,
        cli: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
        values_from: str = "-f",
    ) -> dict[str, Any]:
        """Check the values for a run against the schema; return the ones to inject.

        ``task_options`` (``process[0].tasks.<name>``) must name declared parameters.
        ``workflow_options`` are shared by every task of a workflow: used where
        declared, ignored otherwise. ``values`` are typed values given to the run
        (``-f FILE``, named by ``values_from``); ``cli`` are ``-p NAME VALUE`` strings,
        parsed by each parameter's type. Later sources win; any problem is InvalidInput.
        """
        merged = {k: v for k, v in (workflow_options or {}).items() if self.get(k) is not None}
        for name, value in task_options.items():
            self._declared(name, f"parameter '{name}'", "process[0].tasks")
            merged[name] = value
        for name, value in (values or {}).items():
            self._declared(name, f"{values_from}: {name}", "-p")
            merged[name] = value
        for name, text in (cli or {}).items():
            param = self._declared(name, f"-p {name}", "-p")
            merged[name] = param.parse_cli_value(text)
        resolved: dict[str, Any] = {}
        for param in self.parameters:
            if param.name in merged:
                resolved[param.name] = param.check(merged[param.name])
            elif param.required:
                raise invalid_input(
                    f"missing parameter '{param.name}' ({param.type_label}): "
                    "set it in process[0].tasks or workflow_options"
                )
        return resolved

    def _declared(self, name: str, label: str, source: str) -> Parameter:
        """The parameter ``name``; InvalidInput if it is reserved or undeclared."""
        if name in RESERVED:
            how = "use --workdir" if name == "workdir" else "it is the run's input payload"
            if source == "-p":
                raise invalid_input(f"{label}: '{name}' is reserved: nb2task sets it ({how})")
            raise invalid_input(f"{label} is reserved: nb2task sets it itself")
        param = self.get(name)
        if param is None:
            declared = ", ".join(self.names) or "none"
            prefix = f"{label}: unknown parameter" if source == "-p" else f"unknown {label}"
            raise invalid_input(f"{prefix} (the notebook declares: {declared})")
        return param

    def json_schema(self, title: str = "") -> dict[str, Any]:
        """The schema as JSON Schema (draft 2020-12) for the task's parameters."""
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.parameters},
            "required": [p.name for p in self.parameters if p.required],
            "additionalProperties": False,
        }
        if title:
            schema["title"] = title
        return schema


def _trailing_comments(source: str) -> dict[int, str]:
    """Line number -> text of the comment that ends that line."""
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError:
        pass
    return comments


def _parameter_from_node(node: ast.stmt, comments: dict[int, str]) -> Parameter | None:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        name, annotation, value = node.target.id, node.annotation, node.value
    elif (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ):
        name, annotation, value = node.targets[0].id, None, node.value
    else:
        return None
    end_line = node.end_lineno or node.lineno
    help_text = comments.get(end_line, comments.get(node.lineno, ""))
    default: Any = _MISSING
    if value is not None:
        try:
            default = ast.literal_eval(value)
        except ValueError:
            # A computed default (e.g. os.environ.get(...)) is kept as its source text.
            default = Computed(ast.unparse(value))
            if annotation is None:
                return Parameter(name, (), default, help_text)
    items: tuple[str, ...] = ()
    if annotation is not None:
        types = _types_from_annotation(annotation)
        items = _items_from_annotation(annotation)
    elif default is not _MISSING:
        types = _types_from_value(default)
    else:
        types = ()
    return Parameter(name, types, default, help_text, items)


_SEQUENCES = ("list", "List", "tuple", "Tuple", "Sequence")


def _items_from_annotation(node: ast.expr) -> tuple[str, ...]:
    """The element types of a list annotation (``list[str]``, ``Optional[list[int]]``,
    ``tuple[float, ...]``); empty when there is none or it says nothing."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _items_from_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return ()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _items_from_annotation(node.left) or _items_from_annotation(node.right)
    if not isinstance(node, ast.Subscript):
        return ()
    outer = _annotation_name(node.value)
    if outer in ("Optional", "Union"):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return next((found for part in parts if (found := _items_from_annotation(part))), ())
    if outer not in _SEQUENCES:
        return ()
    element = node.slice
    if isinstance(element, ast.Tuple):  # tuple[float, ...] or tuple[int, str]
        elements = [e for e in element.elts if not (isinstance(e, ast.Constant) and e.value is ...)]
        kinds = [_types_from_annotation(e) for e in elements]
        if not all(kinds):
            return ()
        return tuple(dict.fromkeys(t for kind in kinds for t in kind))
    return _types_from_annotation(element)


def _types_from_annotation(node: ast.expr) -> tuple[str, ...]:
    """JSON types of an annotation: ``float``, ``int | None``, ``Optional[str]``, ``list[str]``."""
    if isinstance(node, ast.Constant) and node.value is None:
        return ("null",)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _types_from_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return ()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _types_from_annotation(node.left), _types_from_annotation(node.right)
        if not left or not right:
            return ()
        return tuple(dict.fromkeys(left + right))
    if isinstance(node, ast.Subscript):
        outer = _annotation_name(node.value)
        if outer == "Optional":
            inner = _types_from_annotation(node.slice)
            return (*inner, "null") if inner else ()
        if outer == "Union" and isinstance(node.slice, ast.Tuple):
            parts = [_types_from_annotation(e) for e in node.slice.elts]
            if not all(parts):
                return ()
            return tuple(dict.fromkeys(t for part in parts for t in part))
        return _types_from_annotation(node.value)
    json_type = _JSON_TYPES.get(_annotation_name(node))
    return (json_type,) if json_type else ()


def _annotation_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _types_from_value(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()  # None says nothing about the type a user meant
    json_type = _JSON_TYPES.get(type(value).__name__)
    return (json_type,) if json_type else ()


def read_parameters_file(path: str | Path) -> dict[str, Any]:
    """Parameter values from a YAML or JSON file (``-f``, as papermill's): a mapping of
    name to value. UsageError if it cannot be read, is not a mapping, or is too large
    (``nb2task.safe_yaml``'s bounds on size and alias expansion)."""
    from . import safe_yaml

    where = f"-f {path}"
    try:
        if Path(path).stat().st_size > safe_yaml.MAX_BYTES:
            raise UsageError(f"{where}: over {safe_yaml.MAX_BYTES // 1024**2} MB")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{where}: cannot read parameters: {err}") from None
    document = safe_yaml.load(text, where)
    if document is None:
        return {}
    if not isinstance(document, dict) or not all(isinstance(k, str) for k in document):
        raise UsageError(f"-f {path}: parameters must be a mapping of name to value")
    return dict(document)
