"""Local paths and S3 keys built from payload data: made safe, or refused.

A payload is input nobody looked at: an item id, a collection name, an asset key or a
payload's name may hold ``../``, a NUL byte or a slash. Folder names made from them are
sanitised (``safe_name``) and checked to resolve inside their root after symlinks
(``inside``); S3 keys are normalised and must stay under their prefix (``check_key``).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
import tempfile
from pathlib import Path

MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "item") -> str:
    """A file or folder name made from ``text``: letters, digits, '.', '_', '-', never
    '.' or '..', at most 120 characters."""
    name = _UNSAFE.sub("-", text).strip("-.")[:MAX_NAME] or fallback
    return name


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved, if it stays inside ``root`` (both resolved, symlinks followed);
    an error naming ``what`` if not."""
    from .errors import invalid_input

    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise invalid_input(f"{what} would be written outside {real_root}: {path}")
    return real


def template_prefix(template: str) -> str:
    """The fixed part of a ``path_template``, before its first ``${...}``."""
    return template.split("${", 1)[0]


def check_url(url: str, template: str, what: str) -> str:
    """``url`` (``s3://bucket/key``, filled in from ``template``) if its key is normal
    (no '.', '..' or empty segments) and stays under the template's fixed prefix;
    InvalidInput naming ``what`` if not: payload data must not move outputs elsewhere."""
    from .errors import invalid_input

    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    segments = key.split("/")
    if any(s in (".", "..") for s in segments) or "" in segments[:-1] or "\0" in key:
        raise invalid_input(f"{what}: {url!r} is not a plain S3 key (no '.', '..' or '//')")
    prefix = template_prefix(template)
    normal = f"{scheme}://{bucket}/{posixpath.normpath(key) if key else ''}"
    if not (normal + ("/" if url.endswith("/") else "")).startswith(prefix):
        raise invalid_input(f"{what}: {url!r} is outside the upload prefix {prefix!r}")
    return url


@functools.cache
def _umask() -> int:
    """The process's umask, read once: reading it sets it, for a moment, for every thread."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomically(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the
    old file or the new one, never half of one; a failed write (a full disk) leaves the
    old one. A symlink is written through (its target replaced, not the link); a path
    that is no regular file (``/dev/null``, a FIFO) is written to directly, as a rename
    would replace the device itself."""
    real = Path(os.path.realpath(path))
    try:
        if not stat.S_ISREG(real.stat().st_mode):
            with open(real, "w", encoding="utf-8") as f:
                f.write(text)
            return
    except FileNotFoundError:
        pass
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)  # mkstemp makes 0600
        os.replace(tmp, real)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
