"""Constraints on parameter values, as JSON Schema validation keywords, checked.

``enum``, the bounds (``minimum``, ``exclusiveMaximum``...), ``multipleOf`` and the
lengths (``minLength``, ``minItems``, ``minProperties``...) apply as JSON Schema applies
them: a keyword checks only values of the types it is for, and values compare as JSON
compares them (``1 == 1.0``, but ``True`` is not ``1``). A broken rule is a message
naming the parameter, the rule and the value, on one line.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any


class Refused(Exception):
    """A value a parameter refuses (InvalidInput once it leaves ``check``)."""


# The validation keywords nb2task reads and checks: keyword -> (the JSON types it applies
# to, as JSON Schema has it: other values pass; how a message says it).
NUMBERS = ("integer", "number")
KEYWORDS: dict[str, tuple[tuple[str, ...], str]] = {
    "exclusiveMinimum": (NUMBERS, "be > {}"),
    "minimum": (NUMBERS, "be >= {}"),
    "exclusiveMaximum": (NUMBERS, "be < {}"),
    "maximum": (NUMBERS, "be <= {}"),
    "multipleOf": (NUMBERS, "be a multiple of {}"),
    "minLength": (("string",), "be at least {} character(s) long"),
    "maxLength": (("string",), "be at most {} character(s) long"),
    "minItems": (("array",), "have at least {} item(s)"),
    "maxItems": (("array",), "have at most {} item(s)"),
    "minProperties": (("object",), "have at least {} key(s)"),
    "maxProperties": (("object",), "have at most {} key(s)"),
}
LOWER = frozenset({"exclusiveMinimum", "minimum", "minLength", "minItems", "minProperties"})
LENGTHS = {"string": "Length", "array": "Items", "object": "Properties"}


def copy_rules(rules: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if k == "enum" else v for k, v in rules.items()}


def phrase(keyword: str, bound: Any) -> str:
    if keyword == "enum":
        return f"one of {_show_values(bound)}"
    return KEYWORDS[keyword][1].format(bound).removeprefix("be ").removeprefix("have ")


def enforce(label: str, value: Any, rules: dict[str, Any], keys: frozenset[Any]) -> None:
    """Refuse ``value`` if it breaks a rule, naming ``label``, the rule and the value."""
    if "enum" in rules and enum_key(value) not in keys:
        raise Refused(f"{label} must be one of {_show_values(rules['enum'])}, got {short(value)}")
    for keyword, bound in rules.items():
        if keyword == "enum":
            continue
        applies, phrase = KEYWORDS[keyword]
        if not any(is_json_type(value, t) for t in applies) or satisfies(keyword, value, bound):
            continue
        got = short(value) if applies is NUMBERS else f"{short(value)} (length {len(value)})"
        raise Refused(f"{label} must {phrase.format(bound)}, got {got}")


_BOUNDS = {
    "exclusiveMinimum": operator.gt,
    "minimum": operator.ge,
    "exclusiveMaximum": operator.lt,
    "maximum": operator.le,
}


def satisfies(keyword: str, value: Any, bound: Any) -> bool:
    if keyword == "multipleOf":
        return _is_multiple(value, bound)
    if keyword in _BOUNDS:
        return bool(_BOUNDS[keyword](value, bound))
    return bool(len(value) >= bound if keyword in LOWER else len(value) <= bound)


def _is_multiple(value: float, step: float) -> bool:
    """Exactly, in decimal: 0.3 is a multiple of 0.1 (binary floats say it is not)."""
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    return Fraction(repr(value)) % Fraction(repr(step)) == 0


def enum_key(value: Any) -> tuple[Any, ...] | None:
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
        text = short(value)
        if shown and sum(len(s) + 2 for s in shown) + len(text) > 70:
            return f"[{', '.join(shown)}, ... ({len(values)} values)]"
        shown.append(text)
    return f"[{', '.join(shown)}]"


def short(value: Any) -> str:
    """A value for a one-line message: its repr, cut."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_json_type(value: Any, json_type: str) -> bool:
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
