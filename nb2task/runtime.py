"""What a notebook imports: ``read_items``, ``read_payload``, ``download_assets``, ``emit``.

This module is imported inside the kernel, so it stays light: only the standard
library at import time; pystac is imported when ``read_items`` is first called, the
download machinery (boto3, stactask) when ``download_assets`` is.

Items are read as they came (``nb2task.stac_items``): what a notebook emits unchanged
comes out as it went in, and nothing here fetches anything over the network.

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
    from .payload_view import PayloadView

EMIT_MIMETYPE = "application/vnd.nb2task.items+json"
EMIT_DIR_ENV = "NB2TASK_EMIT_DIR"
EMITTED_FILE = re.compile(r"emitted-\d{4,}\.json")
SUMMARY_IDS = 20
# Beside a task run's input payload (in its workdir): the run's task name, version, workdir,
# which the kernel cannot otherwise know (a kernel outlives one run's environment).
RUN_FILE = "nb2task-run.json"
DOWNLOADS_FOLDER = "input-assets"

# The workdir of the task run whose payload was read last (for download_assets).
_run_workdir: Path | None = None


def read_items(
    path: str | os.PathLike[str], *, as_dicts: bool = False, migrate: bool = False
) -> list[Any]:
    """The STAC items of a payload (or item collection, or item) JSON file, exactly as
    they came: pystac Items (``nb2task.stac_items.Item``), or dicts if ``as_dicts``.
    ``migrate``: migrated to pystac's STAC version instead, as stactask's ``Task.items``
    has them (``self.items_as_dicts`` has them as they came). Nothing is fetched."""
    features, _, _ = _read_features(Path(path))
    if as_dicts:
        return features
    from . import stac_items

    return stac_items.read(features, migrate)


def read_payload(path: str | os.PathLike[str], task_name: str | None = None) -> PayloadView:
    """The payload itself, read-only: its id, ``process[0]``, upload, workflow and this
    task's options, its items (as ``read_items`` gives them) and stactask's ``Payload``.
    The task's name is this run's (or ``task_name``, or the payload's only task)."""
    from .payload_view import PayloadView

    features, document, run = _read_features(Path(path))
    return PayloadView(
        {**document, "features": features},
        task_name or _str_or_none(run.get("task_name")),
        _str_or_none(run.get("task_version")),
    )


def download_assets(
    items: Any, keys: Iterable[str] | str, directory: str | os.PathLike[str] | None = None
) -> list[Any]:
    """Download the ``keys`` assets (``"*"``: all) of ``items`` (pystac Items or dicts)
    into ``directory``, as the ``download_assets`` setting does before a run; return
    the items, of the kind given, with those assets' hrefs pointing at the files.
    ``directory`` defaults to the run's ``<workdir>/input-assets`` (in Jupyter,
    ``./input-assets``). Raises InvalidInput for a missing asset or object."""
    from . import assets

    given = _as_list(items)
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not all(isinstance(key, str) and key for key in keys):
        raise TypeError("download_assets(): keys must be asset keys (strings)")
    folder = Path(directory) if directory is not None else _default_downloads()
    features = [_as_dict(item) for item in given]
    downloaded = assets.download_assets(features, keys, folder)
    if all(isinstance(item, Mapping) for item in given):
        return downloaded
    from . import stac_items

    result: list[Any] = []
    for item, feature in zip(given, downloaded, strict=True):
        if isinstance(item, Mapping):
            result.append(feature)
            continue
        # The dict was written as the item writes itself back: read again, it says the same.
        result.append(stac_items.Item.read(feature))
    return result


def _read_features(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A payload file's features (relative local asset hrefs made absolute), the
    document, and the run's facts beside it; a payload without ``features`` has none."""
    global _run_workdir
    with path.open(encoding="utf-8") as f:
        document = json.load(f)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a payload, item collection or item (a JSON object)")
    is_item = document.get("type") == "Feature"
    features = [document] if is_item else document.get("features", [])
    if not isinstance(features, list):
        raise ValueError(f"{path}: 'features' is not a list")
    base = path.resolve().parent
    for feature in features:
        assets = feature.get("assets") if isinstance(feature, dict) else None
        for asset in assets.values() if isinstance(assets, dict) else ():
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = absolute_href(asset["href"], base)
    run = _run_facts(path)
    workdir = run.get("workdir")
    _run_workdir = Path(workdir) if isinstance(workdir, str) else None
    return features, document, run


def _run_facts(payload_path: Path) -> dict[str, Any]:
    """What the task run wrote beside its input payload ({} outside a task run)."""
    try:
        facts = json.loads((payload_path.parent / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _default_downloads() -> Path:
    return (_run_workdir or Path.cwd()) / DOWNLOADS_FOLDER


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
