"""What a run's notebook emitted: the items ``nb2task.emit`` published, found in the
executed notebook (and the files it wrote them to), checked before they become the
output payload."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidItemError
from .runtime import EMIT_MIMETYPE, EMITTED_FILE, absolute_href
from .validation import check_items


@contextlib.contextmanager
def emit_folder() -> Iterator[Path]:
    """A private folder for one run's emitted items, removed after the harvest."""
    path = Path(tempfile.mkdtemp(prefix="nb2task-emit-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def harvest(node: Any, emit_dir: Path | None) -> dict[str, Any]:
    """What a run left in its executed notebook: the emitted ``items``, the number of
    ``emit_calls``, and the cell a ``sys.exit(0)`` stopped it at (``stopped_at``)."""
    calls = sum(
        1
        for cell in node.cells
        for output in cell.get("outputs", [])
        if isinstance(output.get("data", {}).get(EMIT_MIMETYPE), dict)
    )
    return {
        "items": read_emitted(node, emit_dir),
        "emit_calls": calls,
        "stopped_at": stopped_at(node),
    }


def stopped_at(node: Any) -> int | None:
    """The cell whose ``sys.exit(0)`` ended the run early (papermill counts that as
    success and stops), as its execution count; None if none did."""
    for cell in node.cells:
        for output in cell.get("outputs", []):
            if (
                output.get("output_type") == "error"
                and output.get("ename") == "SystemExit"
                and output.get("evalue") in ("", "0", "None")
            ):
                return int(cell.get("execution_count") or 0)
    return None


def read_emitted(node: Any, emit_dir: Path | None) -> list[dict[str, Any]]:
    """Every item ``nb2task.emit`` published in the executed notebook, in order: inline,
    or (in a task run) from the file the output names in ``emit_dir``."""
    items: list[dict[str, Any]] = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(EMIT_MIMETYPE)
            if not isinstance(data, dict):
                continue
            if "items" in data:
                items.extend(data["items"])
                continue
            name = str(data.get("file", ""))
            if emit_dir is None or not EMITTED_FILE.fullmatch(name):
                raise InvalidItemError(f"emitted items at {name!r} are not where nb2task put them")
            try:
                document = json.loads((emit_dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InvalidItemError(f"cannot read the emitted items {name}: {err}") from None
            if not isinstance(document, dict) or not isinstance(document.get("items"), list):
                raise InvalidItemError(f"the emitted items file {name} was changed")
            items.extend(document["items"])
    return items


def check_emitted(
    items: list[dict[str, Any]], kernel_cwd: Path, schema: bool = True
) -> list[dict[str, Any]]:
    """Check each emitted item (structure, unique ids; the STAC core schema unless
    ``schema`` is off), make relative local asset hrefs absolute against the notebook's
    working directory (where a relative path written by the notebook lands), and check
    that every local asset file exists."""
    check_items(items, "emitted item", InvalidItemError, schema=schema)
    for index, item in enumerate(items):
        for key, asset in item.get("assets", {}).items():
            asset["href"] = href = absolute_href(asset["href"], kernel_cwd)
            local = href.removeprefix("file://")
            if "://" not in local and not Path(local).is_file():
                raise InvalidItemError(
                    f"emitted item {index} (id {item['id']!r}): asset '{key}' file {local} "
                    "does not exist"
                )
    return items
