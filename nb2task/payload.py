"""Read, check and write Cirrus process payloads.

A payload is read from a local path, any fsspec URL (``s3://...``) or stdin; a
``{"url": ...}`` (or ``{"href": ...}``) indirection is followed once. Checks run
before any kernel starts, so bad input costs no notebook run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any

from stactask.exceptions import InvalidInput
from stactask.payload import Payload

from .errors import UsageError
from .runtime import absolute_href


def read_json(url: str | Path | None, stdin: IO[str] | None = None) -> Any:
    """Read a JSON document from a path, an fsspec URL, or stdin when ``url`` is None."""
    where = "stdin" if url is None else str(url)
    try:
        if url is None:
            text = (stdin or sys.stdin).read()
        else:
            import fsspec

            with fsspec.open(str(url), "r", encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:
        raise InvalidInput(f"payload not found: {where}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"payload {where} is not UTF-8 text") from None
    except (OSError, ValueError) as err:  # ValueError: fsspec knows no such protocol
        raise InvalidInput(f"cannot read payload {where}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"payload {where} is not JSON: {err}") from None


def load_payload(url: str | Path | None, stdin: IO[str] | None = None) -> dict[str, Any]:
    """Read a payload, following one ``{"url": ...}`` indirection. Relative asset hrefs
    of a local payload file are made absolute against that file's folder. (The task's
    handler checks the payload.)"""
    document = read_json(url, stdin)
    source = indirection(document) or url
    document = dereference(document)
    if source is not None and "://" not in str(source):
        absolutize_local_asset_hrefs(document, Path(source).resolve().parent)
    return document


def indirection(document: Any) -> str | None:
    """The URL a ``{"url"}``/``{"href"}`` document points at, if it is one."""
    if isinstance(document, dict) and "features" not in document:
        target = document.get("url", document.get("href"))
        if isinstance(target, str):
            return target
    return None


def dereference(document: Any) -> dict[str, Any]:
    """Follow a ``{"url"}``/``{"href"}`` indirection once, as Cirrus sends large payloads."""
    target = indirection(document)
    if target is not None:
        document = read_json(target)
    if not isinstance(document, dict):
        raise InvalidInput("a payload must be a JSON object")
    return document


def absolutize_local_asset_hrefs(document: dict[str, Any], base: Path) -> None:
    """Make relative asset hrefs of the payload's items absolute, against ``base``.
    Runs before the payload is checked, so it steps around anything malformed."""
    features = document.get("features")
    for feature in features if isinstance(features, list) else []:
        assets = feature.get("assets") if isinstance(feature, dict) else None
        for asset in assets.values() if isinstance(assets, dict) else []:
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = absolute_href(asset["href"], base)


def check_payload(document: dict[str, Any]) -> dict[str, Any]:
    """Check a payload as stactask and Cirrus will use it; raise InvalidInput if not."""
    if "features" not in document:
        hint = ""
        if "Parameters" in document or "error" in document:
            hint = " (this looks like a Step Functions/Batch event, not a payload)"
        raise InvalidInput(f"not a Cirrus process payload: it has no 'features'{hint}")
    if document.get("type", "FeatureCollection") != "FeatureCollection":
        raise InvalidInput("a payload must be a FeatureCollection")
    payload = Payload(document)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            payload.validate()
        except (TypeError, ValueError, KeyError) as err:
            raise InvalidInput(f"invalid payload: {err}") from None
        _check_collection_expressions(payload)
    for index, feature in enumerate(payload.items_as_dicts):
        _check_feature(index, feature)
    return document


def _check_feature(index: int, feature: Any) -> None:
    """The structure nb2task relies on; the STAC schema check comes later (``--validate``)."""
    where = f"payload feature {index}"
    if not isinstance(feature, dict):
        raise InvalidInput(f"{where} is not a JSON object")
    if not isinstance(feature.get("id"), str):
        raise InvalidInput(f"{where} is not a STAC item: no string 'id'")
    assets = feature.get("assets", {})
    if not isinstance(assets, dict):
        raise InvalidInput(f"{where} ({feature['id']}): 'assets' must be an object")
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            raise InvalidInput(f"{where} ({feature['id']}): asset '{key}' has no string 'href'")


def _check_collection_expressions(payload: Payload) -> None:
    """Parse every JSONPath now: stactask would only fail after the notebook ran."""
    from jsonpath_ng.ext import parser

    expressions: list[tuple[str, Any]] = [
        (f"upload_options.collections[{name!r}]", expr)
        for name, expr in payload.collection_mapping.items()
    ]
    for index, matcher in enumerate(payload.collection_matchers):
        kind = matcher.get("type")
        if kind == "jsonpath":
            expressions.append((f"collection_matchers[{index}]", matcher.get("pattern")))
        elif kind != "catch_all":
            raise InvalidInput(f"collection_matchers[{index}]: unknown type {kind!r}")
        if not matcher.get("collection_name"):
            raise InvalidInput(f"collection_matchers[{index}]: no collection_name")
    for where, expr in expressions:
        try:
            parser.parse(expr)
        except Exception:  # noqa: BLE001 - jsonpath_ng raises several types, none public
            raise InvalidInput(
                f"{where}: {expr!r} is not a JSONPath expression "
                "(stactask 0.7 wants e.g. \"$[?(@.id =~ 'S2.*')]\", not a regex)"
            ) from None


def check_output_url(url: str | Path | None) -> None:
    """Fail before the run, not after it, when the output cannot be written there."""
    if url is None:
        return
    text = str(url)
    if "://" in text and not text.startswith("file://"):
        import fsspec

        try:
            fsspec.get_filesystem_class(text.split("://", 1)[0])
        except (ValueError, ImportError) as err:
            raise UsageError(f"--output {text}: {err}") from None
        return
    path = Path(text.removeprefix("file://"))
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--output {path}: cannot create a file there")


def write_json(document: Any, url: str | Path | None, stdout: IO[str] | None = None) -> None:
    """Write JSON to a path (atomically), an fsspec URL, or stdout when ``url`` is None."""
    text = json.dumps(document)
    if url is None:
        out = stdout or sys.stdout
        out.write(text + "\n")
        out.flush()
        return
    url = str(url)
    if "://" not in url or url.startswith("file://"):
        _write_local_atomically(Path(url.removeprefix("file://")), text)
        return
    import fsspec

    # An object store PUT is atomic: readers never see half a payload.
    with fsspec.open(url, "w", encoding="utf-8") as f:
        f.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_local_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; keep the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
