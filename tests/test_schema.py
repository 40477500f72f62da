"""The parameter schema read from a parameters cell, its constraints, and its validation
(no kernel; one test runs the CLI to see the constraints checked before any cell or download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stactask.exceptions import InvalidInput
from support import make_payload, run_cli, sample_item, write_notebook

from nb2task.errors import NotebookError
from nb2task.schema import ParameterSchema

CELL = """
payload = "sample.json"  # path of the input payload
workdir = "."
threshold: float = 0.2  # NDVI below this is masked
bands: list[str] = ["red", "nir"]  # asset keys
scale = 10  # an integer from its default
label: str | None = None  # optional label
strict: bool = True
options = {"a": 1}
count: int  # required: no default
import os
x, y = 1, 2
computed = os.environ.get("HOME")
"""


@pytest.fixture
def schema() -> ParameterSchema:
    return ParameterSchema.from_source(CELL)


def test_names_types_defaults_help(schema: ParameterSchema) -> None:
    rows = {p.name: (p.types, p.default, p.help) for p in schema.parameters if not p.required}
    assert rows["threshold"] == (("number",), 0.2, "NDVI below this is masked")
    assert rows["bands"] == (("array",), ["red", "nir"], "asset keys")
    assert rows["scale"] == (("integer",), 10, "an integer from its default")
    assert rows["label"] == (("string", "null"), None, "optional label")
    assert rows["strict"] == (("boolean",), True, "")
    assert rows["options"] == (("object",), {"a": 1}, "")
    assert rows["computed"][0] == ()  # a computed default has no known type
    assert schema.get("count") is not None and schema.get("count").required  # type: ignore[union-attr]


def test_reserved_names_are_not_parameters(schema: ParameterSchema) -> None:
    assert schema.declared_reserved == {"payload", "workdir"}
    assert "payload" not in schema.names and "workdir" not in schema.names
    assert "x" not in schema.names  # tuple unpacking is not a parameter


def test_json_schema(schema: ParameterSchema) -> None:
    js = schema.json_schema(title="t")
    assert js["required"] == ["count"]
    assert js["properties"]["threshold"] == {
        "type": "number",
        "default": 0.2,
        "description": "NDVI below this is masked",
    }
    assert js["properties"]["label"]["type"] == ["string", "null"]
    assert js["additionalProperties"] is False


def test_resolve_precedence_and_values_as_given(schema: ParameterSchema) -> None:
    resolved = schema.resolve(
        {"threshold": 1, "count": 3}, {"threshold": 0.9, "scale": 5, "other": 1}
    )
    assert resolved == {"threshold": 1, "count": 3, "scale": 5}
    # An int where a float is declared stays an int, as stactask passes it.
    assert type(resolved["threshold"]) is int
    # -p strings are parsed by each parameter's type and win over the payload.
    assert schema.resolve({"count": 3}, {}, {"threshold": "0.5", "count": "4"}) == {
        "threshold": 0.5,
        "count": 4,
    }


@pytest.mark.parametrize(
    ("strict", "message"),
    [
        ({"count": 1, "nope": 1}, "unknown parameter 'nope'"),
        ({}, "missing parameter 'count'"),
        ({"count": "3"}, "parameter 'count' must be integer, got str '3'"),
        ({"count": True}, "parameter 'count' must be integer"),
        ({"count": 1, "threshold": "high"}, "parameter 'threshold' must be number"),
        ({"count": 1, "label": 5}, "parameter 'label' must be string | null"),
        ({"count": 1, "payload": "x"}, "parameter 'payload' is reserved"),
        ({"count": float("nan")}, "parameter 'count' must be a finite number"),
        ({"count": 1, "threshold": float("inf")}, "parameter 'threshold' must be a finite"),
    ],
)
def test_resolve_errors_name_the_parameter(
    schema: ParameterSchema, strict: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("|", r"\|")):
        schema.resolve(strict)


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"nope": "1"}, "-p nope: unknown parameter (the notebook declares: "),
        ({"count": "1.5"}, "parameter 'count' must be integer, got float 1.5"),
        ({"workdir": "/x"}, "-p workdir: 'workdir' is reserved: nb2task sets it (use --workdir)"),
        ({"payload": "/x"}, "-p payload: 'payload' is reserved: nb2task sets it (it is the run"),
        ({"threshold": "NaN"}, "parameter 'threshold' must be a finite number, got nan"),
    ],
)
def test_cli_parameter_errors_are_invalid_input(
    schema: ParameterSchema, cli: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        schema.resolve({"count": 1}, {}, cli)
    assert str(raised.value).startswith(message)


def test_lenient_unknown_names_are_ignored(schema: ParameterSchema) -> None:
    # workflow_options are shared by every task of a workflow.
    assert schema.resolve({"count": 1}, {"for_another_task": 1}) == {"count": 1}


def test_cli_values_parse_by_type(schema: ParameterSchema) -> None:
    assert schema.get("threshold").parse_cli_value("0.5") == 0.5  # type: ignore[union-attr]
    assert schema.get("bands").parse_cli_value('["b"]') == ["b"]  # type: ignore[union-attr]
    assert schema.get("label").parse_cli_value("42") == 42  # str | None: JSON first
    assert schema.get("computed").parse_cli_value("plain text") == "plain text"  # type: ignore[union-attr]


def test_typing_annotations() -> None:
    schema = ParameterSchema.from_source(
        "from typing import Optional, Union\n"
        "a: Optional[int] = None\nb: Union[int, str] = 1\n"
        "c: 'float' = 1.0\nd: dict[str, int] = {}\n"
    )
    types = {p.name: p.types for p in schema.parameters}
    assert types == {
        "a": ("integer", "null"),
        "b": ("integer", "string"),
        "c": ("number",),
        "d": ("object",),
    }


def test_syntax_error_is_a_notebook_error() -> None:
    with pytest.raises(NotebookError, match="not valid Python"):
        ParameterSchema.from_source("threshold = = 1")


def test_workflow_options_fill_what_the_task_does_not_say(schema: ParameterSchema) -> None:
    # A required parameter may come from workflow_options; reserved names there are
    # another task's business (workflow_options are shared), not an error.
    assert schema.resolve({}, {"count": 2, "payload": "x", "workdir": "y"}) == {"count": 2}
    assert schema.resolve({"count": 3}, {"count": 2}) == {"count": 3}
    assert schema.resolve({"count": 3}, {"count": 2}, {"count": "4"}) == {"count": 4}


def test_reserved_names_in_task_options_are_invalid(schema: ParameterSchema) -> None:
    with pytest.raises(InvalidInput, match=r"^parameter 'workdir' is reserved: nb2task sets it"):
        schema.resolve({"count": 1, "workdir": "/tmp"})


def test_cli_values_by_declared_type() -> None:
    schema = ParameterSchema.from_source(
        'name: str = "x"\nratio: float = 0.5\nflag: bool = False\nitems: list = []\n'
    )
    # A string parameter takes the text as it is, even when it looks like JSON.
    resolved = schema.resolve({}, {}, {"name": "42", "ratio": "1", "flag": "true"})
    assert resolved == {"name": "42", "ratio": 1, "flag": True}  # defaults: the notebook's
    assert type(resolved["ratio"]) is int  # as given
    with pytest.raises(InvalidInput, match=r"^parameter 'items' must be array, got str 'a,b'"):
        schema.resolve({}, {}, {"items": "a,b"})


def test_ipython_syntax_and_reassignment_in_the_parameters_cell() -> None:
    schema = ParameterSchema.from_source(
        "%matplotlib inline\n!echo hello\nlevel = 1  # first\nlevel = 'high'  # wins\n"
    )
    [level] = schema.parameters
    assert (level.name, level.types, level.default, level.help) == (
        "level",
        ("string",),
        "high",
        "wins",
    )


def test_a_computed_default_has_no_default_in_the_json_schema(schema: ParameterSchema) -> None:
    js = schema.json_schema()
    assert "default" not in js["properties"]["computed"]
    assert "type" not in js["properties"]["computed"]  # any type
    assert schema.resolve({"count": 1, "computed": [1]}) == {"count": 1, "computed": [1]}
    assert "computed" not in schema.resolve({"count": 1})  # the notebook computes it


# --- Constraints: Literal and Annotated, read from the cell's source, never run -------

CONSTRAINED = """
from typing import Annotated, Literal, Optional
import typing
import typing as t

