"""Writes asset-task.ipynb: the port of original.py's AssetTask, following nb2task's docs.

Run it (`.venv/bin/python tests/parity/asset-task/make_notebook.py`) after changing the
port here; the notebook is committed, and tests/test_parity_assets.py checks it matches.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
PATH = HERE / "asset-task.ipynb"

METADATA = {
    "name": "asset-task",
    "description": "derives a file from the assets its parameters name",
    "version": "0.1.0",
    # process(**kwargs) takes, and ignores, options it does not know.
    "unknown_options": "ignore",
}

MARKDOWN = (
    "# asset-task\n\n"
    "A port of `AssetTask` (`original.py`): it refuses items that lack the assets it "
    "needs, downloads the assets its parameters name, derives a file from their bytes and "
    "adds it as an asset. nb2task uploads it."
)

# (source, tags), in order. The parameters cell comes first.
CELLS: list[tuple[str, list[str]]] = [
    (
        "from typing import Annotated, Literal\n\n"
        "from annotated_types import Gt, Le, MinLen\n\n"
        'payload = "fixtures/success/stats-one-item/input.json"  # nb2task injects the real one\n'
        'workdir = "."  # where the task writes its outputs\n'
        'assets: Annotated[list[str], MinLen(1)] = ["data"]  # asset keys to read\n'
        "scale: Annotated[float, Gt(0), Le(1000)] = 1.0  # multiplies the byte counts\n"
        'mode: Literal["stats", "concat"] = "stats"  # what the derived file holds',
        ["parameters"],
    ),
    (
        "from stactask.exceptions import InvalidInput\n\n"
        "import nb2task\n\n"
        "# def validate(self): refuse items that lack an asset to be read\n"
        "for item in nb2task.read_items(payload, as_dicts=True):\n"
        '    missing = [key for key in assets if key not in item.get("assets", {})]\n'
        "    if missing:\n"
        "        raise InvalidInput(f\"item {item['id']} lacks asset(s) {missing}\")",
        ["nb2task-validate"],
    ),
    (
        "import hashlib\n"
        "import json\n"
        "from pathlib import Path\n\n"
        "import pystac\n\n"
        "import nb2task\n\n"
        "\n"
        "def derive(mode, scale, contents):\n"
        '    """The derived file of one item: (file name, media type, bytes)."""\n'
        '    if mode == "concat":\n'
        '        return "derived.bin", "application/octet-stream", b"".join(contents.values())\n'
        "    stats = {\n"
        "        key: {\n"
        '            "bytes": len(data),\n'
        '            "sha256": hashlib.sha256(data).hexdigest(),\n'
        '            "scaled": len(data) * scale,\n'
        "        }\n"
        "        for key, data in contents.items()\n"
        "    }\n"
        '    return "derived.json", "application/json", json.dumps(stats, sort_keys=True).encode()',
        [],
    ),
    (
        "# items = self.download_items_assets(self.items, config=DownloadConfig(include=assets))\n"
        "items = nb2task.read_items(payload, migrate=True)  # as self.items has them\n"
        "downloaded = nb2task.download_assets(items, assets)",
        [],
    ),
    (
        "# the derived file, as a new asset (upload is nb2task's)\n"
        "outputs = []\n"
        "for item, local in zip(items, downloaded, strict=True):\n"
        "    contents = {key: Path(local.assets[key].href).read_bytes() for key in assets}\n"
        "    file_name, media_type, data = derive(mode, scale, contents)\n"
        "    path = Path(workdir) / item.id / file_name\n"
        "    path.parent.mkdir(parents=True, exist_ok=True)\n"
        "    path.write_bytes(data)\n"
        "    out = item.clone()\n"
        '    out.add_asset("derived", pystac.Asset(str(path), media_type=media_type, '
        'roles=["derived"]))\n'
        '    out.properties["asset_task:scale"] = scale\n'
        '    out.properties["asset_task:mode"] = mode\n'
        "    outputs.append(out.to_dict())",
        [],
    ),
    (
        "# self.add_software_version_to_item(item): the running task's name and version\n"
        "# (stactask's classmethod, called on Task, would name Task's).\n"
        "run = nb2task.read_payload(payload)\n"
        'PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"\n'
        "for out in outputs:\n"
        '    out["stac_extensions"] = sorted({*out.get("stac_extensions", []), PROCESSING})\n'
        '    out["properties"]["processing:software"] = {run.task_name: run.task_version}\n'
        "nb2task.emit(outputs)",
        [],
    ),
]


def notebook() -> nbformat.NotebookNode:
    """The port as a notebook (built as the other ports are, by ../make_notebooks.py)."""
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", HERE.parent / "make_notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    ports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ports)
    built: nbformat.NotebookNode = ports.build("asset-task", METADATA, MARKDOWN, CELLS)
    return built


def main() -> int:
    nbformat.write(notebook(), PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
