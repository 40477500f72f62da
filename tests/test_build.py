"""``nb2task build``: the build context's files (the images themselves: tests/containers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from support import REPO, run_cli, write_notebook

HADOLINT = str(Path(sys.executable).parent / "hadolint")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    result = run_cli("build", REPO / "notebooks/ndvi.ipynb", "-o", tmp_path / "ctx")
    assert result.returncode == 0, result.stderr
    return tmp_path / "ctx"


def test_context_files(context: Path) -> None:
    assert sorted(p.name for p in context.iterdir()) == [
        ".dockerignore",
        ".nb2task-context",
        "Dockerfile",
        "README.md",
        "definition.yaml",
        "notebook",
        "parameters.schema.json",
        "requirements.txt",
        "workflows",
    ]
    assert sorted(str(p.relative_to(context)) for p in context.glob("workflows/*/*")) == [
        "workflows/ndvi-batch/definition.yaml",
        "workflows/ndvi-batch/state-machine.json",
        "workflows/ndvi-lambda/definition.yaml",
        "workflows/ndvi-lambda/state-machine.json",
    ]
    # Pinned to the versions this environment ran the notebook with.
    from importlib.metadata import version

    assert context.joinpath("requirements.txt").read_text().splitlines() == [
        f"numpy=={version('numpy')}",
        f"rasterio=={version('rasterio')}",
    ]
    schema = json.loads(context.joinpath("parameters.schema.json").read_text())
    assert set(schema["properties"]) == {"threshold", "red_asset", "nir_asset"}


def test_notebook_in_context_is_clean(context: Path) -> None:
    nb = nbformat.read(context / "notebook" / "ndvi.ipynb", as_version=4)
    sources = [c.source for c in nb.cells]
    assert not any("Exploration only" in s for s in sources)  # nb2task-skip cell removed
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code")
    assert "parameters" in nb.cells[1].metadata["tags"]


def test_definition_yaml(context: Path) -> None:
    definition = yaml.safe_load(context.joinpath("definition.yaml").read_text())
    assert definition["name"] == "ndvi"
    lam = definition["lambda"]
    assert lam["image_config"]["command"] == ["nb2task.lambda_handler"]
    assert (lam["timeout_seconds"], lam["memory_mb"], lam["ephemeral_storage_mb"]) == (
        900,
        1024,
        2048,
    )
    batch = definition["batch"]
    assert set(batch["parameters"]) == {"url", "url_out"} and all(batch["parameters"].values())
    props = json.loads(batch["container_properties"])
    assert props["command"] == ["run", "Ref::url", "--output", "Ref::url_out"]
    assert {r["type"]: r["value"] for r in props["resourceRequirements"]} == {
        "VCPU": "1",
        "MEMORY": "4096",
    }
    retry = batch["retry_strategy"]
    assert retry["attempts"] == 3
    assert retry["evaluate_on_exit"][0] == {"action": "RETRY", "on_status_reason": "Host EC2*"}
    assert retry["evaluate_on_exit"][-1] == {"action": "EXIT", "on_exit_code": "*"}
    assert batch["timeout_seconds"] == 3600


def test_build_is_deterministic(tmp_path: Path, context: Path) -> None:
    again = tmp_path / "again"
    assert run_cli("build", REPO / "notebooks/ndvi.ipynb", "-o", again).returncode == 0
    files = sorted(p.relative_to(context) for p in context.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (context / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_hadolint_passes(context: Path) -> None:
    for dockerfile in (context / "Dockerfile", REPO / "Dockerfile.base"):
        proc = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_flags_override_metadata_and_warn_for_lambda(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "heavy.ipynb",
        'payload = "x"',
        metadata={"lambda": {"memory_mb": 2048}, "batch": {"vcpu": 4, "memory_mb": 16000}},
    )
    (tmp_path / "requirements.txt").write_text("numpy  # beside the notebook\ntorch==2.13.0\n")
    result = run_cli(
        "build",
        nb,
        "-o",
        tmp_path / "ctx",
        "--lambda-timeout",
        "1800",
        "--batch-memory",
        "30000",
        "--image",
        "registry.example.com/heavy",
        "--tag",
        "7",
    )
    assert result.returncode == 0, result.stderr
    assert "lambda timeout 1800 s is over Lambda's 900 s" in result.stderr
    assert "requirements torch rarely fit Lambda" in result.stderr
    definition = yaml.safe_load((tmp_path / "ctx/definition.yaml").read_text())
    assert (definition["lambda"]["memory_mb"], definition["lambda"]["timeout_seconds"]) == (
        2048,
        1800,
    )
    props = json.loads(definition["batch"]["container_properties"])
    assert props["image"] == "registry.example.com/heavy:7-batch"
    assert {r["type"]: r["value"] for r in props["resourceRequirements"]} == {
        "VCPU": "4",
        "MEMORY": "30000",
    }
    assert "torch==2.13.0" in (tmp_path / "ctx/requirements.txt").read_text()
    assert "## Warnings" in (tmp_path / "ctx/README.md").read_text()


@pytest.mark.parametrize(
    ("metadata", "requirements", "message"),
    [
        (
            {"name": "bad_name"},
            None,
            "task name 'bad_name' (notebook metadata 'nb2task.name'): use letters, digits",
        ),
        (
            {"lambda": {"memory_mb": "lots"}},
            None,
            "setting 'nb2task.lambda.memory_mb' must be a positive int, got 'lots'",
        ),
        ({"batch": {"gpus": 1}}, None, "unknown setting 'nb2task.batch.gpus'"),
        ({}, "not-installed-anywhere>=1", "requirement 'not-installed-anywhere>=1' is not pinned"),
    ],
)
def test_build_errors(tmp_path: Path, metadata, requirements, message) -> None:
    nb = write_notebook(tmp_path / "t.ipynb", 'payload = "x"', metadata=metadata)
    args = []
    if requirements:
        (tmp_path / "req.txt").write_text(requirements)
        args = ["--requirements", tmp_path / "req.txt"]
    result = run_cli("build", nb, "-o", tmp_path / "ctx", *args)
    assert result.returncode == 2
    assert result.last_stderr_line.startswith("nb2task.errors.BuildError: " + message) or (
        result.last_stderr_line.startswith("nb2task.errors.NotebookError: " + message)
    )


def test_build_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    result = run_cli("build", REPO / "notebooks/minimal.ipynb", "-o", tmp_path / "project")
    assert result.returncode == 2
    assert result.last_stderr_line.startswith("nb2task.errors.BuildError: -o ")
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"


def test_failed_rebuild_leaves_the_old_context_whole(context: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in context.iterdir())
    result = run_cli(
        "build", REPO / "notebooks/ndvi.ipynb", "-o", context, "--include", tmp_path / "missing"
    )
    assert result.returncode == 2
    assert result.last_stderr_line.endswith("missing: no such file or directory")
    assert sorted(p.name for p in context.iterdir()) == before
    # ...and a good rebuild replaces it.
    assert run_cli("build", REPO / "notebooks/ndvi.ipynb", "-o", context).returncode == 0


def test_metadata_text_cannot_break_the_files(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "odd.ipynb",
        'payload = "x"\nmode: str = "a"  # one | two',
        metadata={"description": 'say "hi" to ${HOME} and `id` \\ twice'},
    )
    result = run_cli("build", nb, "-o", tmp_path / "ctx")
    assert result.returncode == 0, result.stderr
    proc = subprocess.run(
        [HADOLINT, str(tmp_path / "ctx/Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
    row = next(
        line for line in (tmp_path / "ctx/README.md").read_text().splitlines() if "`mode`" in line
    )
    assert row.count(" | ") == 3 and "one \\| two" in row

    bad = write_notebook(tmp_path / "v.ipynb", 'payload = "x"', metadata={"version": "1.0 beta"})
    result = run_cli("build", bad, "-o", tmp_path / "ctx2")
    assert result.returncode == 2
    assert "'1.0 beta' is not a version" in result.last_stderr_line
    # A newline is refused outright, not only in the description.
    bad = write_notebook(
        tmp_path / "d.ipynb", 'payload = "x"', metadata={"description": "one\ntwo"}
    )
    result = run_cli("build", bad, "-o", tmp_path / "ctx3")
    assert result.returncode == 2
    assert "nb2task.description" in result.last_stderr_line
