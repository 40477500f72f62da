"""How much of a notebook's output the run's record keeps, applied as outputs arrive.

A notebook that displays four 30 MB images would otherwise have nb2task hold, save,
upload and render all of it: its own process grows past what a Lambda function has,
and dies there without its error line. So each output is kept up to
``NB2TASK_RECORD_OUTPUT_MB`` (4 MB by default) and all of them up to
``NB2TASK_RECORD_MB`` (32 MB): both engines' clients pass every output through
``OutputBudget.admit`` as it arrives, so nothing bigger is ever held for long (the HTML
is rendered from this bounded notebook, so it follows).

What is cut leaves a visible marker: a ``display_data`` output whose ``text/plain``
says what was cut and why; a stream keeps its first part and ends with a marker line.
An error output (the notebook's failure, its error line) is always kept, its traceback
shortened to fit. Consecutive stream outputs of one name are merged as they arrive, as
Jupyter shows them: a secret printed in two flushes is then one text to redact.
"""

from __future__ import annotations

from typing import Any

MB = 1024 * 1024
OUTPUT_SETTING = "NB2TASK_RECORD_OUTPUT_MB"
NOTEBOOK_SETTING = "NB2TASK_RECORD_MB"
MARK = "[nb2task: "


def limits() -> tuple[int, int]:
    """(the most an output keeps, the most all outputs keep), in bytes."""
    from . import settings

    current = settings.current()
    return current.record_output_bytes, current.record_bytes


