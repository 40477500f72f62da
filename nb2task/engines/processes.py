"""The lifetime of a run's processes (Linux; elsewhere these do nothing).

Nothing a run starts may outlive it, whatever stops nb2task. Three mechanisms, each
cheap, together covering every way out:

- a parent-death signal (``die_with_parent``): the warm parent dies with the task's
  process, a child with its warm parent, a kernel with the task's process;
- subreapers (``become_subreaper``): a process that escapes to a session of its own comes
  back, when orphaned, to the nearest subreaper above it instead of to init, so it is
  still found in the process tree below that subreaper;
- the sweep (``kill_tree``): SIGKILL every process below a root, in rounds, since one may
  fork while we kill. A mark in the environment (``RUN_MARK``) finds what left the tree
  altogether (a kernel is not our fork).

The single place where nb2task sends SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent (the thread that
    started it) ends. If ``parent`` (the pid it should have) is already gone, exit now:
    the signal would never come. True if set."""
    if _prctl is None or _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    return True


def become_subreaper() -> bool:
    """Orphaned descendants come back to this process instead of init."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


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


def kill_tree(root: int, spare: Iterable[int] = (), *, include_root: bool = False) -> int:
    """SIGKILL every process below ``root`` (but the ``spare`` children's trees), and
    ``root`` itself if ``include_root``. The number killed."""
    spared = set(spare)
    killed = _kill_in_rounds(lambda: below(root, spared))
    if include_root:
        killed += kill(root)
    return killed


def kill(pid: int) -> int:
    """SIGKILL one process; 1 if it was there to kill."""
    try:
        os.kill(pid, signal.SIGKILL)
        return 1
    except (ProcessLookupError, PermissionError):
        return 0


def kill_group(pgid: int) -> None:
    """SIGKILL a process group. (Its id stays reserved while a member lives, so this
    cannot reach an unrelated process.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_in_rounds(find: Callable[[], list[int]]) -> int:
    """SIGKILL what ``find`` finds until it finds nothing (5 rounds at most: a process
    may fork while we kill). The number killed."""
    killed = 0
    for _ in range(5):
        pids = find()
        if not pids:
            break
        killed += sum(kill(pid) for pid in pids)
    return killed


# Set in the environment of everything a kernel runs: what outlives the kernel and left
# its tree is found by it (unless it cleared its environment).
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


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/<pid>/stat field 22): with
    the pid, it names one process (a pid may be reused, a pid and start time not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def now_in_ticks() -> int:
    """The clock ``start_time`` counts in: ticks since boot."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def kill_adopted(since: int, keep: Callable[[int], bool]) -> list[int]:
    """SIGKILL what this process (a subreaper) adopted since ``since`` (``now_in_ticks``):
    its children that started then or later, unless ``keep(pid)`` (a kernel of its own),
    and all below them. What was there before (a test's server) is left alone. The pids
    killed, for ``reap``."""
    me = os.getpid()

    def adopted() -> list[int]:
        found = []
        for pid in process_tree().get(me, []):
            started = start_time(pid)
            # Strictly after: a tick is 10 ms, and what started in the run's first tick
            # was there before it (a test's server), not the notebook's.
            if started is not None and started > since and not keep(pid):
                found.append(pid)
                found.extend(below(pid))
        return found

    killed: list[int] = []
    for _ in range(5):  # as _kill_in_rounds, keeping the pids
        pids = adopted()
        if not pids:
            break
        killed.extend(pid for pid in pids if kill(pid))
    return killed


def reap(pids: Iterable[int], within: float = 1.0) -> None:
    """Collect those of ``pids`` that are this process's children once they end, so no
    zombie stays (killed below a kernel, they come back to us when it exits). A pid that
    is not our child is its live parent's to collect."""
    waiting = set(pids)
    deadline = time.monotonic() + within
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    waiting.discard(pid)
            except ChildProcessError:
                waiting.discard(pid)
        if waiting:
            time.sleep(0.01)


def reap_any() -> list[tuple[int, int]]:
    """Collect every ended child of this process: (pid, wait status) each."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended.append((pid, status))
    return ended


def native_threads() -> int:
    """This process's threads as the OS counts them (C libraries' pools included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def thread_names() -> list[str]:
    """The names the OS knows this process's threads by (``jemalloc_bg_thd``, ...)."""
    names = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as f:
                names.append(f.read().strip())
    except OSError:
        pass
    return names
