"""Read and write payloads: local paths, any fsspec URL (``s3://...``), stdin/stdout.

I/O only: what a payload must contain is checked by the task (``nb2task.validation``).
Entry points read a payload with ``load`` (following one ``{"url": ...}``
indirection, as Cirrus sends large payloads), once; nothing after them dereferences.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from stactask.exceptions import InvalidInput

from .errors import UsageError
from .runtime import absolute_href

_s3: Any = None
_s3_lock = threading.Lock()


def s3_client() -> Any:
    """One boto3 S3 client per process (thread-safe), with standard retries (a 503
    SlowDown is tried again, with backoff)."""
    global _s3
    with _s3_lock:
        if _s3 is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 5})
            _s3 = boto3.client("s3", config=config)
    return _s3


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


def load(
    source: str | Path | dict[str, Any] | None, stdin: IO[str] | None = None
) -> dict[str, Any]:
    """The payload at ``source`` (a path or URL; stdin if None; or an already parsed
    document, as a Lambda event), following one ``{"url": ...}`` indirection. Relative
    asset hrefs of a local payload file are made absolute against its folder."""
    document = source if isinstance(source, dict) else read_json(source, stdin)
    where = None if isinstance(source, dict) else source
    target = indirection(document)
    if target is not None:
        document, where = read_json(target), target
    if not isinstance(document, dict):
        raise InvalidInput("a payload must be a JSON object")
    if where is not None and "://" not in str(where):
        absolutize_local_asset_hrefs(document, Path(where).resolve().parent)
    return document


def indirection(document: Any) -> str | None:
    """The URL a ``{"url"}``/``{"href"}`` document points at, if it is one."""
    if isinstance(document, dict) and "features" not in document:
        target = document.get("url", document.get("href"))
        if isinstance(target, str):
            return target
    return None


def absolutize_local_asset_hrefs(document: dict[str, Any], base: Path) -> None:
    """Make relative asset hrefs of the payload's items absolute, against ``base``.
    Runs before the payload is checked, so it steps around anything malformed."""
    features = document.get("features")
    for feature in features if isinstance(features, list) else []:
        assets = feature.get("assets") if isinstance(feature, dict) else None
        for asset in assets.values() if isinstance(assets, dict) else []:
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = absolute_href(asset["href"], base)


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
