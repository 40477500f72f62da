"""Hostile input, round 2: what a notebook's outputs do to the run's record.

A flood of output (big images, many displays, a stream that never stops) is kept up to
the record's limits (``NB2TASK_RECORD_OUTPUT_MB`` an output, ``NB2TASK_RECORD_MB`` a
notebook), with a marker where it was cut, in the executed notebook and its HTML; the
notebook's own failure still ends the run (its error line last, exit 1). A secret is
redacted where it is a key (a MIME type, a metadata key) and where it was printed in
two flushes (Jupyter shows one text). Limits are set small here to keep runs fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import make_payload, run_cli, write_notebook

PARAMETERS = 'payload = "x.json"\nworkdir = "."\n'
SECRET = "sk-nb2task-FAKE-3f9a7c1e5b2d4a6c8e0f"
LIMITS = {"NB2TASK_RECORD_OUTPUT_MB": "0.5", "NB2TASK_RECORD_MB": "2"}
MB = 1024 * 1024
# What the record holds besides outputs (sources, metadata) and a few markers, at most.
SLACK = 200 * 1024
RAISE = "raise RuntimeError('after the flood')"
ERROR_LINE = "RuntimeError: after the flood"


def run_notebook(tmp_path: Path, *cells: str, env: dict[str, str] | None = None) -> Any:
    """Run a notebook of ``cells`` (the last raises), with the small limits; return the
    result, the record's text and the HTML's text."""
    notebook = write_notebook(tmp_path / "nb" / "flood.ipynb", PARAMETERS, *cells)
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(make_payload()))
    workdir = tmp_path / "work"
    result = run_cli("run", notebook, payload, "--workdir", workdir, env={**LIMITS, **(env or {})})
    record = (workdir / "flood.executed.ipynb").read_text()
    html = (workdir / "flood.executed.html").read_text()
    return result, record, html


def outputs(record: str) -> list[dict[str, Any]]:
    return [out for cell in json.loads(record)["cells"] for out in cell.get("outputs", [])]


BIG_OUTPUTS = {
    "image": (
        "import base64, os\nfrom IPython.display import display\n"
        "png = base64.b64encode(os.urandom(1536 * 1024)).decode()\n"
        "display({'image/png': png, 'text/plain': 'an image'}, raw=True)"
    ),
    "result": "'y' * (3 * 1024 * 1024)",
    "html": (
        "from IPython.display import HTML, display\n"
        "display(HTML('<p>' + 'z' * (2 * 1024 * 1024) + '</p>'))"
    ),
}


@pytest.mark.parametrize("cell", BIG_OUTPUTS.values(), ids=BIG_OUTPUTS.keys())
def test_a_big_output_is_cut_with_its_marker(engine: str, tmp_path: Path, cell: str) -> None:
    result, record, html = run_notebook(tmp_path, cell, RAISE)
    assert result.returncode == 1, result.stderr
    assert result.last_stderr_line.startswith(ERROR_LINE)
    markers = [
        out for out in outputs(record) if "over the 0.5 MB an output limit, NB2TASK_RECORD_OUTPUT_MB"
        in str(out.get("data", {}).get("text/plain", ""))
    ]  # fmt: skip
    assert len(markers) == 1 and markers[0]["output_type"] == "display_data"
    assert len(record) < 0.5 * MB + SLACK
    assert len(html) < 2 * MB, "the HTML is made from the bounded record"
    assert "[nb2task: output of" in html


MEDIUM_FLOODS = {
    "displays": "for i in range(8):\n    display({'text/plain': 'x' * (300 * 1024)}, raw=True)",
    "display-then-print": (
        "for i in range(400):\n"
        "    display({'text/plain': 'x' * (4 * 1024)}, raw=True); print('p' * 2000)"
    ),
}


@pytest.mark.parametrize("loop", MEDIUM_FLOODS.values(), ids=MEDIUM_FLOODS.keys())
def test_many_medium_outputs_hit_the_notebook_limit(engine: str, tmp_path: Path, loop: str) -> None:
    cells = ["from IPython.display import display\n" + loop for _ in range(3)]
    result, record, html = run_notebook(tmp_path, *cells, RAISE)
    assert result.returncode == 1 and result.last_stderr_line.startswith(ERROR_LINE)
    assert len(record) < 2 * MB + SLACK
    marked = [
        out for out in outputs(record)
        if "over the 2.0 MB a notebook limit, NB2TASK_RECORD_MB" in str(out.get("data", {}))
    ]  # fmt: skip
    assert 1 <= len(marked) <= 3, "one marker a cell, not one an output"
    assert "NB2TASK_RECORD_MB" in html and len(html) < 2 * MB + 4 * SLACK


STREAM_FLOODS = {
    "stdout-lines": "for i in range(60000):\n    print(f'line {i:06d} of a flood of output')",
    "stderr-lines": (
        "import sys\nfor i in range(60000):\n    print(f'warn {i:06d} of a flood', file=sys.stderr)"
    ),
    "one-print": "print('w' * (3 * 1024 * 1024))",
    "flushed-chunks": (
        "import sys, time\nfor i in range(30):\n"
        "    sys.stdout.write('c' * 100_000); sys.stdout.flush(); time.sleep(0.01)"
    ),
}


@pytest.mark.parametrize("cell", STREAM_FLOODS.values(), ids=STREAM_FLOODS.keys())
def test_a_stream_flood_is_cut(engine: str, tmp_path: Path, cell: str) -> None:
    result, record, html = run_notebook(tmp_path, cell, RAISE)
    assert result.returncode == 1 and result.last_stderr_line.startswith(ERROR_LINE)
    streams = [out for out in outputs(record) if out["output_type"] == "stream"]
    assert streams, "the stream's first part is kept"
    text = "".join(
        "".join(s["text"]) if isinstance(s["text"], list) else s["text"] for s in streams
    )
    assert "[nb2task: the rest of this stream is cut: over the 0.5 MB an output limit" in text
    assert len(record) < 0.5 * MB + SLACK
    assert len(html) < 2 * MB
    assert any(out["output_type"] == "error" for out in outputs(record)), "the error is kept"


def test_a_huge_error_is_kept_shortened(engine: str, tmp_path: Path) -> None:
    result, record, _ = run_notebook(tmp_path, "raise RuntimeError('e' * (2 * 1024 * 1024))")
    assert result.returncode == 1
    assert result.last_stderr_line.startswith("RuntimeError: eeee")
    errors = [out for out in outputs(record) if out["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "RuntimeError"
    assert len(record) < 0.5 * MB + SLACK


SECRET_SHOWN = {
    "metadata-key": (
        "import os\nfrom IPython.display import display\n"
        "display({'text/plain': 'hello'}, metadata={os.environ['MY_API_TOKEN']: 1}, raw=True)"
    ),
    "mime-type": (
        "import os\nfrom IPython.display import display\n"
        "display({'text/plain': 'hello', os.environ['MY_API_TOKEN']: 'x'}, raw=True)"
    ),
    "nested-key": (
        "import os\nfrom IPython.display import display\n"
        "display({'application/json': {'a': {os.environ['MY_API_TOKEN']: [1]}},"
        " 'text/plain': 'j'}, raw=True)"
    ),
    "two-flushes": (
        "import os, time\ns = os.environ['MY_API_TOKEN']\n"
        "print(s[:10], end='', flush=True); time.sleep(0.1); print(s[10:], flush=True)"
    ),
    "three-flushes-stderr": (
        "import os, sys, time\ns = os.environ['MY_API_TOKEN']\n"
        "for part in (s[:5], s[5:20], s[20:] + '\\n'):\n"
        "    sys.stderr.write(part); sys.stderr.flush(); time.sleep(0.1)"
    ),
}


@pytest.mark.parametrize("cell", SECRET_SHOWN.values(), ids=SECRET_SHOWN.keys())
def test_a_secret_as_a_key_or_in_pieces_stays_out(engine: str, tmp_path: Path, cell: str) -> None:
    result, record, html = run_notebook(tmp_path, cell, RAISE, env={"MY_API_TOKEN": SECRET})
    assert result.returncode == 1 and result.last_stderr_line.startswith(ERROR_LINE)
    assert SECRET not in record and SECRET[10:] not in record
    assert "[REDACTED:MY_API_TOKEN]" in record
    assert SECRET not in html and SECRET[10:] not in html
    assert SECRET not in result.stdout + result.stderr


def test_redaction_rewrites_keys_and_merges_streams() -> None:
    import nbformat

    from nb2task.redact import redact_notebook

    found = {SECRET: "MY_API_TOKEN"}
    parts = [
        nbformat.v4.new_output("stream", name="stdout", text=SECRET[:7]),
        nbformat.v4.new_output("stream", name="stdout", text=SECRET[7:] + "\n"),
        nbformat.v4.new_output("stream", name="stderr", text="other\n"),
        nbformat.v4.new_output("display_data", data={SECRET: "v"}, metadata={SECRET: {}}),
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=parts)])
    redact_notebook(nb, found)
    assert SECRET not in json.dumps(nb)
    outs = nb.cells[0].outputs
    assert [o.output_type for o in outs] == ["stream", "stream", "display_data"]
    assert outs[0].text == "[REDACTED:MY_API_TOKEN]\n"
    assert list(outs[2].data) == ["[REDACTED:MY_API_TOKEN]"]
