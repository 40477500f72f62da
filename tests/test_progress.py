"""Where a run is, as the person running it sees it: a live display on a terminal,
plain lines naming the payload otherwise, the cells' output with ``--log-output``,
and nothing ever after the final error line."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support import NB2TASK, make_payload, run_cli_on_a_terminal, write_notebook

PAYLOAD_ID = "test-collection/workflow-test-workflow/item-1"


def test_a_terminal_gets_a_live_display_and_the_error_line_last(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "live.ipynb",
        'payload = "x.json"\nn: int = 1',
        "print('cell' + ' output')",
        "import time\ntime.sleep(0.5)\n1 / (n - 1)",
    )
    payload = write_json("in.json", make_payload())
    result = run_cli_on_a_terminal("run", nb, payload, "--workdir", tmp_path / "w")
    assert result.returncode == 1
    screen = result.stderr
    assert "✓ checks    the payload and its parameters" in screen
    # The status line named the running cell by its first line of code.
    assert "cells     4/4  import time" in screen
    assert "✗ cells     4/4  import time" in screen
    assert "cell output" not in screen  # without --log-output, it stays in the notebook
    final = "ZeroDivisionError: division by zero (notebook cell In [4], line 3: 1 / (n - 1))"
    # Nothing after the final line: no status line drawn again, no escape code.
    assert screen.endswith(final + "\n")
    assert "\x1b[" not in screen[screen.index("✗ cells") :]

    ok = run_cli_on_a_terminal(
        "run", nb, payload, "-p", "n", "2", "--workdir", tmp_path / "w", "--output", tmp_path / "o"
    )
    assert ok.returncode == 0, ok.stderr
    assert "✓ cells     4/4" in ok.stderr
    # Warnings show through the display.
    assert "WARNING live: [" in ok.stderr and "the notebook emitted no items" in ok.stderr
    record = tmp_path / "w" / "live.executed.ipynb"
    last = ok.stderr.rstrip("\n").splitlines()[-1]
    assert last == f"done: 0 item(s) → {tmp_path / 'o'}; record {record}"


@pytest.mark.usefixtures("engine")
def test_log_output_streams_cell_output_as_it_comes(tmp_path: Path, write_json) -> None:
    nb = write_notebook(
        tmp_path / "talk.ipynb",
        'payload = "x.json"',
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')",
    )
    payload = write_json("in.json", make_payload())
    proc = subprocess.Popen(
        [NB2TASK, "run", nb, payload, "--log-output", "--workdir", tmp_path / "w"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    arrived: dict[str, float] = {}
    lines = []
    for line in proc.stderr:
        lines.append(line)
        for word in ("first", "second"):
            if line.strip().endswith(f": {word}"):
                arrived.setdefault(word, time.monotonic())
    assert proc.wait(timeout=60) == 0, "".join(lines)
    # "first" was logged while the cell still ran, not when it ended.
    assert arrived["second"] - arrived["first"] > 1.0, lines
    # Plain lines name the payload.
    assert f"INFO nb2task.progress: [{PAYLOAD_ID}] cell 3/3: import time\n" in lines
