"""Where a run is, for the person watching it: stages (check, download, cell, upload,
done) as records of one logger, ``nb2task.progress``.

Off a terminal they are plain log lines naming the payload. On one, ``LiveDisplay``
turns them into a status line (the running cell's first line, the time so far) and
one line per finished stage. The fork engine's run leader sends its records over as
text, so a record's message is the interface: ``<stage>: <detail>``, and for cells
``cell <n>/<total>: <first line of the cell>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

from . import settings

LOGGER_NAME = "nb2task.progress"
logger = logging.getLogger(LOGGER_NAME)

MESSAGE = re.compile(r"^(?:\[[^\]]*\] )?([a-z]+)(?: (\d+)/(\d+))?: (.*)$", re.DOTALL)
LABELS = {"check": "checks", "download": "download", "cell": "cells", "upload": "upload"}
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK_S = 0.2

_local = threading.local()


def begin(payload_id: str | None) -> None:
    """Name the payload this thread now runs (plain lines carry it)."""
    _local.payload_id = payload_id


def stage(name: str, detail: str) -> None:
    """Report that the run entered stage ``name``."""
    logger.info("%s: %s", name, detail)


def cell(number: int, total: int, source: str) -> None:
    """Report that the ``number``-th of ``total`` code cells starts (shown by its first
    line of code)."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith("#")), lines[0] if lines else "")
    logger.info("cell %d/%d: %s", number, total, first[:100])


class _PayloadId(logging.Filter):
    """Prefixes progress records with the payload id of the thread that runs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        payload_id = getattr(_local, "payload_id", None)
        if payload_id:
            record.msg, record.args = f"[{payload_id}] {record.getMessage()}", ()
        return True


logger.addFilter(_PayloadId())


class LiveDisplay(logging.Handler):
    """A terminal's view of one run: a line per finished stage and a status line for
    the running one. Other records show when they are warnings, errors or cell output
    (``--log-output``); the status line is cleared first and drawn again after."""

    def __init__(self, stream: IO[str], formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter or logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.started = time.monotonic()
        self.current: tuple[str, str, float] | None = None  # stage, detail, since
        self.cells = ""  # "3/7"
        self.drawn = False
        self.ticks = 0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="nb2task-progress", daemon=True)

    def start(self) -> None:
        self._ticker.start()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_held():
            if record.name == LOGGER_NAME and self._progress(record.getMessage()):
                return
            if record.levelno < logging.WARNING and not record.name.startswith("papermill"):
                return  # INFO chatter: the display says where the run is
            self._clear()
            self.stream.write(self.format(record) + "\n")
            self._draw()

    def finish(self, failed: bool) -> None:
        """Stop drawing: the running stage's line is written, marked as failed or done;
        nothing is written after this. Only the first call counts."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join()
        with self._lock_held():
            self._clear()
            if self.current is not None:
                self._close_stage("✗" if failed else "✓")
            self.stream.flush()

    def _progress(self, message: str) -> bool:
        match = MESSAGE.match(message)
        if match is None:
            return False
        name, number, total, detail = match.groups()
        if name == "done":
            self._clear()
            if self.current is not None:
                self._close_stage("✓")
            self.stream.write(f"done: {detail}\n")
            self.stream.flush()
            return True
        if name == "cell":
            self.cells = f"{number}/{total}"
        if self.current is None or self.current[0] != name:
            self._clear()
            if self.current is not None:
                self._close_stage("✓")
            self.current = (name, detail, time.monotonic())
        else:
            self.current = (name, detail, self.current[2])
        self._draw()
        return True

    def _close_stage(self, mark: str) -> None:
        assert self.current is not None
        name, detail, since = self.current
        if name == "cell":
            detail = f"{self.cells}" + (f"  {detail}" if mark == "✗" else "")
        self.stream.write(
            f"{mark} {self._label(name, detail)}  ({time.monotonic() - since:.1f} s)\n"
        )
        self.current = None

    def _label(self, name: str, detail: str) -> str:
        return f"{LABELS.get(name, name):<9} {detail}"

    def _draw(self) -> None:
        if self.current is None:
            return
        name, detail, _ = self.current
        if name == "cell":
            detail = f"{self.cells}  {detail}"
        spinner = SPINNER[self.ticks % len(SPINNER)]
        elapsed = time.monotonic() - self.started
        text = f"{spinner} {self._label(name, detail)}  {elapsed:.1f} s"
        self.stream.write("\r\x1b[2K" + text[: self._width() - 1])
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.drawn = False

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns if columns > 20 else 80  # a pseudo-terminal may say 0

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock_held():
                if self._stop.is_set():
                    return
                self.ticks += 1
                if self.drawn:
                    self._draw()

    @contextlib.contextmanager
    def _lock_held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def live_display(stream: IO[str] | None = None) -> LiveDisplay | None:
    """Show progress live on ``stream`` (stderr) if it is a terminal: the display takes
    the place of the root logger's stream handlers until ``finish``. None otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty() or settings.current().progress == "plain":
        return None
    root = logging.getLogger()
    replaced = [h for h in root.handlers if type(h) is logging.StreamHandler]
    display = LiveDisplay(stream, replaced[0].formatter if replaced else None)
    for handler in replaced:
        root.removeHandler(handler)
    root.addHandler(display)
    display.start()
    return display
