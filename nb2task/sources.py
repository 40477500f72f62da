"""Where many payloads come from: files, folders, globs and ``s3://`` prefixes, as one list.

``run --payloads`` and ``submit`` take the same arguments: a file or URL is itself, a
folder is the ``*.json`` files in it, a pattern with ``*``, ``?`` or ``[`` is expanded
(``**`` included), and an ``s3://bucket/prefix`` that is not an object is the ``.json``
objects under it. The order is the order given, each expansion sorted; repeats are
dropped.
"""

from __future__ import annotations

import glob
from pathlib import Path

from .errors import UsageError

GLOB_CHARS = frozenset("*?[")


def expand(arguments: list[str]) -> list[str]:
    """Every payload the arguments name; UsageError for one that names none."""
    found: dict[str, None] = {}  # ordered, without repeats
    for argument in arguments:
        matches = _expand_one(argument)
        if not matches:
            raise UsageError(f"no payload found at {argument}")
        found.update(dict.fromkeys(matches))
    return list(found)


def _expand_one(argument: str) -> list[str]:
    if argument.startswith("s3://"):
        return _s3(argument)
    if "://" in argument:
        return [argument]  # another fsspec URL: read as it is
    path = Path(argument)
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.json") if p.is_file())
    if GLOB_CHARS & set(argument) and not path.exists():
        return sorted(p for p in glob.glob(argument, recursive=True) if Path(p).is_file())
    return [argument]  # a file, or a missing one: its run says so


def _s3(url: str) -> list[str]:
    """The object itself (named ``*.json``, or found as it is), or the .json objects
    under the prefix (one listing)."""
    from .payload import s3_client

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if prefix.endswith(".json"):
        return [url]
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    keys = []
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for key in (o["Key"] for o in page.get("Contents", [])):
            if key == prefix and not prefix.endswith("/"):
                return [url]  # an object of that name, whatever its name (not a folder marker)
            if key.startswith(folder) and key.endswith(".json"):
                keys.append(key)
    return [f"s3://{bucket}/{key}" for key in sorted(keys)]
