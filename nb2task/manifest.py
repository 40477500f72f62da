"""An array job's manifest: which payload each child of an AWS Batch array job runs.

``nb2task submit`` writes one per array job, ``{"payloads": [{"url", "url_out"}, ...]}``
in S3; every child runs ``nb2task-task run --manifest URL`` and takes the entry at its
own index, the same ``url`` and ``url_out`` a single job gets as parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import Nb2TaskError, UsageError

ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"
JOB_ID_ENV = "AWS_BATCH_JOB_ID"
VERSION = 1


def document(entries: list[tuple[str, str]]) -> dict[str, Any]:
    """The manifest of an array job whose child ``i`` runs ``entries[i]`` (url, url_out)."""
    return {
        "nb2task_manifest": VERSION,
        "payloads": [{"url": url, "url_out": url_out} for url, url_out in entries],
    }


def array_index(environ: Mapping[str, str]) -> int:
    """This child's index: ``AWS_BATCH_JOB_ARRAY_INDEX``, else the ``:N`` that ends an
    array child's ``AWS_BATCH_JOB_ID`` (moto sets only the latter)."""
    text = environ.get(ARRAY_INDEX_ENV)
    if text is None:
        match = re.fullmatch(r"[^:]+:(\d+)", environ.get(JOB_ID_ENV, ""))
        text = match.group(1) if match else None
    if text is None or not text.isdigit():
        raise UsageError(
            f"--manifest needs {ARRAY_INDEX_ENV}, which AWS Batch sets in an array job's "
            "children only"
        )
    return int(text)


def entry(url: str, index: int) -> tuple[str, str]:
    """The (url, url_out) of child ``index`` in the manifest at ``url``."""
    from stactask.exceptions import InvalidInput

    from .payload import read_json

    try:
        manifest = read_json(url)
    except InvalidInput as err:  # the submission's fault, not the payload's
        raise Nb2TaskError(f"cannot read the array job's manifest: {err}") from None
    payloads = manifest.get("payloads") if isinstance(manifest, dict) else None
    if not isinstance(payloads, list) or not 0 <= index < len(payloads):
        raise Nb2TaskError(f"manifest {url} has no payload at index {index}")
    item = payloads[index]
    return str(item["url"]), str(item["url_out"])
