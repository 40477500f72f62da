"""The shipped example notebooks and the real Cirrus/stactask fixture payloads, under each
engine (the ``engine`` fixture). ``inspect`` of the examples: test_cli.py.

The examples run from a copy in tmp_path (``examples``): a notebook's cwd is its own
folder, and nothing may be written into the repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import NOTEBOOKS, PAYLOADS, listing, run_cli, write_notebook

pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of notebooks/ (the examples and their sample data)."""
    copy = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return copy


def test_ndvi_example_writes_a_derived_cog(examples: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli(
        "run", examples / "ndvi.ipynb", examples / "ndvi.payload.json", "--local", cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    out_dir = cwd / "local-output"  # --local: relative to the current directory
    out = json.loads((out_dir / "output-payload.json").read_text())
    source = json.loads((examples / "ndvi.payload.json").read_text())
    assert out["id"] == source["id"] and out["process"] == source["process"]
    [item] = out["features"]
    assert item["id"] == "S2B_33TUG_20240704_0_L2A-sample_ndvi"
    assert item["collection"] == "sentinel-2-l2a-ndvi"  # from collection_matchers
    assert item["properties"]["nb2task:ndvi_threshold"] == 0.3  # from tasks.ndvi
    source_self = source["features"][0]["links"][0]["href"]
    assert {"rel": "derived_from", "href": source_self, "type": "application/json"} in item["links"]

    import numpy as np
    import rasterio

    href = Path(item["assets"]["ndvi"]["href"])
    assert href.parent == out_dir.resolve() and href.exists()
    with rasterio.open(href) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        ndvi = cog.read(1)
    kept = ndvi[np.isfinite(ndvi)]
    assert kept.size and kept.min() >= 0.3 and kept.max() <= 1.0
    assert (out_dir / "ndvi.executed.ipynb").exists()
    # A successful run renders no HTML unless asked (it costs ~0.5 s): report does it.
    assert not (out_dir / "ndvi.executed.html").exists()
    report = run_cli("report", out_dir / "ndvi.executed.ipynb")
    assert report.returncode == 0, report.stderr
    assert "<html" in (out_dir / "ndvi.executed.html").read_text()


def test_minimal_example(examples: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = run_cli(
        "run",
        examples / "minimal.ipynb",
        examples / "minimal.payload.json",
        "--no-upload",
        "--workdir",
        workdir,
    )
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)["features"]
    assert item["properties"]["nb2task:note"] == "hello from the sample payload"
    # Relative asset hrefs of a local payload file resolve against the file's folder.
    assert item["assets"]["red"]["href"] == str((examples / "data" / "sample-red.tif").resolve())
    assert (workdir / "minimal.executed.ipynb").exists()


# No nb2task engine runs here: papermill's own Jupyter kernel does (the id says "jupyter").
@pytest.mark.parametrize("engine", ["jupyter"])
def test_examples_run_unchanged_as_plain_notebooks(examples: Path, tmp_path: Path) -> None:
    """In Jupyter the defaults are used: no nb2task run around the notebook (and so no
    nb2task engine: papermill runs it in a Jupyter kernel, as Jupyter would)."""
    import papermill

    for name in ("minimal", "ndvi"):
        executed = papermill.execute_notebook(
            str(examples / f"{name}.ipynb"),
            str(tmp_path / f"{name}.executed.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            cwd=str(examples),
        )
        shown = [
            o["data"]["text/plain"]
            for c in executed.cells
            for o in c.get("outputs", [])
            if "application/vnd.nb2task.items+json" in o.get("data", {})
        ]
        assert shown and "nb2task: emitting 1 item(s)" in shown[-1]
    # The plain run wrote its COG beside the notebook (its default workdir is ".").
    assert (examples / "S2B_33TUG_20240704_0_L2A-sample_ndvi.tif").exists()


ECHO_NOTEBOOK = (
    'payload = "x.json"\ndo_nothing: bool = False  # nothing-task\'s option',
    "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
)


def test_stactask_fixture_runs(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "echo.ipynb", *ECHO_NOTEBOOK)
    payload = (
        PAYLOADS
        / "stactask-v0.7.0_sentinel2-l2a-j2k_two-items_process-list_legacy-collections.json"
    )
    result = run_cli(
        "run",
        nb,
        payload,
        "--task-name",
        "nothing-task",
        "--no-upload",
        "--workdir",
        tmp_path / "w",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    source = json.loads(payload.read_text())
    assert [f["id"] for f in out["features"]] == [f["id"] for f in source["features"]]
    # The legacy collections mapping assigned the collection.
    assert {f["collection"] for f in out["features"]} == {"sentinel-2-l2a"}
    # Remote asset hrefs pass through untouched.
    assert out["features"][0]["assets"] == source["features"][0]["assets"]


def test_stactask_fixture_other_task_options_are_checked(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "echo.ipynb", *ECHO_NOTEBOOK)
    payload = (
        PAYLOADS
        / "stactask-v0.7.0_sentinel2-l2a-j2k_two-items_process-list_legacy-collections.json"
    )
    result = run_cli("run", nb, payload, "--task-name", "derived-item-task")
    assert result.returncode == 3
    assert result.last_stderr_line == (
        "stactask.exceptions.InvalidInput: unknown parameter 'parameter' "
        "(the notebook declares: do_nothing)"
    )


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        (
            "cirrus-geo-v2.0.0_basic-minimal_one-item.json",
            "upload_options.collections['mycollection']: '.*' is not a JSONPath expression",
        ),
        (
            "cirrus-geo-v2.0.0_sentinel-s2-l2a_cog-archive_multi-task-params.json",
            "upload_options.collections['sentinel-s2-l2a-cogs']: '.*' is not a JSONPath expression",
        ),
        (
            "cirrus-geo-v2.0.0_post-batch-input-event_batch-url-url_out.json",
            "not a Cirrus process payload: it has no 'features' "
            "(this looks like a Step Functions/Batch event, not a payload)",
        ),
    ],
    ids=["basic-minimal", "cog-archive", "post-batch-event"],
)
def test_fixtures_stactask_rejects_are_invalid_input(
    tmp_path: Path, fixture: str, message: str
) -> None:
    nb = write_notebook(tmp_path / "echo.ipynb", *ECHO_NOTEBOOK)
    workdir = tmp_path / "work"
    result = run_cli("run", nb, PAYLOADS / fixture, "--workdir", workdir)
    assert result.returncode == 3
    assert result.last_stderr_line.startswith(f"stactask.exceptions.InvalidInput: {message}")
    assert "Traceback" not in result.stderr
    # Rejected before the notebook ran: had it run, the workdir would hold the input
    # payload written for it and the executed notebook.
    assert listing(workdir) == []


def test_notebook_copied_elsewhere_still_runs(examples: Path, tmp_path: Path) -> None:
    """A notebook's cwd is its own folder, as in Jupyter (``examples`` is a copy)."""
    result = run_cli(
        "run",
        examples / "ndvi.ipynb",
        examples / "ndvi.payload.json",
        "--workdir",
        tmp_path / "w",
        "--no-upload",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "w" / "S2B_33TUG_20240704_0_L2A-sample_ndvi.tif").exists()