import annotated_types as at
from annotated_types import Ge, Gt, Interval, Le, Len, Lt, MaxLen, MinLen, MultipleOf

payload = "sample.json"
mode: Literal["fast", "slow"] = "fast"  # how hard to try
level: t.Literal[1, 2, 3] | None = None
kind: Optional[typing.Literal["a", "b"]] = None
bands: list[Literal["red", "nir"]] = ["red"]  # asset keys
count: Annotated[int, Ge(0), at.Le(10)] = 3
ratio: Annotated[float, Interval(gt=0, le=1)] = 0.5
step: Annotated[float, MultipleOf(0.1)] = 0.3
name: Annotated[str, Len(1, 5)] = "x"
keys: Annotated[list[Annotated[int, Gt(-1)]], MinLen(1), MaxLen(3)] = [1]
window: Annotated[
    int,
    annotated_types.Lt(100),
] = 10  # a multi-line annotation keeps its help
"""


@pytest.fixture
def constrained() -> ParameterSchema:
    return ParameterSchema.from_source(CONSTRAINED)


def test_the_constrained_cell_runs_as_plain_python() -> None:
    # What Jupyter does with the cell: real imports, no NameError, the values as written.
    namespace: dict[str, object] = {"annotated_types": __import__("annotated_types")}
    exec(CONSTRAINED, namespace)
    assert (namespace["mode"], namespace["window"], namespace["keys"]) == ("fast", 10, [1])


def test_constraints_land_in_the_json_schema(constrained: ParameterSchema) -> None:
    props = constrained.json_schema()["properties"]
    assert props["mode"] == {
        "type": "string",
        "enum": ["fast", "slow"],
        "default": "fast",
        "description": "how hard to try",
    }
    assert props["level"]["type"] == ["integer", "null"]
    assert props["level"]["enum"] == [1, 2, 3, None]  # Optional: null is allowed too
    assert props["kind"]["enum"] == ["a", "b", None]
    assert props["bands"]["items"] == {"type": "string", "enum": ["red", "nir"]}
    assert "enum" not in props["bands"]
    assert (props["count"]["minimum"], props["count"]["maximum"]) == (0, 10)
    assert (props["ratio"]["exclusiveMinimum"], props["ratio"]["maximum"]) == (0, 1)
    assert props["step"]["multipleOf"] == 0.1
    assert (props["name"]["minLength"], props["name"]["maxLength"]) == (1, 5)
    assert (props["keys"]["minItems"], props["keys"]["maxItems"]) == (1, 3)
    assert props["keys"]["items"] == {"type": "integer", "exclusiveMinimum": -1}
    assert props["window"] == {
        "type": "integer",
        "exclusiveMaximum": 100,
        "default": 10,
        "description": "a multi-line annotation keeps its help",
    }
    assert constrained.get("count").rules_label == ">= 0, <= 10"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "medium"}, "parameter 'mode' must be one of ['fast', 'slow'], got 'medium'"),
        ({"level": 4}, "parameter 'level' must be one of [1, 2, 3, None], got 4"),
        ({"kind": "c"}, "parameter 'kind' must be one of ['a', 'b', None], got 'c'"),
        (
            {"bands": ["red", "blue"]},
            "parameter 'bands'[1] must be one of ['red', 'nir'], got 'blue'",
        ),
        ({"count": -1}, "parameter 'count' must be >= 0, got -1"),
        ({"count": 11}, "parameter 'count' must be <= 10, got 11"),
        ({"ratio": 0}, "parameter 'ratio' must be > 0, got 0"),
        ({"ratio": 1.5}, "parameter 'ratio' must be <= 1, got 1.5"),
        ({"step": 0.35}, "parameter 'step' must be a multiple of 0.1, got 0.35"),
        ({"name": ""}, "parameter 'name' must be at least 1 character(s) long, got '' (length 0)"),
        (
            {"name": "abcdef"},
            "parameter 'name' must be at most 5 character(s) long, got 'abcdef' (length 6)",
        ),
        ({"keys": []}, "parameter 'keys' must have at least 1 item(s), got [] (length 0)"),
        (
            {"keys": [1, 2, 3, 4]},
            "parameter 'keys' must have at most 3 item(s), got [1, 2, 3, 4] (length 4)",
        ),
        ({"keys": [0, -1]}, "parameter 'keys'[1] must be > -1, got -1"),
        ({"window": 100}, "parameter 'window' must be < 100, got 100"),
        ({"mode": 5}, "parameter 'mode' must be string, got int 5"),  # the type comes first
    ],
)
def test_a_violation_is_invalid_input_naming_parameter_rule_and_value(
    constrained: ParameterSchema, values: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        constrained.resolve(values)
    assert str(raised.value) == message


def test_values_within_the_constraints_pass(constrained: ParameterSchema) -> None:
    resolved = constrained.resolve(
        {"mode": "slow", "level": None, "count": 10, "ratio": 1, "step": 0.7, "keys": [0, 5]},
        {},
        {"name": "abcde", "bands": '["nir", "red"]', "kind": "b"},
    )
    assert resolved == {
        "mode": "slow",
        "level": None,
        "kind": "b",
        "bands": ["nir", "red"],
        "count": 10,
        "ratio": 1.0,
        "step": 0.7,
        "name": "abcde",
        "keys": [0, 5],
    }
    # -p strings are parsed by the type first, then checked: a string Literal takes the text.
    with pytest.raises(InvalidInput, match=r"^parameter 'mode' must be one of"):
        constrained.resolve({}, {}, {"mode": "Fast"})


def test_literal_values_compare_as_json_does() -> None:
    schema = ParameterSchema.from_source(
        "n: Literal[1, 2.5] = 1\nflag: Literal[True] = True\nmixed: Literal['a', 0, None] = 'a'"
    )
    n, flag, mixed = schema.parameters
    assert n.types == ("number",) and n.check(1) == 1.0 and n.check(2.5) == 2.5
    assert n.json_schema()["enum"] == [1, 2.5]
    with pytest.raises(InvalidInput, match="must be number, got bool True"):
        n.check(True)  # True is not 1 in JSON
    with pytest.raises(InvalidInput, match="must be boolean, got int 1"):
        flag.check(1)
    assert mixed.types == ("string", "integer", "null")
    assert [mixed.check(v) for v in ("a", 0, None)] == ["a", 0, None]
    with pytest.raises(InvalidInput, match=r"must be string \| integer \| null, got bool False"):
        mixed.check(False)
    # A union with a member that is not a Literal has no enum: False is a bool.
    [either] = ParameterSchema.from_source("m: Literal['a', 0] | bool = 'a'").parameters
    assert "enum" not in either.rules and either.check(False) is False


def test_nested_and_string_annotations() -> None:
    schema = ParameterSchema.from_source(
        "a: Annotated[Annotated[int, Ge(0)], Ge(5), Le(9)] = 6\n"
        "b: 'Annotated[str, MinLen(2)] | None' = None\n"
        "c: Literal[Literal['x', 'y'], 'z'] = 'z'\n"
        "d: Annotated[int, MultipleOf(2), MultipleOf(4)] = 8\n"
        "e: tuple[Literal['a'], Annotated[int, Ge(0)]] = ('a', 1)\n"
        "f: Annotated[int, Field(ge=1, le=3, description='doc')] = 2\n"
        "g: Annotated[Optional[int], Interval(ge=None, lt=3)] = None\n"
        "h: typing.Annotated[int, annotated_types.Ge(1), at.MultipleOf(2)] = 2\n"
    )
    rules = {p.name: p.rules for p in schema.parameters}
    assert rules["a"] == {"minimum": 5, "maximum": 9}  # the stricter bound wins
    assert rules["b"] == {"minLength": 2}  # None passes: the bound is a string's
    assert schema.get("b").check(None) is None  # type: ignore[union-attr]
    assert rules["c"] == {"enum": ["x", "y", "z"]}
    assert rules["d"] == {"multipleOf": 4}
    assert schema.get("e").item_rules == {"minimum": 0}  # type: ignore[union-attr]
    assert rules["f"] == {"minimum": 1, "maximum": 3}
    assert rules["g"] == {"exclusiveMaximum": 3}
    assert rules["h"] == {"minimum": 1, "multipleOf": 2}


def test_a_union_never_refuses_what_one_of_its_members_accepts() -> None:
    schema = ParameterSchema.from_source(
        "a: Annotated[int, Ge(0)] | float = 1\n"
        "b: Annotated[int, Ge(0)] | Annotated[float, Ge(5)] = 1\n"
        "c: Literal['x'] | int = 1\n"
        "d: Annotated[str, MinLen(1)] | list[str] = 'x'\n"
    )
    a, b, c, d = schema.parameters
    assert a.rules == {} and a.check(-1.5) == -1.5
    assert b.rules == {"minimum": 0}  # what every member asks
    assert c.rules == {} and c.check(7) == 7
    assert d.rules == {"minLength": 1} and d.check([]) == []  # a list has no minLength
    with pytest.raises(InvalidInput, match="at least 1 character"):
        d.check("")


def test_a_union_merges_into_one_form_where_that_is_exact() -> None:
    # The merged form (one type list, the shared rules) where it accepts exactly what
    # the members do: the JSON Schemas these had before anyOf existed.
    schema = ParameterSchema.from_source(
        "a: Optional[Annotated[int, Ge(0)]] = None\n"
        "b: Literal['a', 'b'] | Literal['c'] = 'a'\n"
        "c: Literal['a'] | Literal[1] | None = None\n"
        "d: Annotated[int, Ge(0)] | float = 1\n"
        "e: Annotated[str, MinLen(1)] | list[str] = 'x'\n"
        "f: Annotated[list[str], MinLen(1)] | list[str] | None = None\n"
        "g: int | str | None = None\n"
        "h: Union[Annotated[int, Ge(3)], Annotated[int, Ge(1)], Annotated[int, Ge(2)]] = 1\n"
    )
    shown = {p.name: (p.json_schema(), p.any_of) for p in schema.parameters}
    assert shown == {
        "a": ({"type": ["integer", "null"], "minimum": 0, "default": None}, ()),
        "b": ({"type": "string", "enum": ["a", "b", "c"], "default": "a"}, ()),
        "c": ({"type": ["string", "integer", "null"], "enum": ["a", 1, None], "default": None}, ()),
        "d": ({"type": ["integer", "number"], "default": 1}, ()),
        "e": (
            {
                "type": ["string", "array"],
                "minLength": 1,
                "items": {"type": "string"},
                "default": "x",
            },
            (),
        ),
        "f": ({"type": ["array", "null"], "items": {"type": "string"}, "default": None}, ()),
        "g": ({"type": ["integer", "string", "null"], "default": None}, ()),
        "h": ({"type": "integer", "minimum": 1, "default": 1}, ()),
    }
    a, b = schema.parameters[:2]
    assert a.check(None) is None and a.check(0) == 0
    with pytest.raises(InvalidInput, match=r"^parameter 'a' must be >= 0, got -1$"):
        a.check(-1)
    with pytest.raises(InvalidInput, match=r"^parameter 'b' must be one of \['a', 'b', 'c'\]"):
        b.check("d")


ASSETS = (
    "from typing import Annotated, Literal\nfrom annotated_types import MinLen\n"
    "payload = 'x.json'\n"
    "assets: Annotated[list[str], MinLen(1)] | Literal['all', 'ALL'] = 'all'  # what to copy\n"
)


def test_a_union_a_merged_form_would_loosen_is_any_of_its_members() -> None:
    [assets] = ParameterSchema.from_source(ASSETS).parameters
    assert assets.json_schema() == {
        "anyOf": [
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "string", "enum": ["all", "ALL"]},
        ],
        "default": "all",
        "description": "what to copy",
    }
    assert assets.type_label == "array of string | string"
    assert assets.rules_label == "array of string (at least 1 item(s)) or one of ['all', 'ALL']"
    assert assets.check(["red"]) == ["red"] and assets.check("ALL") == "ALL"
    must = (
        "parameter 'assets' must be array of string (at least 1 item(s)) or one of ['all', 'ALL']"
    )
    for value, got in (("some", "'some'"), ([], "[]"), ([1], "[1]"), (5, "5"), (None, "None")):
        with pytest.raises(InvalidInput) as raised:
            assets.check(value)
        assert str(raised.value) == f"{must}, got {got}"
    with pytest.raises(InvalidInput) as raised:
        assets.check("x" * 10_000)
    assert str(raised.value).startswith(f"{must}, got 'xxx") and len(str(raised.value)) < 200
    # The same from the payload, -p and a default that breaks it.
    schema = ParameterSchema.from_source(ASSETS.replace("= 'all'", "= 'some'"))
    assert schema.resolve({}, {}, {"assets": '["a", "b"]'}) == {"assets": ["a", "b"]}
    assert schema.resolve({"assets": "all"}) == {"assets": "all"}
    assert schema.parameters[0].default_violation() == f"{must}, got 'some'"


def test_any_of_members_keep_their_own_rules_and_types() -> None:
    schema = ParameterSchema.from_source(
        "b: Annotated[int, Ge(0)] | Annotated[float, Ge(5)] = 1\n"
        "c: Literal['x'] | int = 1\n"
        "g: list[int] | list[str] = []\n"
        "h: list[Annotated[int, Ge(0)] | Literal['x']] = []\n"
        "k: Annotated[Literal['a'] | int, Ge(0)] = 0\n"
        "m: int | None | Annotated[float, Ge(0)] = None\n"
        "o: Optional[Literal['a'] | bool] = None\n"
    )
    js = {p.name: p.json_schema() for p in schema.parameters}
    assert js["b"]["anyOf"] == [{"type": "integer", "minimum": 0}, {"type": "number", "minimum": 5}]
    assert js["c"]["anyOf"] == [{"type": "string", "enum": ["x"]}, {"type": "integer"}]
    assert js["g"]["anyOf"] == [
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "string"}},
    ]
    assert js["h"] == {
        "type": "array",
        "items": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "enum": ["x"]}]},
        "default": [],
    }
    assert js["k"]["anyOf"] == [
        {"type": "string", "enum": ["a"]},
        {"type": "integer", "minimum": 0},
    ]
    assert js["m"]["anyOf"] == [{"type": ["integer", "null"]}, {"type": "number", "minimum": 0}]
    assert js["o"]["anyOf"] == [{"type": "string", "enum": ["a"]}, {"type": ["boolean", "null"]}]
    b, c, g, h, k, m, o = schema.parameters
    # The first member that accepts a value types it; values stay as given.
    assert (b.check(3), b.check(7.5)) == (3, 7.5) and type(b.check(3)) is int
    assert c.check("x") == "x" and g.check([1]) == [1] and g.check(["a"]) == ["a"]
    assert h.check([0, "x", 2]) == [0, "x", 2] and k.check(0) == 0 and m.check(-2) == -2
    assert (o.check(None), o.check(True), o.check("a")) == (None, True, "a")
    refused = [
        (b, 2.5, "parameter 'b' must be integer (>= 0) or number (>= 5), got 2.5"),
        (c, "y", "parameter 'c' must be one of ['x'] or integer, got 'y'"),
        (g, [1, "a"], "parameter 'g' must be array of integer or array of string, got [1, 'a']"),
        (h, [0, -1], "parameter 'h'[1] must be integer (>= 0) or one of ['x'], got -1"),
        (k, -1, "parameter 'k' must be one of ['a'] or integer (>= 0), got -1"),
        (m, -0.5, "parameter 'm' must be integer | null or number (>= 0), got -0.5"),
        (o, "b", "parameter 'o' must be one of ['a'] or boolean | null, got 'b'"),
        (b, float("nan"), "parameter 'b' must be a finite number, got nan"),
    ]
    for param, value, message in refused:
        with pytest.raises(InvalidInput) as raised:
            param.check(value)
        assert str(raised.value).startswith(message), (value, str(raised.value))


def test_hostile_unions_are_read_quickly_and_shown_shortly() -> None:
    import time

    started = time.monotonic()
    wide = " | ".join(f"Literal['v{i}'] | Annotated[int, Ge({i}), Le({i})]" for i in range(500))
    literals = "Union[" + ", ".join(f"Literal['v{i}']" for i in range(1000)) + ", None]"
    deep = "Union[str, " * 60 + "Annotated[int, Ge(0)]" + "]" * 60
    chain = " | ".join(["int"] * 2000)
    schema = ParameterSchema.from_source(
        f"wide: {wide} = 0\nliterals: {literals} = None\ndeep: {deep} = 0\nchain: {chain} = 0\n"
    )
    assert time.monotonic() - started < 10
    wide_p, literals_p, deep_p, chain_p = schema.parameters
    # 500 integer members and the Literals' values, merged into one enum.
    assert len(wide_p.any_of) == 501 and len(wide_p.any_of[0].rules["enum"]) == 500
    assert (wide_p.check(499), wide_p.check("v3")) == (499, "v3")
    with pytest.raises(InvalidInput) as raised:
        wide_p.check(500)
    message = str(raised.value)
    assert message.endswith("or ... (501 alternatives), got 500") and len(message) < 300
    assert "\n" not in wide_p.rules_label and len(wide_p.rules_label) < 250
    # A union of Literals and None stays one enum.
    assert literals_p.any_of == () and len(literals_p.json_schema()["enum"]) == 1001
    assert deep_p.json_schema() == {"type": ["string", "integer"], "minimum": 0, "default": 0}
    assert chain_p.json_schema() == {"type": "integer", "default": 0}


def test_unknown_metadata_is_kept_and_not_checked() -> None:
    schema = ParameterSchema.from_source(
        "x: Annotated[int, 'doc', at.Predicate(str.isdigit), Field(pattern='^a'), Doc('d')] = 1"
    )
    [x] = schema.parameters
    assert x.unknown == ("'doc'", "at.Predicate(str.isdigit)", "Field(pattern=...)")
    assert x.rules == {} and x.check(-5) == -5


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("Annotated[int, Ge(LIMIT)]", "Ge(LIMIT): LIMIT is not a literal; nb2task reads"),
        ("Annotated[int, Ge(2**10)]", "2 ** 10 is not a literal"),
        ("Annotated[int, Ge('a')]", "Ge('a'): ge must be a number, got 'a'"),
        ("Annotated[int, Ge(True)]", "ge must be a number, got True"),
        ("Annotated[int, Ge()]", "Ge() takes one argument, got none"),
        ("Annotated[int, Ge(1, 2)]", "Ge() takes 1 positional argument(s), got 2"),
        ("Annotated[int, Ge(x=1)]", "Ge() takes no argument 'x'"),
        ("Annotated[int, Ge(*bounds)]", "write its arguments out"),
        ("Annotated[str, Len(1, 2, 3)]", "Len() takes 2 positional argument(s), got 3"),
        ("Annotated[str, Len(1, min_length=2)]", "min_length is given twice"),
        ("Annotated[str, Len(5, 2)]", "no value satisfies minLength 5 and maxLength 2"),
        ("Annotated[str, MinLen(-1)]", "min_length must be an integer >= 0, got -1"),
        ("Annotated[str, MaxLen(1.5)]", "max_length must be an integer >= 0, got 1.5"),
        ("Annotated[str, Ge(0)]", "Ge(0) bounds numbers, and the parameter is string"),
        ("Annotated[int, MinLen(1)]", "MinLen(1) bounds a length"),
        ("Annotated[float, Ge(1e999)]", "ge must be a finite number"),
        ("Annotated[int, MultipleOf(0)]", "multiple_of must be > 0"),
        ("Annotated[int, MultipleOf(2), MultipleOf(3)]", "a second, different multipleOf"),
        ("Annotated[int, Ge(0), Lt(0)]", "no value satisfies minimum 0 and exclusiveMaximum 0"),
        ("Annotated[int, Interval(0)]", "Interval() takes keywords only"),
        ("Annotated[int, Field(1)]", "Field() takes keywords only"),
        ("Annotated[int, Field(ge=LIMIT)]", "LIMIT is not a literal"),
        ("Literal[Color.RED]", "Color.RED is not a literal"),
        ("Literal[b'x']", "is of type bytes: Literal values must be"),
        ("Literal[()]", "Literal[] names no value"),
        ("list[Literal[x]]", "x is not a literal"),
    ],
)
def test_a_constraint_nb2task_cannot_read_is_a_notebook_error(
    annotation: str, message: str
) -> None:
    with pytest.raises(NotebookError) as raised:
        ParameterSchema.from_source(f"payload = 'x'\n\nlimit: {annotation} = 1  # help")
    text = str(raised.value)
    assert text.startswith("parameters cell, line 3: parameter 'limit': "), text
    assert message in text
    assert "\n" not in text and len(text) < 300


def test_a_huge_literal_is_read_checked_and_shown_shortly() -> None:
    import time

    values = ", ".join(f'"v{i}"' for i in range(50_000))
    started = time.monotonic()
    [p] = ParameterSchema.from_source(f"tile: list[Literal[{values}]] = ['v1']").parameters
    assert len(p.item_rules["enum"]) == 50_000
    assert p.check([f"v{i}" for i in range(0, 50_000, 2)])[-1] == "v49998"
    assert time.monotonic() - started < 20  # one lookup an element, not a scan
    with pytest.raises(InvalidInput) as raised:
        p.check(["v1", "w" * 10_000])
    message = str(raised.value)
    assert message.startswith("parameter 'tile'[1] must be one of ['v0', 'v1', ")
    assert "... (50000 values)], got 'wwww" in message and len(message) < 250


def test_a_default_that_breaks_its_constraint_is_reported_not_refused() -> None:
    # As with a mistyped default, the cell still loads (lint reports it as an error).
    schema = ParameterSchema.from_source(
        "a: Annotated[int, Ge(0)] = -1\nb: Literal['x'] = 'y'\nc: Literal['x'] = None\n"
        "d: Annotated[int, Ge(0)] = 1\ne: Annotated[int, Ge(0)] = int('3')\nf: Literal['x']\n"
    )
    problems = {p.name: p.default_violation() for p in schema.parameters}
    assert problems == {
        "a": "parameter 'a' must be >= 0, got -1",
        "b": "parameter 'b' must be one of ['x'], got 'y'",
        "c": None,  # None is another type: the notebook's business, as before
        "d": None,
        "e": None,  # computed
        "f": None,  # required
    }


def test_inspect_prints_the_constraints_and_run_checks_them_before_anything(
    tmp_path: Path,
) -> None:
    nb = write_notebook(
        tmp_path / "pick.ipynb",
        "from typing import Annotated, Literal\nfrom annotated_types import Ge\n"
        'payload = "x.json"\nband: Literal["red", "nir"] = "red"  # the band\n'
        "scale: Annotated[int, Ge(1)] = 1",
        "from pathlib import Path\nPath('ran').write_text('a cell ran')",
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
        metadata={"download_assets": ["data"]},
    )
    shown = run_cli("inspect", nb, "--json")
    assert shown.returncode == 0, shown.stderr
    props = json.loads(shown.stdout)["properties"]
    assert props["band"] == {
        "type": "string",
        "enum": ["red", "nir"],
        "default": "red",
        "description": "the band",
    }
    assert props["scale"] == {"type": "integer", "minimum": 1, "default": 1}

    # The asset cannot be downloaded, and the first cell would leave a file: neither
    # happens, the parameter is refused first (from the payload, and from -p).
    item = sample_item()
    item["assets"] = {"data": {"href": str(tmp_path / "missing.tif")}}
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(make_payload({"pick": {"band": "blue"}}, features=[item])))
    for extra, message in (
        ((), "parameter 'band' must be one of ['red', 'nir'], got 'blue'"),
        (("-p", "band", "red", "-p", "scale", "0"), "parameter 'scale' must be >= 1, got 0"),
    ):
        result = run_cli("run", nb, payload, "--workdir", tmp_path / "work", *extra, cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        assert result.last_stderr_line == f"stactask.exceptions.InvalidInput: {message}"
        assert not (tmp_path / "ran").exists()
        assert not (tmp_path / "work" / "input-assets").exists()


def test_inspect_shows_the_constraints_beside_the_types(tmp_path: Path) -> None:
    notebook = tmp_path / "c.py"
    notebook.write_text(
        '# %% tags=["parameters"]\n'
        "from typing import Annotated, Literal\n"
        "from annotated_types import Ge, Le\n"
        'payload = "x.json"\n'
        'mode: Literal["a", "b"] = "a"  # the mode\n'
        "n: Annotated[int, Ge(0), Le(10)] = 3\n"
        "# %%\nimport nb2task\nnb2task.emit([])\n"
    )
    result = run_cli("inspect", notebook)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:4]]
    assert rows == [
        ["mode", "string", "(one", "of", "['a',", "'b'])", "'a'", "the", "mode"],
        ["n", "integer", "(>=", "0,", "<=", "10)", "3"],
    ]
