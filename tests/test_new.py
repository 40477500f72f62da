"""``nb2task new``: a task folder that lints clean, passes its golden cases at once, and
pins what the base image pins. (``test_devloop.py`` walks the whole loop from it.)"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from support import REPO

from nb2task.errors import UsageError
from nb2task.lint import lint
from nb2task.scaffold import TEMPLATES, scaffold


def test_the_minimal_template(tmp_path: Path) -> None:
    written = scaffold(tmp_path / "soil-moisture")
    assert [str(p) for p in written] == [
        ".gitignore",
        "README.md",
        "data/sample-observations.csv",
        "fixtures/failure/bad-parameter/exception.txt",
        "fixtures/failure/bad-parameter/in.json",
        "fixtures/failure/missing-asset/exception.txt",
        "fixtures/failure/missing-asset/in.json",
        "fixtures/success/sample/in.json",
        "fixtures/success/sample/out.json",
        "pyproject.toml",
        "requirements.txt",
        "soil-moisture.ipynb",
        "soil-moisture.payload.json",
        "tests/test_soil_moisture.py",
    ]
    folder = tmp_path / "soil-moisture"
    node = nbformat.read(folder / "soil-moisture.ipynb", as_version=4)
    assert node.metadata["nb2task"]["name"] == "soil-moisture"
    assert node.metadata["nb2task"]["download_assets"] == ["observations"]
    tags = [cell.metadata.get("tags", []) for cell in node.cells]
    assert ["parameters"] in tags and ["nb2task-skip"] in tags
    parameters = node.cells[tags.index(["parameters"])].source
    assert 'payload = "soil-moisture.payload.json"  # path of the input payload' in parameters
    assert "threshold: float = 10.0  # observations below this" in parameters
    # The sample case is the sample payload, its hrefs seen from the case's folder.
    case = json.loads((folder / "fixtures/success/sample/in.json").read_text())
    sample = json.loads((folder / "soil-moisture.payload.json").read_text())
    assert case["features"][0]["assets"]["observations"]["href"] == (
        "../../../" + sample["features"][0]["assets"]["observations"]["href"]
    )
    assert lint(folder / "soil-moisture.ipynb") == []
    assert "soil-moisture.ipynb" in (folder / "README.md").read_text()


def test_the_ndvi_template_lints_clean(tmp_path: Path) -> None:
    """Its cases pass as the tutorial runs them (test_docs.py), the minimal template's as
    the developer loop does (test_devloop.py)."""
    scaffold(tmp_path / "green", "ndvi")
    assert lint(tmp_path / "green" / "green.ipynb") == []
    node = nbformat.read(tmp_path / "green" / "green.ipynb", as_version=4)
    assert node.metadata["nb2task"]["download_assets"] == ["red", "nir"]


def test_the_ndvi_template_pins_what_the_base_image_pins() -> None:
    lock = set((REPO / "requirements" / "runtime.lock").read_text().splitlines())
    pins = [
        line
        for line in (TEMPLATES / "ndvi" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(pin in lock for pin in pins), set(pins) - lock


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "band_ratio",
            "task name 'band_ratio': use letters, digits and single '-' (FilmDrop's rule), e.g. 'band-ratio'",
        ),
        ("taken", "already exists and is not empty"),
    ],
)
def test_new_refuses(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scaffold(tmp_path / name)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="unknown template 'cog'"):
        scaffold(tmp_path / "fresh", "cog")
