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
from dataclasses import dataclass, field, replace
from typing import Any

from .constraints import KEYWORDS, LENGTHS, LOWER, NUMBERS, Form, enum_key, short
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
    """What an annotation says of a value: its JSON types, its elements', their rules
    (for a union, loosely merged: what every member's values meet); ``any_of``, when
    that merge would loosen the union, the members' own forms (``item_any_of``: the
    elements'); ``unknown``, the Annotated metadata nb2task does not read."""

    types: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    any_of: tuple[Form, ...] = ()
    item_any_of: tuple[Form, ...] = ()

    @property
    def form(self) -> Form:
        """The merged form (loose where ``any_of`` is set)."""
        return Form(self.types, self.items, self.rules, self.item_rules, self.item_any_of)

    @property
    def forms(self) -> tuple[Form, ...]:
        """The forms a value may take: ``any_of``, or the one form."""
        return self.any_of or (self.form,)


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
        return _union([read_annotation(member) for member in _members(node)])
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
                item_any_of=element.any_of,
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


def _members(node: ast.BinOp) -> list[ast.expr]:
    """The members of ``A | B | C``, read without recursion (a long chain nests deep)."""
    members: list[ast.expr] = []
    pending: list[ast.expr] = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.BinOp) and isinstance(current.op, ast.BitOr):
            pending += [current.right, current.left]
        else:
            members.append(current)
    return members


def _union(shapes: list[Shape]) -> Shape:
    """``A | B``: the members merged into one form where that form accepts exactly what
    the members do (``int | None``, ``Literal["a"] | Literal["b"]``); otherwise the
    loose merge (any type of any member, a rule only where every member it applies to
    has it) plus ``any_of``, the members' own forms, which JSON Schema's ``anyOf`` and
    ``check`` use."""
    if len(shapes) == 1:
        return shapes[0]
    unknown = tuple(u for s in shapes for u in s.unknown)
    forms = _group([f for s in shapes for f in s.forms])
    merged = _merge(forms)
    exact = len(forms) == 1 or _exact(merged, forms)
    return _shape(merged, unknown, () if exact else tuple(forms))


def _shape(form: Form, unknown: tuple[str, ...] = (), any_of: tuple[Form, ...] = ()) -> Shape:
    return Shape(
        form.types, form.items, form.rules, form.item_rules, unknown, any_of, form.item_any_of
    )


def _group(forms: list[Form]) -> list[Form]:
    """The members' forms with the ones that merge exactly merged: the unconstrained
    (``int | str``) into one, the Literals (``enum`` alone) into one; repeats dropped."""
    groups: list[Form] = []
    plain: int | None = None
    enum: int | None = None
    seen: set[str] = set()
    for form in forms:
        bare = not (form.items or form.item_rules or form.item_any_of)
        if bare and not form.rules:
            if plain is None:
                plain = len(groups)
                groups.append(form)
            else:
                old = groups[plain]
                types = () if not (old.types and form.types) else unique(old.types + form.types)
                groups[plain] = Form(types)
        elif bare and list(form.rules) == ["enum"] and form.types:
            if enum is None:
                enum = len(groups)
                groups.append(form)
            else:
                old = groups[enum]
                values = _unique_values([*old.rules["enum"], *form.rules["enum"]])
                groups[enum] = Form(unique(old.types + form.types), rules={"enum": values})
        else:
            key = repr(form.json_schema())
            if key not in seen:
                seen.add(key)
                groups.append(form)
    return groups


def _merge(forms: list[Form]) -> Form:
    """One form that accepts whatever any of ``forms`` does (and maybe more)."""
    if len(forms) == 1:
        return forms[0]
    types = () if any(not f.types for f in forms) else unique(t for f in forms for t in f.types)
    rules: dict[str, Any] = {}
    if any("enum" in f.rules for f in forms) and all(
        "enum" in f.rules or f.types == ("null",) for f in forms
    ):
        rules["enum"] = _unique_values(v for f in forms for v in f.rules.get("enum", [None]))
    for keyword, (applies, _) in KEYWORDS.items():
        covering = [f for f in forms if _covers(f.types, applies)]
        bounds: list[Any] = [f.rules[keyword] for f in covering if keyword in f.rules]
        if covering and len(bounds) == len(covering):
            loosest = min(bounds) if keyword in LOWER else max(bounds)
            if keyword != "multipleOf" or len(set(bounds)) == 1:
                rules[keyword] = loosest
    lists = [f for f in forms if _covers(f.types, ("array",))]
    if not lists or any(not (f.items or f.item_rules or f.item_any_of) for f in lists):
        return Form(types, rules=rules)  # some list member takes any element
    element = _union([Shape(f.items, rules=f.item_rules, any_of=f.item_any_of) for f in lists])
    return Form(types, element.types, rules, element.rules, element.any_of)


# The kinds of JSON value a form may accept, each with the JSON types that cover it
# (an integer is a number too).
_KINDS = {
    "null": ("null",),
    "boolean": ("boolean",),
    "integer": ("integer", "number"),
    "fraction": ("number",),
    "string": ("string",),
    "array": ("array",),
    "object": ("object",),
}


def _exact(merged: Form, forms: list[Form]) -> bool:
    """Whether ``merged`` accepts only what one of ``forms`` accepts (it accepts all of
    it). With an ``enum``, value by value; without, kind by kind: some form of that kind
    has the merged form's very rules for it (then it accepts all the merged form does)."""
    if "enum" in merged.rules:
        taken: set[Any] = {("null",)} if any(f.types == ("null",) for f in forms) else set()
        for form in forms:
            taken.update(enum_key(v) for v in form.rules.get("enum", ()) if form.accepts(v))
        return all(enum_key(v) in taken for v in merged.rules["enum"] if merged.accepts(v))
    for kind, covering in _KINDS.items():
        wanted = _restricted(merged, kind)
        members = [f for f in forms if _covers(f.types, covering)]
        if members and not any(_restricted(f, kind) == wanted for f in members):
            return False
    return True


def _restricted(form: Form, kind: str) -> tuple[Any, ...]:
    """What ``form`` asks of a value of ``kind``, comparable between forms."""
    json_type = _KINDS[kind][-1]
    rules = {k: v for k, v in form.rules.items() if k != "enum" and json_type in KEYWORDS[k][0]}
    elements = (form.items, form.item_rules, form.item_any_of) if kind == "array" else ()
    return ("enum" in form.rules, rules, elements)


def _covers(types: tuple[str, ...], json_types: tuple[str, ...]) -> bool:
    return not types or bool(set(types) & set(json_types))


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
    """``Annotated[T, ...]``: ``T``'s shape, narrowed by each marker nb2task knows (each
    of a union's forms by the markers for its types); the rest is kept, as written, in
    ``unknown``."""
    rules = dict(base.rules)
    narrowed = [dict(form.rules) for form in base.any_of]
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
                for form, form_rules in zip(base.any_of, narrowed, strict=True):
                    if _covers(form.types, KEYWORDS[keyword][0]):
                        old = form_rules.get(keyword)
                        form_rules[keyword] = _tighter(keyword, old, bound, marker)
    _check_satisfiable(rules, metadata)
    if base.any_of:  # the narrowed members may merge now
        members = [
            Shape(f.types, f.items, r, f.item_rules, (), (), f.item_any_of)
            for f, r in zip(base.any_of, narrowed, strict=True)
        ]
        return replace(_union(members), unknown=tuple(unknown))
    return Shape(
        base.types, base.items, rules, base.item_rules, tuple(unknown), (), base.item_any_of
    )


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
