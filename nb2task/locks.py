"""One run at a time on a work directory or a local output file. Two runs sharing a
``--workdir`` would mix their items (run B's output payload holding run A's) and keep
only one record; so the second is refused at once, naming the first's pid.

A lock is an ``flock`` on a file of its own under ``$TMPDIR/nb2task-locks-<uid>/``, named
by the path's digest: nothing is added to the workdir (whose every file is an output), it
works for a path that does not exist yet, and the kernel drops it when the process
ends, however it ends (no stale lock after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import UsageError


def lock_directory() -> Path:
    """Where this user's lock files live: a folder of theirs alone (0700), so no one else
    can plant a lock file (a symlink to a file of theirs) or hold their locks."""
    path = Path(tempfile.gettempdir()) / f"nb2task-locks-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise UsageError(f"cannot make the lock folder {path}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageError(f"the lock folder {path} is not this user's own (0700): remove it")
    return path


def lock_file(path: Path) -> Path:
    """The lock file of ``path`` (its real, absolute path: links lead to one lock)."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    return lock_directory() / f"{digest}.lock"


@contextlib.contextmanager
def hold(paths: Mapping[str, Path]) -> Iterator[None]:
    """Hold the lock of each path (``{"--workdir": path, ...}``: the key names it in the
    error) for the ``with`` block; one that another run holds is a UsageError."""
    with contextlib.ExitStack() as held:
        for what, path in paths.items():
            fd = _open(lock_file(path))
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise UsageError(
                    f"{what} {path} is in use by another run (pid {owner}): give each run its own"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield


def _open(path: Path) -> int:
    """The lock file, open: never through a symlink, and close-on-exec (a kernel or a tool
    started meanwhile must not hold the lock after the run)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise UsageError(f"cannot open the lock file {path}: {err.strerror}") from None
