"""Many payloads at a glance, shared by ``run --payloads``, ``submit`` and ``status``.

``Row`` is one payload's outcome. ``Progress`` shows counts by state, the elapsed time
and each failure's error line as they happen: redrawn in place on a terminal, as plain
lines otherwise (logs, CI). ``table`` and ``write_summary`` give the summary at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"  # the task ran and failed
INVALID = "INVALID"  # the task said InvalidInput (Cirrus: never retried)
REJECTED = "REJECTED"  # checked before anything ran (or was submitted) and refused
SKIPPED = "SKIPPED"  # --resume: its output is already there
RUNNING = "RUNNING"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, INVALID, REJECTED, SKIPPED})
BAD_STATES = frozenset({FAILED, INVALID, REJECTED})
# How states are listed: the way a payload goes, then how it ended.
STATE_ORDER = (
    "PENDING",
    "STAGED",
    "SUBMITTED",
    "RUNNABLE",
    "STARTING",
    RUNNING,
    SUCCEEDED,
    SKIPPED,
    FAILED,
    INVALID,
    REJECTED,
)

ANSI_CLEAR_LINE = "\r\x1b[K"
NAMED_FAILURES = 10  # the error line names this many; the summary has them all

logger = logging.getLogger("nb2task.progress")  # one logger for all progress, as progress.py


@dataclass
class Row:
    """One payload: where it came from, its id, and how it ended (or where it is)."""

    payload: str  # as given: a path or URL
    id: str | None = None  # the payload's own id, once read
    state: str = "PENDING"
    seconds: float | None = None
    output: str | None = None  # the output payload's path or URL
    error: str | None = None  # the error line (``dotted.ErrorName: message``)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def bad(self) -> bool:
        return self.state in BAD_STATES

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_seconds(seconds: float | None) -> str:
    """``3.2 s``, ``4m 05s``, ``2h 03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def counts_line(rows: Iterable[Row], elapsed: float) -> str:
    """``3/5 done · SUCCEEDED 2 · FAILED 1 · RUNNING 2 · 12.0 s``."""
    rows = list(rows)
    counts = Counter(row.state for row in rows)
    done = sum(1 for row in rows if row.done)
    ordered = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    parts = [f"{done}/{len(rows)} done", *(f"{s} {counts[s]}" for s in ordered)]
    return " · ".join([*parts, format_seconds(elapsed)])


class Progress:
    """Shows how many payloads are in which state, and logs each one as it ends (a
    failure at WARNING, with its error line). On a terminal the counts are one status
    line, redrawn in place under the log; elsewhere they are logged now and then."""

    def __init__(
        self,
        rows: Sequence[Row],
        stream: TextIO | None = None,
        tty: bool | None = None,
        plain_every: float = 30.0,
    ) -> None:
        self.rows = rows
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every = plain_every  # off a terminal: a counts line at most this often
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._reported: set[int] = {id(row) for row in rows if row.done}
        self._finished = 0
        self._last_plain = self.started
        self._last_counts = ""
        self._shown = False  # the status line is on the screen
        self._filter = _ClearStatus(self)
        if self.tty:
            for handler in self._handlers():
                handler.addFilter(self._filter)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, draw: bool = True) -> None:
        """Log the rows that ended since the last call, then show the counts."""
        with self._lock:
            for row in self.rows:
                if row.done and id(row) not in self._reported:
                    self._reported.add(id(row))
                    self._finished += 1
                    level = logging.WARNING if row.bad else logging.INFO
                    logger.log(level, "%s", self._ended_line(row))
            if draw:
                self._status()

    def tick(self) -> None:
        """Refresh the elapsed time (call it every second or so while waiting)."""
        with self._lock:
            self._status()

    def close(self) -> None:
        """The final counts, on a line of their own."""
        with self._lock:
            self.update(draw=False)
            self._clear()
            for handler in self._handlers():
                handler.removeFilter(self._filter)
            line = counts_line(self.rows, self.elapsed)
            if line.rsplit(" · ", 1)[0] != self._last_counts.rsplit(" · ", 1)[0] or self.tty:
                logger.info("%s", line)

    def _ended_line(self, row: Row) -> str:
        name = row.id or row.payload
        line = f"[{self._finished}/{len(self.rows)}] {row.state} {name}"
        line += f" ({format_seconds(row.seconds)})"
        return f"{line}: {row.error}" if row.error and row.bad else line

    def _status(self) -> None:
        line = counts_line(self.rows, self.elapsed)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(ANSI_CLEAR_LINE + line[:width])
            self.stream.flush()
            self._shown = True
            return
        counts = line.rsplit(" · ", 1)[0]
        now = time.monotonic()
        changed = counts != self._last_counts.rsplit(" · ", 1)[0]
        if changed and now - self._last_plain >= self.plain_every:
            logger.info("%s", line)
            self._last_plain = now
            self._last_counts = line

    def _clear(self) -> None:
        if self._shown:
            self.stream.write(ANSI_CLEAR_LINE)
            self.stream.flush()
            self._shown = False

    def _handlers(self) -> list[logging.Handler]:
        return [
            h
            for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and h.stream is self.stream
        ]


class _ClearStatus(logging.Filter):
    """Takes the status line off the screen before a log record is written there."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        with self.progress._lock:  # any thread may log
            self.progress._clear()
        return True


def table(rows: Iterable[Row]) -> str:
    """The summary: payload id, state, duration, then the output or the error line."""
    header = ("payload", "state", "duration", "output / error")
    lines = [
        (
            row.id or row.payload,
            row.state,
            format_seconds(row.seconds),
            (row.error if row.bad else row.output) or "",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:3])) + "  " + line[3]
        for line in [header, *lines]
    )


def summary(rows: Iterable[Row], **extra: Any) -> dict[str, Any]:
    """The summary as JSON: counts by state, and every row."""
    rows = list(rows)
    return {
        **extra,
        "counts": dict(Counter(row.state for row in rows)),
        "payloads": [row.as_dict() for row in rows],
    }


def write_summary(path: Path, rows: Iterable[Row], **extra: Any) -> None:
    """Write ``summary(rows)`` to ``path`` (JSON, atomically)."""
    from .payload import write_json

    write_json(summary(rows, **extra), path)


def raise_for_failures(rows: Sequence[Row], hint: str) -> None:
    """Raise Nb2TaskError naming each payload that failed, was invalid or rejected."""
    from .errors import Nb2TaskError

    bad = [row for row in rows if row.bad]
    if bad:
        names = ", ".join(
            f"{row.payload} ({(row.error or row.state).split(':', 1)[0]})"
            for row in bad[:NAMED_FAILURES]
        )
        if len(bad) > NAMED_FAILURES:
            names += f" and {len(bad) - NAMED_FAILURES} more"
        raise Nb2TaskError(f"{len(bad)} of {len(rows)} payloads failed: {names}; {hint}")
