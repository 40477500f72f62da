"""Constraints on parameter values, as JSON Schema validation keywords, checked.

``enum``, the bounds (``minimum``, ``exclusiveMaximum``...), ``multipleOf`` and the
lengths (``minLength``, ``minItems``, ``minProperties``...) apply as JSON Schema applies
them: a keyword checks only values of the types it is for, and values compare as JSON
compares them (``1 == 1.0``, but ``True`` is not ``1``). A broken rule is a message
naming the parameter, the rule and the value, on one line.

A ``Form`` is one shape a value may take (its types, its elements', their rules); a
union that one form cannot express exactly is several (JSON Schema's ``anyOf``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
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


@dataclass(frozen=True)
class Form:
    """One form a value may take: its JSON types, its elements' types, their rules, and
    (``item_any_of``) the forms an element may take when one form cannot say it."""

    types: tuple[str, ...] = ()  # empty means any type
    items: tuple[str, ...] = ()  # empty means any
    rules: dict[str, Any] = field(default_factory=dict)
    item_rules: dict[str, Any] = field(default_factory=dict)
    item_any_of: tuple[Form, ...] = ()

    @property
    def type_label(self) -> str:
        label = " | ".join(self.types) if self.types else "any"
        if self.items:
            label = label.replace("array", f"array of {' | '.join(self.items)}")
        return label

    @property
    def rule_words(self) -> list[str]:
        """The rules in a few words each (``one of ['a', 'b']``, ``>= 0``)."""
        words = [phrase(k, v) for k, v in self.rules.items()]
        if self.item_any_of:
            words.append("each " + alternatives(self.item_any_of))
        elif self.item_rules:
            words.append("each " + ", ".join(phrase(k, v) for k, v in self.item_rules.items()))
        return words

    @property
    def label(self) -> str:
        """The form in a few words: ``one of ['a', 'b']``, ``integer (>= 0)``, ``null``."""
        words = self.rule_words
        if list(self.rules) == ["enum"] and len(words) == 1:
            return words[0]
        return f"{self.type_label} ({', '.join(words)})" if words else self.type_label

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.types:
            schema["type"] = self.types[0] if len(self.types) == 1 else list(self.types)
        schema.update(copy_rules(self.rules))
        if self.item_any_of:
            schema["items"] = {"anyOf": [f.json_schema() for f in self.item_any_of]}
        elif self.items or self.item_rules:
            items: dict[str, Any] = {}
            if self.items:
                items["type"] = self.items[0] if len(self.items) == 1 else list(self.items)
            schema["items"] = {**items, **copy_rules(self.item_rules)}
        return schema

    def accept(self, label: str, value: Any) -> Any:
        """``value`` (as given: an int stays an int where a number is wanted, as stactask
        passes it), or Refused: a wrong type, or a value the rules refuse."""
        value = self.typed(label, value)
        self.enforce(label, value)
        return value

    def accepts(self, value: Any) -> bool:
        try:
            self.accept("", value)
        except Refused:
            return False
        return True

    def typed(self, label: str, value: Any) -> Any:
        """``value``, or Refused when it is not of this form's types (nor its elements of
        the elements')."""
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(
                f"{label} must be a finite number, got {value!r} (NaN and infinity are not JSON)"
            )
        matched = next((t for t in self.types if is_json_type(value, t)), None)
        if self.types and matched is None:
            raise Refused(
                f"{label} must be {self.type_label}, got {type(value).__name__} {short(value)}"
            )
        if matched in (None, "array") and isinstance(value, list | tuple):
            if self.item_any_of:  # typed and checked at once, alternative by alternative
                return [
                    accept_any(f"{label}[{i}]", e, self.item_any_of) for i, e in enumerate(value)
                ]
            if self.items:
                return [self._typed_element(f"{label}[{i}]", e) for i, e in enumerate(value)]
        return value

    def _typed_element(self, label: str, element: Any) -> Any:
        if isinstance(element, float) and not math.isfinite(element):
            raise Refused(f"{label} must be a finite number")
        for json_type in self.items:
            if is_json_type(element, json_type):
                return element
        raise Refused(
            f"{label} must be {' | '.join(self.items)}, "
            f"got {type(element).__name__} {short(element)}"
        )

    def enforce(self, label: str, value: Any) -> None:
        enforce(label, value, self.rules, self._enum_keys)
        if self.item_rules and not self.item_any_of and isinstance(value, list | tuple):
            keys = self._item_enum_keys
            for index, element in enumerate(value):
                enforce(f"{label}[{index}]", element, self.item_rules, keys)

    # Sets, so that a long Literal and a long list cost one lookup an element.
    @cached_property
    def _enum_keys(self) -> frozenset[tuple[Any, ...] | None]:
        return frozenset(enum_key(v) for v in self.rules.get("enum", ()))

    @cached_property
    def _item_enum_keys(self) -> frozenset[tuple[Any, ...] | None]:
        return frozenset(enum_key(v) for v in self.item_rules.get("enum", ()))


def accept_any(label: str, value: Any, forms: tuple[Form, ...]) -> Any:
    """``value`` as the first of ``forms`` that accepts it takes it (JSON Schema's
    ``anyOf``), or Refused naming what it must be."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(
            f"{label} must be a finite number, got {value!r} (NaN and infinity are not JSON)"
        )
    for form in forms:
        try:
            return form.accept(label, value)
        except Refused:
            continue
    raise Refused(f"{label} must be {alternatives(forms)}, got {short(value)}")


def alternatives(forms: tuple[Form, ...]) -> str:
    """``A or B or C`` for a one-line message: the first few, and how many there are."""
    shown: list[str] = []
    for form in forms:
        text = form.label
        if shown and sum(len(s) + 4 for s in shown) + len(text) > 120:
            return f"{' or '.join(shown)} or ... ({len(forms)} alternatives)"
        shown.append(text)
    return " or ".join(shown)


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
