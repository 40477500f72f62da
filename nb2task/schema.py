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
import math
import operator
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
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


class ConstraintError(NotebookError):
    """A constraint in the parameters cell that nb2task cannot read (``line``: where)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class _Refused(Exception):
    """A value a parameter refuses (InvalidInput once it leaves ``check``)."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of the notebook."""

    name: str
    types: tuple[str, ...]  # JSON Schema type names; empty means any type
    default: Any = _MISSING
    help: str = ""
    items: tuple[str, ...] = ()  # for a list: its elements' JSON types; empty means any
    # JSON Schema validation keywords (``enum``, ``minimum``, ``minItems``...), for the
    # value and for a list's elements; read-only.
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()  # Annotated metadata nb2task does not check, as written

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

    @property
    def rules_label(self) -> str:
        """The constraints in a few words (``one of ['a', 'b']``, ``>= 0, <= 10``), or ''."""
        words = [_phrase(k, v) for k, v in self.rules.items()]
        if self.item_rules:
            words.append("each " + ", ".join(_phrase(k, v) for k, v in self.item_rules.items()))
        return ", ".join(words)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if len(self.types) == 1:
            schema["type"] = self.types[0]
        elif self.types:
            schema["type"] = list(self.types)
        schema.update(_copy_rules(self.rules))
        if self.items or self.item_rules:
            items: dict[str, Any] = {}
            if self.items:
                items["type"] = self.items[0] if len(self.items) == 1 else list(self.items)
            schema["items"] = {**items, **_copy_rules(self.item_rules)}
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
        """Return ``value`` (an int widened to float where a number is wanted), or raise
        InvalidInput: a wrong type, or a value its constraints refuse."""
        try:
            value = self._typed(value)
            self._enforce(value)
        except _Refused as refused:
            raise invalid_input(str(refused)) from None
        return value

    def default_violation(self) -> str | None:
        """Why the literal default breaks the parameter's own constraints, or None (a
        default of another type, such as ``None``, is the notebook's business)."""
        if self.required or self.computed:
            return None
        try:
            value = self._typed(self.default)
        except _Refused:
            return None
        try:
            self._enforce(value)
        except _Refused as refused:
            return str(refused)
        return None

    def _typed(self, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused(
                f"parameter '{self.name}' must be a finite number, got {value!r} "
                "(NaN and infinity are not JSON)"
            )
        matched = next((t for t in self.types if _is_json_type(value, t)), None)
        if self.types and matched is None:
            raise _Refused(
                f"parameter '{self.name}' must be {self.type_label}, "
                f"got {type(value).__name__} {_short(value)}"
            )
        if matched in (None, "array") and isinstance(value, list | tuple) and self.items:
            return [self._typed_element(i, element) for i, element in enumerate(value)]
        return float(value) if matched == "number" else value

    def _typed_element(self, index: int, element: Any) -> Any:
        if isinstance(element, float) and not math.isfinite(element):
            raise _Refused(f"parameter '{self.name}'[{index}] must be a finite number")
        for json_type in self.items:
            if _is_json_type(element, json_type):
                return float(element) if json_type == "number" else element
        raise _Refused(
            f"parameter '{self.name}'[{index}] must be {' | '.join(self.items)}, "
            f"got {type(element).__name__} {_short(element)}"
        )

    def _enforce(self, value: Any) -> None:
        _enforce(f"parameter '{self.name}'", value, self.rules, self._enum_keys)
        if self.item_rules and isinstance(value, list | tuple):
            keys = self._item_enum_keys
            for index, element in enumerate(value):
                _enforce(f"parameter '{self.name}'[{index}]", element, self.item_rules, keys)

    # Sets, so that a long Literal and a long list cost one lookup an element.
    @cached_property
    def _enum_keys(self) -> frozenset[tuple[Any, ...] | None]:
        return frozenset(_enum_key(v) for v in self.rules.get("enum", ()))

    @cached_property
    def _item_enum_keys(self) -> frozenset[tuple[Any, ...] | None]:
        return frozenset(_enum_key(v) for v in self.item_rules.get("enum", ()))


# The validation keywords nb2task reads and checks: keyword -> (the JSON types it applies
# to, as JSON Schema has it: other values pass; how a message says it).
_NUMBERS = ("integer", "number")
_KEYWORDS: dict[str, tuple[tuple[str, ...], str]] = {
    "exclusiveMinimum": (_NUMBERS, "be > {}"),
    "minimum": (_NUMBERS, "be >= {}"),
    "exclusiveMaximum": (_NUMBERS, "be < {}"),
    "maximum": (_NUMBERS, "be <= {}"),
    "multipleOf": (_NUMBERS, "be a multiple of {}"),
    "minLength": (("string",), "be at least {} character(s) long"),
    "maxLength": (("string",), "be at most {} character(s) long"),
    "minItems": (("array",), "have at least {} item(s)"),
    "maxItems": (("array",), "have at most {} item(s)"),
    "minProperties": (("object",), "have at least {} key(s)"),
    "maxProperties": (("object",), "have at most {} key(s)"),
}
_LOWER = frozenset({"exclusiveMinimum", "minimum", "minLength", "minItems", "minProperties"})
_LENGTHS = {"string": "Length", "array": "Items", "object": "Properties"}


def _copy_rules(rules: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if k == "enum" else v for k, v in rules.items()}


def _phrase(keyword: str, bound: Any) -> str:
    if keyword == "enum":
        return f"one of {_show_values(bound)}"
    return _KEYWORDS[keyword][1].format(bound).removeprefix("be ").removeprefix("have ")


def _enforce(label: str, value: Any, rules: dict[str, Any], keys: frozenset[Any]) -> None:
    """Refuse ``value`` if it breaks a rule, naming ``label``, the rule and the value."""
    if "enum" in rules and _enum_key(value) not in keys:
        raise _Refused(f"{label} must be one of {_show_values(rules['enum'])}, got {_short(value)}")
    for keyword, bound in rules.items():
        if keyword == "enum":
            continue
        applies, phrase = _KEYWORDS[keyword]
        if not any(_is_json_type(value, t) for t in applies) or _satisfies(keyword, value, bound):
            continue
        got = _short(value) if applies is _NUMBERS else f"{_short(value)} (length {len(value)})"
        raise _Refused(f"{label} must {phrase.format(bound)}, got {got}")


_BOUNDS = {
    "exclusiveMinimum": operator.gt,
    "minimum": operator.ge,
    "exclusiveMaximum": operator.lt,
    "maximum": operator.le,
}


def _satisfies(keyword: str, value: Any, bound: Any) -> bool:
    if keyword == "multipleOf":
        return _is_multiple(value, bound)
    if keyword in _BOUNDS:
        return bool(_BOUNDS[keyword](value, bound))
    return bool(len(value) >= bound if keyword in _LOWER else len(value) <= bound)


def _is_multiple(value: float, step: float) -> bool:
    """Exactly, in decimal: 0.3 is a multiple of 0.1 (binary floats say it is not)."""
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    return Fraction(repr(value)) % Fraction(repr(step)) == 0


def _enum_key(value: Any) -> tuple[Any, ...] | None:
    """A value as JSON compares it: ``1 == 1.0``, but ``True`` is not ``1``."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return None  # a list or a mapping: never one of a Literal's values


def _show_values(values: list[Any]) -> str:
    """A Literal's values for a one-line message: the first few, and how many there are."""
    shown: list[str] = []
    for value in values:
        text = _short(value)
        if shown and sum(len(s) + 2 for s in shown) + len(text) > 70:
            return f"[{', '.join(shown)}, ... ({len(values)} values)]"
        shown.append(text)
    return f"[{', '.join(shown)}]"


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
            shape = _shape(annotation)
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
    )


