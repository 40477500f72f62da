"""Read a parameter's annotation from the cell's source, never running it.

The annotation gives the JSON types of a value and of a list's elements
(``float``, ``int | None``, ``Optional[str]``, ``list[str]``) and its constraints:
``Literal[...]`` the allowed values, ``Annotated[T, Ge(0), MaxLen(3)]``
(annotated-types' markers, or pydantic's ``Field(ge=...)``) bounds and lengths, as JSON
Schema validation keywords. A constraint that cannot be read without running the cell
(``Ge(LIMIT)``) is a ConstraintError.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .constraints import KEYWORDS, LENGTHS, LOWER, NUMBERS, enum_key, short
from .errors import NotebookError

# Python type name -> JSON Schema type name.
JSON_TYPES = {
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


class ConstraintError(NotebookError):
    """A constraint in the parameters cell that nb2task cannot read (``line``: where)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Shape:
    """What an annotation says of a value: its JSON types, its elements', their rules."""

    types: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()


_SEQUENCES = ("list", "List", "tuple", "Tuple", "Sequence")


def read_annotation(node: ast.expr) -> Shape:
    """Read an annotation (``float``, ``int | None``, ``Optional[str]``, ``list[str]``,
    ``Literal["a", "b"]``, ``Annotated[int, Ge(0)]``) without evaluating anything."""
    if isinstance(node, ast.Constant) and node.value is None:
        return Shape(("null",))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return read_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return Shape()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([read_annotation(node.left), read_annotation(node.right)])
    if isinstance(node, ast.Subscript):
        outer = _annotation_name(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional":
            return _union([read_annotation(node.slice), Shape(("null",))])
        if outer == "Union":
            return _union([read_annotation(arg) for arg in args])
        if outer == "Literal":
            return _literal(args)
        if outer == "Annotated" and args:
            return _annotated(read_annotation(args[0]), args[1:])
        base = JSON_TYPES.get(outer)
        if outer in _SEQUENCES:
            elements = [a for a in args if not (isinstance(a, ast.Constant) and a.value is ...)]
            element = _union([read_annotation(e) for e in elements]) if elements else Shape()
            return Shape(
                (base,) if base else (),
                element.types,
                item_rules=element.rules,
                unknown=element.unknown,
            )
        return Shape((base,) if base else ())
    base = JSON_TYPES.get(_annotation_name(node))
    return Shape((base,) if base else ())


def _annotation_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _union(shapes: list[Shape]) -> Shape:
    """``A | B``: any type of either; a rule only where every member it applies to has it
    (the loosest), so that a union never refuses what one of its members accepts."""
    if len(shapes) == 1:
        return shapes[0]
    types = () if any(not s.types for s in shapes) else unique(t for s in shapes for t in s.types)
    listed = next((s for s in shapes if s.items or s.item_rules), Shape())
    rules: dict[str, Any] = {}
    if any("enum" in s.rules for s in shapes) and all(
        "enum" in s.rules or s.types == ("null",) for s in shapes
    ):
        rules["enum"] = _unique_values(v for s in shapes for v in s.rules.get("enum", [None]))
    for keyword, (applies, _) in KEYWORDS.items():
        covering = [s for s in shapes if not s.types or set(s.types) & set(applies)]
        bounds: list[Any] = [s.rules[keyword] for s in covering if keyword in s.rules]
        if covering and len(bounds) == len(covering):
            loosest = min(bounds) if keyword in LOWER else max(bounds)
            if keyword != "multipleOf" or len(set(bounds)) == 1:
                rules[keyword] = loosest
    return Shape(
        types,
        listed.items,
        rules,
        listed.item_rules,
        tuple(u for s in shapes for u in s.unknown),
    )


def _literal(args: list[ast.expr]) -> Shape:
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
    types = unique(JSON_TYPES[type(v).__name__] for v in enum)
    if "integer" in types and "number" in types:
        types = tuple(t for t in types if t != "integer")
    return Shape(types, rules={"enum": enum})


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


def _annotated(base: Shape, metadata: list[ast.expr]) -> Shape:
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
    return Shape(base.types, base.items, rules, base.item_rules, tuple(unknown))


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
            raise ConstraintError(f"{where}: {argument} must be a number, got {short(value)}")
        if not math.isfinite(value):
            raise ConstraintError(f"{where}: {argument} must be a finite number")
        if argument == "multiple_of" and value <= 0:
            raise ConstraintError(f"{where}: multiple_of must be > 0, got {value!r}")
        if types and not set(types) & set(NUMBERS):
            raise ConstraintError(
                f"{where} bounds numbers, and the parameter is {' | '.join(types)}"
            )
        return [(_BOUND_KEYWORDS[argument], value)]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConstraintError(f"{where}: {argument} must be an integer >= 0, got {short(value)}")
    sized = [t for t in types if t in LENGTHS] if types else list(LENGTHS)
    if not sized:
        raise ConstraintError(
            f"{where} bounds a length (of a string, list or mapping), and the parameter is "
            f"{' | '.join(types)}"
        )
    prefix = "min" if argument == "min_length" else "max"
    return [(prefix + LENGTHS[t], value) for t in sized]


def _tighter(keyword: str, old: Any, new: Any, marker: ast.expr) -> Any:
    """Two markers' bounds on one keyword: the stricter one."""
    if old is None:
        return new
    if keyword == "multipleOf":
        if isinstance(old, int) and isinstance(new, int) and (old % new == 0 or new % old == 0):
            return max(old, new)
        raise ConstraintError(f"{_source(marker)}: a second, different multipleOf ({old!r})")
    return max(old, new) if keyword in LOWER else min(old, new)


def _check_satisfiable(rules: dict[str, Any], metadata: list[ast.expr]) -> None:
    """ConstraintError when no value can meet the bounds (``Ge(10), Le(5)``)."""
    pairs = [("minimum", "maximum", False), ("exclusiveMinimum", "maximum", True)]
    pairs += [("minimum", "exclusiveMaximum", True), ("exclusiveMinimum", "exclusiveMaximum", True)]
    pairs += [(f"min{s}", f"max{s}", False) for s in LENGTHS.values()]
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


def unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _unique_values(values: Iterable[Any]) -> list[Any]:
    """Values without repeats as JSON compares them (``1`` and ``1.0`` are one)."""
    seen: dict[Any, Any] = {}
    for value in values:
        seen.setdefault(enum_key(value), value)
    return list(seen.values())
