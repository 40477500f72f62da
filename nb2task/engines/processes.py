"""Processes a run leaves behind, found and killed (Linux; elsewhere nothing is found).

A run's processes are killed when it ends: its process group, and anything that escaped
to a session of its own. Such an escapee, once its parent dies, comes back to the
nearest ancestor that is a subreaper; ``kill_below`` then finds it under that process.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> bool:
    """Orphaned descendants come back to this process instead of init (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> pids of its live children, from /proc (empty where there is none)."""
    tree: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return tree
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z":  # a zombie has ended already, only not yet reaped
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def below(root: int, spare: Iterable[int] = ()) -> list[int]:
    """Every live process below ``root``, but for the ``spare`` children and their own."""
    tree = process_tree()
    spared = set(spare)
    found, stack = [], [p for p in tree.get(root, []) if p not in spared]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def kill_below(root: int, spare: Iterable[int] = (), reap: bool = False) -> int:
    """SIGKILL every process below ``root`` (but the ``spare`` children's trees), a few
    rounds in case one forks meanwhile; reap those that are our children if ``reap``.
    The number killed."""
    spare = set(spare)
    return _kill_in_rounds(lambda: below(root, spare), reap)


def _kill_in_rounds(find: Callable[[], list[int]], reap: bool = False) -> int:
    """SIGKILL what ``find`` finds until it finds nothing (5 rounds at most: a process
    may fork while we kill); reap them if they are our children. The number killed."""
    killed = 0
    for _ in range(5):
        pids = find()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        if reap:
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
    return killed


# Set in the environment of everything a kernel runs: what outlives the kernel is found
# by it, wherever it went (a kernel is not our fork, so no subreaper sees its orphans).
RUN_MARK = "NB2TASK_RUN_MARK"


def kill_marked(mark: str) -> int:
    """SIGKILL every process whose environment carries ``RUN_MARK=mark``; the number killed."""
    needle = f"{RUN_MARK}={mark}".encode()

    def marked() -> list[int]:
        pids = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            pids.append(int(entry))
                except OSError:
                    continue
        return pids

    return _kill_in_rounds(marked)
