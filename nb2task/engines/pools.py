"""Native thread pools that libraries start when they load: kept out of the warm parent,
given back to each child.

Forking is safe only from a process with one thread, and common libraries start threads
as soon as they load: OpenBLAS (numpy, scipy) one worker per extra core, and jemalloc's
background thread (pyarrow, pulled in by pandas). Both read a setting from the
environment when they load, so the warm parent sets them before it imports anything
(``limit``); each child then restores the environment the notebook would have had, and
gives OpenBLAS its workers back (``give_back``), so a notebook's linear algebra runs as
it would in a kernel. jemalloc's background thread is not restarted (jemalloc then purges
memory on the allocating threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field

# The setting that stops each pool at its source, and how it is combined with a value
# already set.
LIMITS = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}
# OpenBLAS' setter, whatever the build's affixes (numpy's and scipy's wheels add some).
_SETTERS = tuple(
    f"{prefix}openblas_set_num_threads{suffix}"
    for prefix in ("", "scipy_")
    for suffix in ("", "64_", "_64")
)


@dataclass
class Limits:
    """What ``limit`` changed: the environment before, and the OpenBLAS pools found."""

    environment: dict[str, str | None] = field(default_factory=dict)
    openblas: list[Callable[[int], None]] = field(default_factory=list)


def limit() -> Limits:
    """Stop the known pools at their source in this process (call before any import)."""
    saved: dict[str, str | None] = {}
    for name, value in LIMITS.items():
        saved[name] = os.environ.get(name)
        existing = saved[name]
        if name == "JE_ARROW_MALLOC_CONF" and existing:
            value = f"{existing},{value}"  # the last option wins in jemalloc's parser
        os.environ[name] = value
    return Limits(saved)


def find_openblas(limits: Limits) -> None:
    """Note the OpenBLAS libraries loaded by now (after the warm-up's imports)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1]}
    except OSError:
        return
    for path in sorted(paths):
        with contextlib.suppress(OSError):
            library = ctypes.CDLL(path)
            setter = next((getattr(library, s) for s in _SETTERS if hasattr(library, s)), None)
            if setter is not None:
                limits.openblas.append(setter)


def restore_environment(limits: Limits) -> None:
    """The environment as it was before ``limit``."""
    for name, value in limits.environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def give_back(limits: Limits) -> None:
    """In a child: the environment as it was, and OpenBLAS' workers as it would start them."""
    restore_environment(limits)
    if not limits.openblas:
        return
    threads = blas_threads()
    if threads > 1:
        for setter in limits.openblas:
            setter(threads)


def blas_threads() -> int:
    """How many threads OpenBLAS takes on its own: its settings, else the usable cores."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
