"""The parameter schema read from a parameters cell, and its validation (no kernel)."""

from __future__ import annotations

import pytest
from stactask.exceptions import InvalidInput

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


def test_resolve_precedence_and_widening(schema: ParameterSchema) -> None:
    resolved = schema.resolve(
        {"threshold": 1, "count": 3}, {"threshold": 0.9, "scale": 5, "other": 1}
    )
    assert resolved == {"threshold": 1.0, "count": 3, "scale": 5}
    assert isinstance(resolved["threshold"], float)
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
    assert resolved == {"name": "42", "ratio": 1.0, "flag": True}  # defaults: the notebook's
    assert isinstance(resolved["ratio"], float)
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
