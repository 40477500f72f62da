"""The parameter schema of a notebook, read from its ``parameters`` cell.

Each top-level assignment in the cell is a parameter. Its type comes from the
annotation or, failing that, from the literal default (papermill's rules); a
trailing ``# comment`` is its help text; an annotation without a value makes it
required. ``payload`` and ``workdir`` are reserved: nb2task fills them itself.

Constraints come from the annotation too, read from the source and never run:
``Literal[...]`` gives the allowed values, ``Annotated[T, Ge(0), MaxLen(3)]``
(annotated-types' markers, or pydantic's ``Field(ge=...)``) bounds and lengths. They
become JSON Schema validation keywords and are checked with the types.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .annotations import JSON_TYPES, ConstraintError, read_annotation
from .constraints import Form, Refused, accept_any, alternatives
from .errors import NotebookError, UsageError, invalid_input

__all__ = [
    "RESERVED",
    "ConstraintError",
    "Parameter",
    "ParameterSchema",
    "parameter_from_node",
    "read_parameters_file",
]

RESERVED = ("payload", "workdir")

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
    # JSON Schema validation keywords (``enum``, ``minimum``, ``minItems``...), for the
    # value and for a list's elements; read-only. For a union they are what every member
    # asks; ``any_of``, when set, holds each member's own form (JSON Schema's anyOf), and
    # a value must meet one of them (``item_any_of``: the same for the elements).
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()  # Annotated metadata nb2task does not check, as written
    any_of: tuple[Form, ...] = ()
    item_any_of: tuple[Form, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def computed(self) -> bool:
        """True when the default is an expression evaluated in the notebook."""
        return isinstance(self.default, Computed)

    @property
    def type_label(self) -> str:
        return self.form.type_label

    @property
    def rules_label(self) -> str:
        """The constraints in a few words (``one of ['a', 'b']``, ``>= 0, <= 10``,
        ``array of string (at least 1 item(s)) or one of ['all']``), or ''."""
        if self.any_of:
            return alternatives(self.any_of)
        return ", ".join(self.form.rule_words)

    @cached_property
    def form(self) -> Form:
        """The merged form: the types, and the rules every value meets."""
        return Form(self.types, self.items, self.rules, self.item_rules, self.item_any_of)

    @property
    def forms(self) -> tuple[Form, ...]:
        """The forms a value may take: ``any_of``, or the one merged form."""
        return self.any_of or (self.form,)

    def json_schema(self) -> dict[str, Any]:
        if self.any_of:
            schema: dict[str, Any] = {"anyOf": [f.json_schema() for f in self.any_of]}
        else:
            schema = self.form.json_schema()
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
        """Return ``value`` (as given: an int where a float is declared stays an int, as
        stactask passes it), or raise InvalidInput: a wrong type, or a value its
        constraints refuse."""
        try:
            if self.any_of:
                return accept_any(self._label, value, self.any_of)
            return self.form.accept(self._label, value)
        except Refused as refused:
            raise invalid_input(str(refused)) from None

    def default_violation(self) -> str | None:
        """Why the literal default breaks the parameter's own constraints, or None (a
        default of another type, such as ``None``, is the notebook's business)."""
        if self.required or self.computed:
            return None
        try:
            value = self.form.typed(self._label, self.default)
        except Refused:
            return None
        try:
            if self.any_of:
                accept_any(self._label, self.default, self.any_of)
            else:
                self.form.enforce(self._label, value)
        except Refused as refused:
            return str(refused)
        return None

    @property
    def _label(self) -> str:
        return f"parameter '{self.name}'"


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
            param = parameter_from_node(node, comments)
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


def parameter_from_node(node: ast.stmt, comments: dict[int, str] | None = None) -> Parameter | None:
    """The parameter a top-level statement of the cell declares, or None; ConstraintError
    for a constraint that cannot be read without running the cell."""
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
    comments = comments or {}
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
    if annotation is None:
        types = _types_from_value(default) if default is not _MISSING else ()
        return Parameter(name, types, default, help_text)
    try:
        try:
            shape = read_annotation(annotation)
        except RecursionError:  # string annotations nested in strings, over and over
            raise ConstraintError("the annotation is nested too deeply to read") from None
    except ConstraintError as err:
        raise ConstraintError(
            f"parameters cell, line {node.lineno}: parameter '{name}': {err}", node.lineno
        ) from None
    return Parameter(
        name,
        shape.types,
        default,
        help_text,
        shape.items,
        shape.rules,
        shape.item_rules,
        shape.unknown,
        shape.any_of,
        shape.item_any_of,
    )


def _types_from_value(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()  # None says nothing about the type a user meant
    json_type = JSON_TYPES.get(type(value).__name__)
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
