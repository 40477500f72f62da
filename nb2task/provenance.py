"""What a run's record says about the run, so that it can be replayed: the input
payload (its URL and digest), the task's name and version, nb2task's version, the
engine, the parameters set on the command line, and how the run ended.

It goes into the executed notebook's metadata under ``nb2task_run`` (papermill's own
section already holds the injected parameters). No credential may end up there: URLs
lose their user info and signed-query values, and nothing comes from the environment.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import __version__

RUN_KEY = "nb2task_run"
# A payload with no URL (a Lambda event, stdin) is kept in the record when it is no
# larger than what Cirrus passes inline, so that such a run can be replayed too.
MAX_INLINE_PAYLOAD_CHARS = 120_000
# Query parameters of signed URLs (S3 presigned, Azure SAS, GCS) and common tokens.
SECRET_QUERY = re.compile(
    r"^(x-amz-(signature|credential|security-token)|signature|sig|x-goog-(signature|credential)"
    r"|token|access_token|api[_-]?key|key|password|secret|sas)$",
    re.IGNORECASE,
)
REDACTED = "REDACTED"


def payload_digest(document: Any) -> str:
    """The sha256 of a payload as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def public_url(url: str) -> str:
    """``url`` without what could be a credential: user info, signed-query values."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode(
        [(k, REDACTED if SECRET_QUERY.match(k) else v) for k, v in parse_qsl(parts.query, True)],
        safe="/:",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def payload_source(source: str | Path | dict[str, Any] | None) -> str | None:
    """Where a run's payload came from, as a URL or absolute path (None: from stdin or
    an event that is the payload itself)."""
    if source is None:
        return None
    if isinstance(source, dict):
        target = source.get("url", source.get("href")) if "features" not in source else None
        return public_url(target) if isinstance(target, str) else None
    text = str(source)
    return public_url(text) if "://" in text else str(Path(text).resolve())


def payload_section(source: str | Path | dict[str, Any] | None, document: Any) -> dict[str, Any]:
    """The record's account of the input payload: URL, digest, id (and the payload
    itself when it has no URL and is small)."""
    section: dict[str, Any] = {
        "url": payload_source(source),
        "digest": payload_digest(document),
        "id": document.get("id") if isinstance(document, dict) else None,
    }
    if section["url"] is None:
        text = json.dumps(document)
        if len(text) <= MAX_INLINE_PAYLOAD_CHARS:
            section["inline"] = document
    return section


def run_section(
    payload: dict[str, Any],
    task_name: str,
    task_version: str,
    engine: str,
    overrides: dict[str, Any],
    download_assets: tuple[str, ...],
) -> dict[str, Any]:
    """The ``nb2task_run`` metadata of one run's executed notebook."""
    return {
        "nb2task_version": __version__,
        "task": {"name": task_name, "version": task_version},
        "engine": engine,
        "payload": payload,
        # Set on the command line (-f, -p): the payload cannot bring them back.
        "parameters": overrides,
        "download_assets": list(download_assets),
    }


def stamp_error(record: Path, error_line: str, exit_code: int) -> None:
    """Write how the run ended into its record (a failure after the last cell, such as a
    bad emitted item, is in no cell's output)."""
    try:
        node = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    section = node.get("metadata", {}).get(RUN_KEY)
    if not isinstance(section, dict):
        return
    section["error"] = {"line": error_line, "exit_code": exit_code}
    from .paths import write_text_atomically

    write_text_atomically(record, json.dumps(node, ensure_ascii=False))


def run_metadata(node: dict[str, Any]) -> dict[str, Any]:
    """The ``nb2task_run`` section of an executed notebook (empty if it has none)."""
    section = node.get("metadata", {}).get(RUN_KEY)
    return dict(section) if isinstance(section, dict) else {}