@dataclass(frozen=True)
class _Shape:
    """What an annotation says of a value: its JSON types, its elements', their rules."""

    types: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()


_SEQUENCES = ("list", "List", "tuple", "Tuple", "Sequence")


def _shape(node: ast.expr) -> _Shape:
    """Read an annotation (``float``, ``int | None``, ``Optional[str]``, ``list[str]``,
    ``Literal["a", "b"]``, ``Annotated[int, Ge(0)]``) without evaluating anything."""
    if isinstance(node, ast.Constant) and node.value is None:
        return _Shape(("null",))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _shape(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return _Shape()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_shape(node.left), _shape(node.right)])
    if isinstance(node, ast.Subscript):
        outer = _annotation_name(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional":
            return _union([_shape(node.slice), _Shape(("null",))])
        if outer == "Union":
            return _union([_shape(arg) for arg in args])
        if outer == "Literal":
            return _literal(args)
        if outer == "Annotated" and args:
            return _annotated(_shape(args[0]), args[1:])
        base = _JSON_TYPES.get(outer)
        if outer in _SEQUENCES:
            elements = [a for a in args if not (isinstance(a, ast.Constant) and a.value is ...)]
            element = _union([_shape(e) for e in elements]) if elements else _Shape()
            return _Shape(
                (base,) if base else (),
                element.types,
                item_rules=element.rules,
                unknown=element.unknown,
            )
        return _Shape((base,) if base else ())
    base = _JSON_TYPES.get(_annotation_name(node))
    return _Shape((base,) if base else ())


def _annotation_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _union(shapes: list[_Shape]) -> _Shape:
    """``A | B``: any type of either; a rule only where every member it applies to has it
    (the loosest), so that a union never refuses what one of its members accepts."""
    if len(shapes) == 1:
        return shapes[0]
    types = () if any(not s.types for s in shapes) else _unique(t for s in shapes for t in s.types)
    listed = next((s for s in shapes if s.items or s.item_rules), _Shape())
    rules: dict[str, Any] = {}
    if any("enum" in s.rules for s in shapes) and all(
        "enum" in s.rules or s.types == ("null",) for s in shapes
    ):
        rules["enum"] = _unique_values(v for s in shapes for v in s.rules.get("enum", [None]))
    for keyword, (applies, _) in _KEYWORDS.items():
        covering = [s for s in shapes if not s.types or set(s.types) & set(applies)]
        bounds: list[Any] = [s.rules[keyword] for s in covering if keyword in s.rules]
        if covering and len(bounds) == len(covering):
            loosest = min(bounds) if keyword in _LOWER else max(bounds)
            if keyword != "multipleOf" or len(set(bounds)) == 1:
                rules[keyword] = loosest
    return _Shape(
        types,
        listed.items,
        rules,
        listed.item_rules,
        tuple(u for s in shapes for u in s.unknown),
    )


def _literal(args: list[ast.expr]) -> _Shape:
    """``Literal[...]``: its values are the allowed ones; its types, theirs."""
    values: list[Any] = []
    for arg in args:
        if isinstance(arg, ast.Subscript) and _annotation_name(arg.value) == "Literal":
            values.extend(
                _literal(arg.slice.elts if isinstance(arg.slice, ast.Tuple) else [arg.slice]).rules[
                    "enum"
                ]
            )
            continue
        value = _literal_value(arg, "Literal[...]")
        if not (value is None or isinstance(value, str | int | float)):
            raise ConstraintError(
                f"Literal[...] value {_source(arg)} is of type {type(value).__name__}: "
                "Literal values must be strings, numbers, booleans or None (JSON's)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConstraintError(f"Literal[...] value {_source(arg)} is not a finite number")
        values.append(value)
    if not values:
        raise ConstraintError("Literal[] names no value")
    enum = _unique_values(values)
    types = _unique(_JSON_TYPES[type(v).__name__] for v in enum)
    if "integer" in types and "number" in types:
        types = tuple(t for t in types if t != "integer")
    return _Shape(types, rules={"enum": enum})


# annotated-types' markers (and pydantic's Field) nb2task reads: name -> the arguments
# each takes by position, then the ones taken by keyword only.
_MARKERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Gt": (("gt",), ()),
    "Ge": (("ge",), ()),
    "Lt": (("lt",), ()),
    "Le": (("le",), ()),
    "MultipleOf": (("multiple_of",), ()),
    "MinLen": (("min_length",), ()),
    "MaxLen": (("max_length",), ()),
    "Len": (("min_length", "max_length"), ()),
    "Interval": ((), ("gt", "ge", "lt", "le")),
    "Field": ((), ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length")),
}
_SINGLE = ("Gt", "Ge", "Lt", "Le", "MultipleOf", "MinLen", "MaxLen")  # one argument, needed
_BOUND_KEYWORDS = {
    "gt": "exclusiveMinimum",
    "ge": "minimum",
    "lt": "exclusiveMaximum",
    "le": "maximum",
    "multiple_of": "multipleOf",
}
# Metadata that documents and constrains nothing: accepted without a word.
_DOCUMENTATION = ("Doc", "doc")
_FIELD_DOCUMENTATION = ("description", "title", "examples", "json_schema_extra", "deprecated")


def _annotated(base: _Shape, metadata: list[ast.expr]) -> _Shape:
    """``Annotated[T, ...]``: ``T``'s shape, narrowed by each marker nb2task knows; the
    rest is kept, as written, in ``unknown``."""
    rules = dict(base.rules)
    unknown = list(base.unknown)
    for marker in metadata:
        name = _annotation_name(marker.func) if isinstance(marker, ast.Call) else ""
        if name in _DOCUMENTATION:
            continue
        if name not in _MARKERS or not isinstance(marker, ast.Call):
            unknown.append(_source(marker))
            continue
        arguments, ignored = _marker_arguments(marker, name)
        unknown.extend(ignored)
        for argument, value in arguments.items():
            for keyword, bound in _marker_keywords(marker, argument, value, base.types):
                rules[keyword] = _tighter(keyword, rules.get(keyword), bound, marker)
    _check_satisfiable(rules, metadata)
    return _Shape(base.types, base.items, rules, base.item_rules, tuple(unknown))


def _marker_arguments(call: ast.Call, name: str) -> tuple[dict[str, Any], list[str]]:
    """A marker's arguments as literals, by name; and the ``Field`` keywords not read."""
    positional, keyword_only = _MARKERS[name]
    where = _source(call)
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        raise ConstraintError(f"{where}: write its arguments out (no * or **)")
    if len(call.args) > len(positional):
        takes = f"{len(positional)} positional argument(s)" if positional else "keywords only"
        raise ConstraintError(f"{where}: {name}() takes {takes}, got {len(call.args)}")
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for argument, node in zip(positional, call.args, strict=False):
        values[argument] = _literal_value(node, where)
    for keyword in call.keywords:
        assert keyword.arg is not None  # ** was refused above
        if keyword.arg in values:
            raise ConstraintError(f"{where}: {keyword.arg} is given twice")
        if keyword.arg in positional + keyword_only:
            values[keyword.arg] = _literal_value(keyword.value, where)
        elif name == "Field" and keyword.arg in _FIELD_DOCUMENTATION:
            continue
        elif name == "Field":
            ignored.append(f"Field({keyword.arg}=...)")
        else:
            raise ConstraintError(f"{where}: {name}() takes no argument {keyword.arg!r}")
    if name in _SINGLE and not values:
        raise ConstraintError(f"{where}: {name}() takes one argument, got none")
    return values, ignored


def _marker_keywords(
    marker: ast.Call, argument: str, value: Any, types: tuple[str, ...]
) -> list[tuple[str, Any]]:
    """The JSON Schema keywords one marker argument makes, for a value of ``types``."""
    where = _source(marker)
    if value is None and _annotation_name(marker.func) in ("Interval", "Field", "Len"):
        return []  # unset, as those markers take it
    if argument in _BOUND_KEYWORDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConstraintError(f"{where}: {argument} must be a number, got {_short(value)}")
        if not math.isfinite(value):
            raise ConstraintError(f"{where}: {argument} must be a finite number")
        if argument == "multiple_of" and value <= 0:
            raise ConstraintError(f"{where}: multiple_of must be > 0, got {value!r}")
        if types and not set(types) & set(_NUMBERS):
            raise ConstraintError(
                f"{where} bounds numbers, and the parameter is {' | '.join(types)}"
            )
        return [(_BOUND_KEYWORDS[argument], value)]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConstraintError(f"{where}: {argument} must be an integer >= 0, got {_short(value)}")
    sized = [t for t in types if t in _LENGTHS] if types else list(_LENGTHS)
    if not sized:
        raise ConstraintError(
            f"{where} bounds a length (of a string, list or mapping), and the parameter is "
            f"{' | '.join(types)}"
        )
    prefix = "min" if argument == "min_length" else "max"
    return [(prefix + _LENGTHS[t], value) for t in sized]


def _tighter(keyword: str, old: Any, new: Any, marker: ast.expr) -> Any:
    """Two markers' bounds on one keyword: the stricter one."""
    if old is None:
        return new
    if keyword == "multipleOf":
        if isinstance(old, int) and isinstance(new, int) and (old % new == 0 or new % old == 0):
            return max(old, new)
        raise ConstraintError(f"{_source(marker)}: a second, different multipleOf ({old!r})")
    return max(old, new) if keyword in _LOWER else min(old, new)


def _check_satisfiable(rules: dict[str, Any], metadata: list[ast.expr]) -> None:
    """ConstraintError when no value can meet the bounds (``Ge(10), Le(5)``)."""
    pairs = [("minimum", "maximum", False), ("exclusiveMinimum", "maximum", True)]
    pairs += [("minimum", "exclusiveMaximum", True), ("exclusiveMinimum", "exclusiveMaximum", True)]
    pairs += [(f"min{s}", f"max{s}", False) for s in _LENGTHS.values()]
    for low, high, strict in pairs:
        if low in rules and high in rules:
            lo, hi = rules[low], rules[high]
            if lo > hi or (strict and lo >= hi):
                where = ", ".join(_source(m) for m in metadata)
                raise ConstraintError(f"{where}: no value satisfies {low} {lo!r} and {high} {hi!r}")


def _literal_value(node: ast.expr, where: str) -> Any:
    """A literal in a constraint, never evaluated: anything else is a ConstraintError."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ConstraintError(
            f"{where}: {_source(node)} is not a literal; nb2task reads constraints "
            "without running the cell: write the value itself"
        ) from None


def _source(node: ast.expr) -> str:
    """An expression as written, cut for a one-line message."""
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _unique_values(values: Iterable[Any]) -> list[Any]:
    """Values without repeats as JSON compares them (``1`` and ``1.0`` are one)."""
    seen: dict[Any, Any] = {}
    for value in values:
        seen.setdefault(_enum_key(value), value)
    return list(seen.values())


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
