"""What a failed cell tells a person: the traceback the executed notebook holds, the line
of the cell that was running, and the few lines printed before a run's last line.

The engines report a failed cell by name, value and cell; the traceback is in the
executed notebook (papermill's final save), read here once, on failure only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import NotebookCellError

# Colours and cursor codes of IPython's formatted tracebacks.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# IPython 8's frame header for code typed in a cell: "Cell In[4], line 5".
CELL_FRAME = re.compile(r"Cell In\s?\[(\d+)\], line (\d+)")
LAST_FRAMES = 3  # frames shown on stderr; the record has them all
MAX_FRAME_LINES = 12


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes."""
    return ANSI.sub("", text)


def with_traceback(error: NotebookCellError, record: Path) -> NotebookCellError:
    """``error`` with the traceback and failing line from the executed notebook at
    ``record`` (``error`` itself when the record does not have them)."""
    try:
        node = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return error
    output = error_output(node, error.exec_count)
    if output is None:
        return error
    traceback = [strip_ansi(str(frame)) for frame in output.get("traceback") or []]
    return NotebookCellError(
        error.ename,
        error.evalue,
        error.cell_index,
        error.exec_count,
        error.source,
        traceback=traceback,
        line=failing_line(traceback, error.exec_count),
    )


def error_output(node: dict[str, Any], exec_count: int | None = None) -> dict[str, Any] | None:
    """The first error output of the executed notebook ``node`` (of the cell run as
    ``In [exec_count]`` when given), as papermill finds it."""
    for cell in node.get("cells", []):
        if exec_count is not None and cell.get("execution_count") != exec_count:
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found: dict[str, Any] = output
                return found
    return None


def failing_line(traceback: list[str], exec_count: int | None) -> int | None:
    """The line of cell ``In [exec_count]`` that was running: its first frame."""
    for frame in traceback:
        for match in CELL_FRAME.finditer(frame):
            if exec_count is None or int(match.group(1)) == exec_count:
                return int(match.group(2))
    return None


def frames(traceback: list[str]) -> list[str]:
    """The traceback's frames, without its header and its last line (the error)."""
    body = traceback[:-1] if len(traceback) > 1 else traceback
    return [
        frame
        for frame in body
        if frame.strip()
        and not frame.lstrip().startswith("---------")
        and "Traceback (most recent call last)" not in frame
    ]


def cell_error_of(error: BaseException) -> NotebookCellError | None:
    """The notebook cell error behind ``error`` (itself, or the cause it was raised
    from, as an InvalidInput raised in a cell is)."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, NotebookCellError):
            return candidate
    return None


def context_lines(error: BaseException) -> list[str]:
    """What stderr shows before the error line: where the notebook failed and the last
    frames of its traceback; nothing for other errors."""
    cell_error = cell_error_of(error)
    if cell_error is None:
        return []
    where = f"In [{cell_error.exec_count}]"
    if cell_error.line is not None:
        where += f", line {cell_error.line}"
    lines = [f"the notebook failed in cell {where}"]
    shown = frames(cell_error.traceback)
    if not shown:
        return lines
    hidden = len(shown) - LAST_FRAMES
    lines[0] += (
        f"; traceback, last {LAST_FRAMES} of {len(shown)} frames (the executed notebook has all):"
        if hidden > 0
        else "; traceback:"
    )
    for frame in shown[-LAST_FRAMES:]:
        frame_lines = frame.rstrip("\n").splitlines()
        if len(frame_lines) > MAX_FRAME_LINES:
            frame_lines = [*frame_lines[: MAX_FRAME_LINES - 1], "..."]
        lines += [f"  {line}".rstrip() for line in frame_lines]
    lines.append(f"  {cell_error.ename}: {' '.join(cell_error.evalue.split())[:500]}")
    return lines
