"""Anchor B: the same stactask steps around the papermill CLI with a real kernel, the way
a task author would glue them by hand (items handed over in a JSON file)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stactask import Task

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "minimal.ipynb"
# What the notebook runs instead of nb2task.emit: write the items where the task reads them.
EMIT = (
    "import json, nb2task\n"
    "nb2task.emit = lambda items: json.dump([i.to_dict() for i in items], open('items.json', 'w'))"
)


class PapermillTask(Task):
    name = "minimal"
    description = "Tags each input item with a note, in a notebook run by the papermill CLI"
    version = "0.1.0"

    def process(self, note: str = "checked by nb2task", **_: Any) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            payload = Path(tmp) / "payload.json"
            payload.write_text(json.dumps(dict(self.payload)))
            nb = json.loads(NOTEBOOK.read_text())
            nb["cells"].insert(1, {"cell_type": "code", "metadata": {}, "outputs": [],
                                   "execution_count": None, "source": EMIT})  # fmt: skip
            source = Path(tmp) / "in.ipynb"
            source.write_text(json.dumps(nb))
            papermill = str(Path(sys.executable).parent / "papermill")
            subprocess.run(
                [papermill, str(source), str(Path(tmp) / "out.ipynb"),
                 "-p", "payload", str(payload), "-p", "note", note, "--cwd", tmp,
                 "--no-progress-bar", "--log-level", "WARNING"],
                check=True, capture_output=True,
            )  # fmt: skip
            items: list[dict[str, Any]] = json.loads((Path(tmp) / "items.json").read_text())
        return items


if __name__ == "__main__":
    PapermillTask.cli()
