"""Read and write payloads: local paths, ``s3://`` URLs, stdin/stdout.

I/O only: what a payload must contain is checked by the task (``nb2task.validation``).
Entry points read a payload with ``load`` (following one ``{"url": ...}``
indirection, as Cirrus sends large payloads), once; nothing after them dereferences.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from stactask.exceptions import InvalidInput

from . import settings
from .errors import UsageError
from .paths import write_text_atomically
from .runtime import absolute_href

# The most a payload may weigh, and how deep its JSON may nest (a GeoJSON MultiPolygon is
# 6 levels deep; a hostile payload 10 000 levels deep must not reach Python's recursion).
MAX_PAYLOAD_MB_ENV = "NB2TASK_MAX_PAYLOAD_MB"
MAX_DEPTH = 100


def max_payload_bytes() -> int:
    """The size limit of a payload: ``NB2TASK_MAX_PAYLOAD_MB`` (default 256) MB."""
    return settings.current().max_payload_bytes


def _too_large(where: str, limit: int) -> InvalidInput:
    size = f"{limit / 1024**2:g} MB" if limit >= 1024**2 else f"{limit} bytes"
    return InvalidInput(f"payload {where} is over {size} ({MAX_PAYLOAD_MB_ENV} sets the limit)")


def read_bytes(url: str | Path | None, stdin: IO[str] | None = None) -> bytes:
    """The bytes at a local path, a ``file://`` or ``s3://`` URL, or stdin (``url`` None),
    at most ``max_payload_bytes()``. A missing payload is InvalidInput (never retried);
    one that cannot be reached now (refused connection, 5xx) is PayloadUnavailable."""
    limit = max_payload_bytes()
    where = "stdin" if url is None else str(url)
    if url is None:
        stream = stdin or sys.stdin
        raw = getattr(stream, "buffer", None)
        data = raw.read(limit + 1) if raw is not None else stream.read(limit + 1).encode()
    elif str(url).startswith("s3://"):
        data = _read_s3(str(url), limit)
    elif "://" in str(url) and not str(url).startswith("file://"):
        raise InvalidInput(f"payload {where}: only local paths and s3:// URLs are read")
    else:
        path = Path(str(url).removeprefix("file://"))
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidInput(f"payload not found: {where}") from None
        except OSError as err:
            raise InvalidInput(f"cannot read payload {where}: {err.strerror or err}") from None
    if len(data) > limit:
        raise _too_large(where, limit)
    return data


def _read_s3(url: str, limit: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    from .errors import PayloadUnavailable

    bucket, _, key = url.removeprefix("s3://").partition("/")
    try:
        response = s3_client().get_object(Bucket=bucket, Key=key)
        if int(response.get("ContentLength") or 0) > limit:
            raise _too_large(url, limit)
        body: bytes = response["Body"].read(limit + 1)
        return body
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            raise InvalidInput(f"payload not found: {url}") from None
        raise PayloadUnavailable(f"cannot read payload {url}: {err}") from None
    except (BotoCoreError, OSError) as err:  # refused, reset, timed out: try again later
        raise PayloadUnavailable(f"cannot read payload {url}: {err}") from None


_s3: Any = None
_s3_lock = threading.Lock()


def s3_client() -> Any:
    """One boto3 S3 client per process (thread-safe). Its retries (a 503 SlowDown is
    tried again, with backoff) come from the environment: ``runner.retry_storage_errors``
    sets standard mode and 5 attempts unless ``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` say
    otherwise."""
    global _s3
    with _s3_lock:
        if _s3 is None:
            import boto3

            _s3 = boto3.client("s3")
    return _s3


def read_json(url: str | Path | None, stdin: IO[str] | None = None) -> Any:
    """Read a JSON document from a path, a URL, or stdin when ``url`` is None."""
    where = "stdin" if url is None else str(url)
    try:
        text = read_bytes(url, stdin).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"payload {where} is not UTF-8 text") from None
    try:
        document = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"payload {where} is not JSON: {err}") from None
    except ValueError as err:  # NaN or Infinity: Python reads them, JSON has no such thing
        raise InvalidInput(f"payload {where} is not JSON: {err}") from None
    except RecursionError:
        raise InvalidInput(f"payload {where} nests more than {MAX_DEPTH} levels deep") from None
    check_depth(document, f"payload {where}")
    return document


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def check_depth(document: Any, where: str) -> None:
    """InvalidInput if ``document`` nests more than ``MAX_DEPTH`` levels (no recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{where} nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load(
    source: str | Path | dict[str, Any] | list[Any] | None,
    stdin: IO[str] | None = None,
    local_indirection: bool = True,
) -> dict[str, Any]:
    """The payload at ``source`` (a path or URL; stdin if None; or an already parsed
    document, as a Lambda event), following one ``{"url": ...}`` indirection: to an
    ``s3://`` URL only, unless ``local_indirection`` (the command line). Relative asset
    hrefs of a local payload file are made absolute against its folder."""
    where: str | Path | None = None
    if source is None or isinstance(source, str | Path):
        document: Any = read_json(source, stdin)
        where = source
    else:  # a Lambda event: already JSON, of any shape
        check_depth(source, "the event")
        document = source
    target = indirection(document)
    if target is not None:
        if not target.startswith("s3://") and not local_indirection:
            raise InvalidInput(f'a {{"url"}} payload must point at s3:// here, not {target!r}')
        document, where = read_json(target), target
    if not isinstance(document, dict):
        raise InvalidInput("a payload must be a JSON object")
    if where is not None and "://" not in str(where):
        absolutize_local_asset_hrefs(document, Path(where).resolve().parent)
    return document


def indirection(document: Any) -> str | None:
    """The URL a ``{"url"}``/``{"href"}`` document points at, if it is one."""
    if isinstance(document, dict) and "features" not in document and "process" not in document:
        for key in ("url", "href"):
            if key not in document:
                continue
            target = document[key]
            # A wrong shape is the payload's fault (INVALID, never retried), not a TypeError.
            if not isinstance(target, str) or not target:
                shown = (
                    "an empty string"
                    if target == ""
                    else "null"
                    if target is None
                    else type(target).__name__
                )
                raise InvalidInput(f'a {{"{key}"}} payload must be a URL string, not {shown}')
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
    """Fail before the run, not after it, when the output cannot be written there: a
    local folder that cannot take the file, a missing S3 bucket (never created)."""
    if url is None:
        return
    text = str(url)
    if text.startswith("s3://"):
        check_bucket(text.removeprefix("s3://").split("/", 1)[0], f"--output {text}")
        return
    if "://" in text and not text.startswith("file://"):
        raise UsageError(f"--output {text}: only local paths and s3:// URLs are written")
    path = Path(text.removeprefix("file://"))
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--output {path}: cannot create a file there")


def check_bucket(bucket: str, what: str) -> None:
    """UsageError unless the bucket exists (and we may see it): nothing creates it."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .errors import PayloadUnavailable

    try:
        s3_client().head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise UsageError(f"{what}: no such bucket {bucket!r}") from None
        if code in ("403", "AccessDenied"):
            raise UsageError(f"{what}: no access to bucket {bucket!r}") from None
        raise PayloadUnavailable(f"{what}: cannot reach bucket {bucket!r}: {err}") from None
    except (BotoCoreError, OSError) as err:
        raise PayloadUnavailable(f"{what}: cannot reach bucket {bucket!r}: {err}") from None


def write_json(document: Any, url: str | Path | None, stdout: IO[str] | None = None) -> None:
    """Write JSON to a path (atomically), an ``s3://`` URL (one PUT, into a bucket that
    must exist), or stdout when ``url`` is None."""
    text = json.dumps(document)
    if url is None:
        out = stdout or sys.stdout
        out.write(text + "\n")
        out.flush()
        return
    url = str(url)
    if url.startswith("s3://"):
        bucket, _, key = url.removeprefix("s3://").partition("/")
        # An object store PUT is atomic: readers never see half a payload.
        s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
        return
    if "://" in url and not url.startswith("file://"):
        raise UsageError(f"{url}: only local paths and s3:// URLs are written")
    write_text_atomically(Path(url.removeprefix("file://")), text)
