"""What a notebook imports: ``read_items`` and ``emit``.

This module is imported inside the kernel, so it stays light: only the standard
library at import time; pystac is imported when ``read_items`` is first called.

``emit`` publishes items as a rich display output with the mimetype
``EMIT_MIMETYPE``: in a task run, a reference to a file holding them (in the folder
``NB2TASK_EMIT_DIR`` names), so that a 400-item output does not bloat the executed
notebook; elsewhere (plain Jupyter, papermill alone) the items themselves. Either way
the output says what was emitted, and in Jupyter it shows a summary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pystac

EMIT_MIMETYPE = "application/vnd.nb2task.items+json"
EMIT_DIR_ENV = "NB2TASK_EMIT_DIR"
EMITTED_FILE = re.compile(r"emitted-\d{4,}\.json")
SUMMARY_IDS = 20


def read_items(path: str | os.PathLike[str]) -> list[pystac.Item]:
    """Return the STAC items of a payload (or item collection, or item) JSON file."""
    import pystac

    path = Path(path)
    with path.open(encoding="utf-8") as f:
        document = json.load(f)
    features = [document] if document.get("type") == "Feature" else document.get("features", [])
    base = path.resolve().parent
    items = []
    for feature in features:
        item = pystac.Item.from_dict(feature, preserve_dict=False)
        for asset in item.assets.values():
            asset.href = absolute_href(asset.href, base)
        items.append(item)
    return items


def absolute_href(href: str, base: Path) -> str:
    """``href`` itself, or, if it is a relative file path, that path made absolute
    against ``base``. The one rule for relative hrefs, wherever they are met."""
    if "://" in href or os.path.isabs(href):
        return href
    return str((base / href).resolve())


def emit(items: Any) -> None:
    """Emit STAC items (pystac Items or dicts, one or many) as the task's output."""
    dicts = [_as_dict(item) for item in _as_list(items)]
    # Serialising here makes a non-JSON value fail in the notebook's own cell.
    try:
        text = json.dumps({"items": dicts}, default=_json_default, allow_nan=False)
    except ValueError:
        raise ValueError(
            "emit(): NaN and infinity are not valid in STAC JSON; replace them (e.g. with None)"
        ) from None
    document = json.loads(text)
    directory = os.environ.get(EMIT_DIR_ENV)
    if directory:
        name = _write_emitted(Path(directory), text)
        _display({"file": name, "count": len(dicts)}, document["items"])
    else:
        _display({"items": document["items"]}, document["items"])


def _write_emitted(directory: Path, text: str) -> str:
    """Write one emit() call's items as the next ``emitted-NNNN.json``; its name."""
    for number in range(len(list(directory.glob("emitted-*.json"))), 1_000_000):
        name = f"emitted-{number:04d}.json"
        try:
            with (directory / name).open("x", encoding="utf-8") as f:
                f.write(text)
            return name
        except FileExistsError:
            continue
    raise RuntimeError("emit(): too many emit() calls in one run")


def _as_list(items: Any) -> list[Any]:
    if isinstance(items, Mapping):
        return [items]
    # An ItemCollection is iterable *and* has to_dict: it is many items.
    if isinstance(items, Iterable) and not isinstance(items, str | bytes):
        return list(items)
    if hasattr(items, "to_dict"):
        return [items]
    raise TypeError(f"emit() takes pystac Items or dicts, one or many; got {type(items).__name__}")


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if hasattr(item, "to_dict"):
        # transform_hrefs=False keeps asset hrefs exactly as the notebook set them.
        return dict(item.to_dict(transform_hrefs=False))
    raise TypeError(f"emit() takes pystac Items or dicts; got {type(item).__name__}")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, datetimes and paths are common in notebooks.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"emit(): {type(value).__name__} is not JSON serialisable")


def _summary(items: list[dict[str, Any]]) -> str:
    lines = [f"nb2task: emitting {len(items)} item(s)"]
    for item in items[:SUMMARY_IDS]:
        assets = ", ".join(item.get("assets", {}))
        lines.append(f"  {item.get('id')!s}  assets: {assets or '-'}")
    if len(items) > SUMMARY_IDS:
        lines.append(f"  ... and {len(items) - SUMMARY_IDS} more")
    return "\n".join(lines)


def _display(data: dict[str, Any], items: list[dict[str, Any]]) -> None:
    bundle = {EMIT_MIMETYPE: data, "text/plain": _summary(items)}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: just say what would be emitted
        print(bundle["text/plain"])
        return
    if get_ipython() is None:
        print(bundle["text/plain"])
    else:
        display(bundle, raw=True)  # type: ignore[no-untyped-call]
