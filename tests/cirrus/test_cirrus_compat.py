"""nb2task judged by Cirrus' own code (cirrus-geo 2.0 in a Python 3.12 venv, see conftest.py).

Outputs: the output payload of a real ``nb2task run`` must pass
``CirrusPayload.validate`` and go through Cirrus' Batch success path (post-batch, then
update-state: SUCCEEDED, items published).

Failures: a failed run's log (stderr; on Batch stdout and stderr share one CloudWatch Logs
stream) goes through Cirrus' Batch failure path: post-batch reads the stream's LAST event
and parses ``dotted.ErrorName: message`` from it; update-state records the workflow as
INVALID when that name is ``stactask.exceptions.InvalidInput``, else FAILED.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from support import NOTEBOOKS, REPO, CliResult, run_cli, write_notebook

pytestmark = pytest.mark.cirrus

HERE = Path(__file__).resolve().parent
MINIMAL_PAYLOAD = NOTEBOOKS / "minimal.payload.json"
CIRRUS_FIXTURE = HERE / "fixtures" / "cirrus-geo-v2.0.0_basic-minimal_one-item.json"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID_INPUT = 0, 1, 2, 3
INVALID_INPUT = "stactask.exceptions.InvalidInput"


def run_local(notebook: Path, payload: Path, workdir: Path, *extra: str) -> CliResult:
    """``nb2task run NOTEBOOK PAYLOAD --local --workdir WORKDIR``, as a user runs it."""
    return run_cli("run", notebook, payload, "--local", "--workdir", workdir, *extra, cwd=REPO)


def failing_notebook(path: Path, code: str) -> Path:
    """A notebook with a ``parameters`` cell, a harmless cell, then ``code``."""
    return write_notebook(
        path,
        'payload = "x.json"  # path of the input payload',
        "import nb2task\nitems = nb2task.read_items(payload)",
        code,
        "nb2task.emit(items)",
        markdown="A failing notebook for the Cirrus compatibility tests.",
    )


def judge_failure(
    judge: Any, run: CliResult, tmp_path: Path, input_payload: Path
) -> dict[str, Any]:
    """Cirrus' Batch failure path on the run's log; the run must have failed cleanly."""
    assert run.returncode != 0, run.stderr[-3000:]
    # On Batch, stdout and stderr are one log stream: nothing may follow the error line.
    assert run.stdout.strip() == "", f"a failed run printed on stdout: {run.stdout[-500:]!r}"
    log = tmp_path / "batch-job.log"
    log.write_text(run.stderr, encoding="utf-8")
    verdict = judge("parse-batch-error", "--log-file", log, "--input", input_payload)
    last_line = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert last_line.endswith(verdict["last_event"]), "post-batch did not read the last line"
    return verdict


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", ["minimal", "ndvi"])
def test_output_payload_passes_cirrus(name: str, judge: Any, tmp_path: Path) -> None:
    """The output payload of an example notebook is a valid Cirrus payload, and Cirrus'
    Batch success path (post-batch → update-state) records SUCCEEDED and publishes it."""
    examples = shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")  # nothing lands in the repo
    input_payload = examples / f"{name}.payload.json"
    run = run_local(examples / f"{name}.ipynb", input_payload, tmp_path / "work")
    assert run.returncode == EXIT_OK, run.stderr[-3000:]
    output = tmp_path / "work" / "output-payload.json"
    assert output.exists()

    verdict = judge("validate-payload", output)
    assert verdict["valid"], verdict
    assert verdict["escaped_length"] <= verdict["max_payload_length"]

    document = json.loads(output.read_text())
    assert document["id"] == json.loads(input_payload.read_text())["id"]
    verdict = judge("batch-success", output, "--input", input_payload)
    assert verdict["valid"], verdict
    assert verdict["state"] == "SUCCEEDED"
    assert verdict["post_batch_returned"] == "payload"
    assert verdict["stored_output_equals_input_file"] is True
    assert verdict["published_item_ids"] == [f["id"] for f in document["features"]]


# ---------------------------------------------------------------------------- failures


def test_notebook_raising_invalid_input_is_invalid_in_cirrus(judge: Any, tmp_path: Path) -> None:
    notebook = failing_notebook(
        tmp_path / "invalid_input.ipynb",
        "from stactask.exceptions import InvalidInput\n"
        'raise InvalidInput("the scene has no red band")',
    )
    run = run_local(notebook, MINIMAL_PAYLOAD, tmp_path / "work")
    assert run.returncode == EXIT_INVALID_INPUT, run.stderr[-3000:]
    verdict = judge_failure(judge, run, tmp_path, MINIMAL_PAYLOAD)
    assert verdict["error_type"] == INVALID_INPUT, verdict
    assert "the scene has no red band" in verdict["error_message"]
    assert verdict["lambda_fault"]["errorType"] == INVALID_INPUT
    assert verdict["state"] == "INVALID", verdict


def test_notebook_raising_zero_division_is_failed_in_cirrus(judge: Any, tmp_path: Path) -> None:
    notebook = failing_notebook(tmp_path / "zero_division.ipynb", "ratio = 1 / 0")
    run = run_local(notebook, MINIMAL_PAYLOAD, tmp_path / "work")
    assert run.returncode == EXIT_FAILED, run.stderr[-3000:]
    verdict = judge_failure(judge, run, tmp_path, MINIMAL_PAYLOAD)
    assert verdict["error_type"] == "ZeroDivisionError", verdict
    assert "division by zero" in verdict["error_message"]
    # The message names the cell that raised, so the executed notebook can be searched.
    assert re.search(r"\bcell\b", verdict["error_message"], re.IGNORECASE), verdict
    assert verdict["state"] == "FAILED", verdict


def test_payload_rejected_by_stactask_is_invalid_in_cirrus(judge: Any, tmp_path: Path) -> None:
    """cirrus-geo's own test payload uses a regex in upload_options.collections, which
    stactask 0.7 rejects: bad input, so INVALID (and no kernel started)."""
    assert judge("validate-payload", CIRRUS_FIXTURE)["valid"]  # Cirrus itself accepts it
    run = run_local(NOTEBOOKS / "minimal.ipynb", CIRRUS_FIXTURE, tmp_path / "work")
    assert run.returncode == EXIT_INVALID_INPUT, run.stderr[-3000:]
    verdict = judge_failure(judge, run, tmp_path, CIRRUS_FIXTURE)
    assert verdict["error_type"] == INVALID_INPUT, verdict
    assert "collections" in verdict["error_message"]
    assert verdict["state"] == "INVALID", verdict


def test_long_invalid_input_message_still_parses(judge: Any, tmp_path: Path) -> None:
    """A CloudWatch Logs event holds at most 262,118 bytes; Batch's log driver splits a
    longer line and post-batch then reads only its tail: the error line must stay short
    (Docker's non-blocking awslogs mode even splits at 16 KiB)."""
    notebook = failing_notebook(
        tmp_path / "long_message.ipynb",
        "from stactask.exceptions import InvalidInput\n"
        'raise InvalidInput("bad band: " + "x" * 300_000)',
    )
    run = run_local(notebook, MINIMAL_PAYLOAD, tmp_path / "work")
    assert run.returncode == EXIT_INVALID_INPUT, run.stderr[-3000:]
    last_line = run.stderr.splitlines()[-1]
    verdict = judge_failure(judge, run, tmp_path, MINIMAL_PAYLOAD)
    assert verdict["error_type"] == INVALID_INPUT, (
        f"the last stderr line is {len(last_line.encode())} bytes; Cirrus read "
        f"{verdict['error_type']}: {verdict['error_message'][:80]}..."
    )
    assert verdict["state"] == "INVALID"
    assert len(last_line.encode()) <= 16 * 1024


@pytest.mark.usefixtures("engine")
def test_dead_kernel_is_a_named_failure(judge: Any, tmp_path: Path, engine: str) -> None:
    """The process running the notebook killed mid-run (as by the OOM killer) still ends
    in a parseable line, under each engine. The wording differs by engine: the kernel
    engine's kernel died, the fork engine's (forked) process died."""
    notebook = failing_notebook(
        tmp_path / "dead_kernel.ipynb", "import os\nos.kill(os.getpid(), 9)"
    )
    run = run_local(notebook, MINIMAL_PAYLOAD, tmp_path / "work")
    assert run.returncode == EXIT_FAILED, run.stderr[-3000:]
    verdict = judge_failure(judge, run, tmp_path, MINIMAL_PAYLOAD)
    assert verdict["error_type"] == "nb2task.errors.NotebookDiedError", verdict
    died = "kernel died" if engine == "kernel" else "process died"
    assert f"the notebook's {died} (killed by SIGKILL)" in verdict["error_message"], verdict
    assert verdict["state"] == "FAILED"


# ------------------------------------------------------------------------ Lambda tasks


@pytest.mark.parametrize(
    ("class_name", "state"),
    [(None, "FAILED"), (INVALID_INPUT, "INVALID")],
)
def test_cirrus_lambda_invalid_input_needs_the_dotted_type_name(
    judge: Any, class_name: str | None, state: str
) -> None:
    """How Cirrus treats a Lambda task raising InvalidInput: AWS' runtime reports
    ``type(exc).__name__`` ('InvalidInput'), which update-state does not count as invalid;
    only an exception class *named* 'stactask.exceptions.InvalidInput' (as post-batch
    raises for Batch) gets INVALID. nb2task.lambda_handler must raise such a class."""
    args = ["lambda-task-error", INVALID_INPUT, "bad payload"]
    if class_name:
        args += ["--class-name", class_name]
    verdict = judge(*args)
    assert verdict["state"] == state, verdict


def test_nb2task_lambda_handler_invalid_input_is_invalid_in_cirrus(
    judge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nb2task's Lambda handler on a payload stactask rejects: Cirrus must record INVALID."""
    module = pytest.importorskip("nb2task.lambda_function", reason="no Lambda handler yet")
    notebook = tmp_path / "minimal.ipynb"
    shutil.copy(NOTEBOOKS / "minimal.ipynb", notebook)
    # The image names its notebook in NB2TASK_NOTEBOOK (see nb2task/lambda_function.py).
    monkeypatch.setenv("NB2TASK_NOTEBOOK", str(notebook))
    for key in ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    event = json.loads(CIRRUS_FIXTURE.read_text())
    context = type("Context", (), {"aws_request_id": "test-request", "function_name": "nb2task"})()
    with pytest.raises(Exception) as raised:  # any class: its name is what matters
        module.lambda_handler(event, context)
    error_type = type(raised.value).__name__  # what AWS' runtime reports as errorType
    verdict = judge("classify-error", error_type, str(raised.value), "--input", CIRRUS_FIXTURE)
    assert verdict["state"] == "INVALID", (
        f"nb2task.lambda_handler raised {type(raised.value).__module__}."
        f"{type(raised.value).__qualname__}; Lambda reports errorType {error_type!r}, "
        f"which Cirrus records as {verdict['state']} (it wants one of "
        f"{verdict.get('invalid_exceptions')})"
    )