def size(value: Any) -> int:
    """About how many bytes ``value`` takes in the record's JSON: its strings' UTF-8
    lengths (keys too), without encoding ASCII text (base64 images are). A walk with a
    stack, not recursion: a display's JSON may nest deeper than Python's stack."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode("utf-8", "replace"))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            total += 8
    return total


def _megabytes(count: int) -> str:
    return f"{count / MB:.1f} MB" if count >= MB // 10 else f"{count / 1024:.1f} KB"


class OutputBudget:
    """The record's limits for one run, and what its outputs have used of them."""

    def __init__(self, output_bytes: int, notebook_bytes: int) -> None:
        self.output_bytes = output_bytes
        self.notebook_bytes = notebook_bytes
        self.cells: dict[int, int] = {}  # cell index -> bytes its outputs keep
        self.kept = 0  # bytes all outputs keep
        self.full: set[int] = set()  # cells that met the notebook limit: they keep no more

    @classmethod
    def from_settings(cls) -> OutputBudget:
        return cls(*limits())

    def admit(self, outs: list[Any], cell_index: int, may_drop: bool = True) -> Any:
        """Bound the output just appended to ``outs`` (the cell's outputs), in place:
        merged into the stream before it, cut, replaced by a marker or (unless it has a
        display id to be found by) dropped. Returns what of it was kept, to log: the
        output, its marker, the text a stream grew by; None if nothing."""
        out = outs[-1]
        kind = out.get("output_type")
        if cell_index in self.full and kind != "error" and may_drop:
            outs.pop()  # its marker says so already: a flood adds nothing more
            return None
        if kind == "stream" and len(outs) > 1:
            before = outs[-2]
            if before.get("output_type") == "stream" and before.get("name") == out.get("name"):
                outs.pop()
                return self._extend_stream(before, out, cell_index)
        if kind == "error":
            return self._keep_error(outs, cell_index)
        used = size(out)
        if kind == "stream":
            if used > self.output_bytes or self.kept + used > self.notebook_bytes:
                text, out["text"] = _text(out), ""
                self._extend_stream(out, {"text": text}, cell_index)
                return out
            self._use(cell_index, used)
            return out
        if used > self.output_bytes:
            outs[-1] = self._marker(used, f"over the {_megabytes(self.output_bytes)} an "
                                    f"output limit, {OUTPUT_SETTING}")  # fmt: skip
        elif self.kept + used > self.notebook_bytes:
            outs[-1] = self._notebook_marker(used)
            self.full.add(cell_index)
        else:
            self._use(cell_index, used)
            return out
        self._use(cell_index, size(outs[-1]))
        return outs[-1]

    def _extend_stream(self, stream: Any, more: Any, cell_index: int) -> Any:
        """Append ``more``'s text to ``stream``, up to the limits; past them, once, a
        marker line; then nothing."""
        text = stream.get("text", "")
        if isinstance(text, list):
            text = "".join(text)
        if _is_cut(text):
            return None
        extra = _text(more)
        room = min(self.output_bytes - size(text), self.notebook_bytes - self.kept)
        if size(extra) <= room:
            stream["text"] = text + extra
            self._use(cell_index, size(extra))
            return more
        keep = extra[: max(0, room)]
        while keep and size(keep) > room:  # characters of several bytes
            keep = keep[: len(keep) * 3 // 4]
        if size(text) + size(extra) > self.output_bytes:
            why = f"over the {_megabytes(self.output_bytes)} an output limit, {OUTPUT_SETTING}"
        else:
            why = (
                f"the record's outputs are over the {_megabytes(self.notebook_bytes)} "
                f"a notebook limit, {NOTEBOOK_SETTING}; the cell's further outputs are cut too"
            )
            self.full.add(cell_index)
        marker = f"\n{STREAM_CUT}: {why}]\n"
        stream["text"] = text + keep + marker
        self._use(cell_index, size(keep) + size(marker))
        return stream

    def _keep_error(self, outs: list[Any], cell_index: int) -> Any:
        """An error is always kept (the run's error line is made from it), shortened to
        the output limit: its value cut, its traceback's last lines kept."""
        out = outs[-1]
        if size(out) > self.output_bytes:
            share = max(256, self.output_bytes // 4)
            evalue = str(out.get("evalue", ""))
            if size(evalue) > share:
                out["evalue"] = evalue[:share] + f" {MARK}cut: {_megabytes(size(evalue))}]"
            kept: list[str] = []
            room = self.output_bytes - size(out["evalue"]) - size(out.get("ename", ""))
            for line in reversed(list(out.get("traceback", []))):
                line = line if size(line) <= share else line[:share] + f" {MARK}line cut]"
                if size(line) > room:
                    kept.append(f"{MARK}the traceback's first lines are cut]")
                    break
                kept.append(line)
                room -= size(line)
            out["traceback"] = kept[::-1]
        self._use(cell_index, size(out))
        return out

    def _marker(self, used: int, why: str) -> Any:
        from nbformat.v4 import new_output

        return new_output(  # type: ignore[no-untyped-call]
            "display_data",
            data={"text/plain": f"{MARK}output of {_megabytes(used)} cut: {why}]"},
        )

    def _notebook_marker(self, used: int) -> Any:
        return self._marker(
            used,
            f"the record's outputs are over the {_megabytes(self.notebook_bytes)} a "
            f"notebook limit, {NOTEBOOK_SETTING}; the cell's further outputs are cut too",
        )

    def _use(self, cell_index: int, used: int) -> None:
        self.cells[cell_index] = self.cells.get(cell_index, 0) + used
        self.kept += used

    def recount(self, outs: list[Any], cell_index: int) -> None:
        """The cell's outputs changed in place (cleared, updated by display id)."""
        used = sum(size(out) for out in outs)
        self.kept += used - self.cells.get(cell_index, 0)
        self.cells[cell_index] = used
        if not outs:
            self.full.discard(cell_index)

    def bound_in_place(self, outs: list[Any], index: int, cell_index: int) -> None:
        """An output updated by its display id: cut like a new one if it grew too big."""
        out = outs[index]
        used = size(out)
        if used > self.output_bytes:
            marker = self._marker(
                used, f"over the {_megabytes(self.output_bytes)} an output limit, "
                f"{OUTPUT_SETTING}"
            )  # fmt: skip
            out["data"], out["metadata"] = marker["data"], marker["metadata"]
        self.recount(outs, cell_index)
        if self.kept > self.notebook_bytes:
            marker = self._notebook_marker(used)
            out["data"], out["metadata"] = marker["data"], marker["metadata"]
            self.recount(outs, cell_index)
            self.full.add(cell_index)


STREAM_CUT = f"{MARK}the rest of this stream is cut"


def _is_cut(text: str) -> bool:
    tail = text[-400:]
    return tail.endswith("]\n") and f"\n{STREAM_CUT}: " in tail


def _text(out: Any) -> str:
    text = out.get("text", "")
    return "".join(text) if isinstance(text, list) else str(text)
