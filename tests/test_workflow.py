"""The Cirrus workflows ``nb2task build`` writes: FilmDrop definitions and state machines that a
real Amazon States Language validator (npm's asl-validator) accepts, as written and with
FilmDrop's variables filled in. They run on moto's Step Functions in
tests/containers/test_workflow_execution.py.

asl-validator is found at $NB2TASK_ASL_VALIDATOR, else in
$NB2TASK_TEST_CACHE/node/node_modules/.bin/ (.ci/run installs it there). Without it these
validations skip, unless NB2TASK_REQUIRE_ASL=1 (CI), which fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, run_cli, write_notebook

from nb2task.workflow import fill, variables

ARNS = {
    "tasks.ndvi.lambda.function_arn": "arn:aws:lambda:us-west-2:123456789012:function:fd-ndvi",
    "tasks.ndvi.batch.job_queue_arn": "arn:aws:batch:us-west-2:123456789012:job-queue/fd-ndvi",
    "tasks.ndvi.batch.job_definition_arn": (
        "arn:aws:batch:us-west-2:123456789012:job-definition/fd-ndvi:3"
    ),
    "tasks.pre-batch.lambda.function_arn": "arn:aws:lambda:us-west-2:123456789012:function:pre",
    "tasks.post-batch.lambda.function_arn": "arn:aws:lambda:us-west-2:123456789012:function:post",
}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("workflow") / "ctx"
    result = run_cli("build", REPO / "notebooks/ndvi.ipynb", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def asl_validator() -> str:
    cache = Path(os.environ.get("NB2TASK_TEST_CACHE") or Path.home() / ".cache/nb2task-tests")
    found = os.environ.get("NB2TASK_ASL_VALIDATOR") or str(
        cache / "node/node_modules/.bin/asl-validator"
    )
    if not Path(found).is_file():
        message = f"asl-validator not found at {found} (.ci/run installs it)"
        if os.environ.get("NB2TASK_REQUIRE_ASL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def validate(validator: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [validator, "--json-path", str(path)], capture_output=True, text=True, timeout=120
    )


def machine(context: Path, runtime: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (context / "workflows" / f"ndvi-{runtime}" / "state-machine.json").read_text()
    )
    return data


@pytest.mark.parametrize("runtime", ["lambda", "batch"])
def test_state_machines_are_valid_asl(
    context: Path, asl_validator: str, runtime: str, tmp_path: Path
) -> None:
    path = context / "workflows" / f"ndvi-{runtime}" / "state-machine.json"
    result = validate(asl_validator, path)
    assert result.returncode == 0, result.stdout + result.stderr
    # As deployed: FilmDrop's variables become ARNs (checked as ARNs by the validator).
    text = path.read_text()
    assert variables(text) <= set(ARNS)
    filled = tmp_path / "filled.json"
    filled.write_text(fill(text, ARNS))
    result = validate(asl_validator, filled)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "${" not in filled.read_text()


def test_the_validator_catches_mistakes(asl_validator: str, tmp_path: Path) -> None:
    """The validation above can fail: a transition to nowhere is rejected."""
    broken = {"StartAt": "a", "States": {"a": {"Type": "Pass", "Next": "nowhere"}}}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = validate(asl_validator, path)
    assert result.returncode == 1 and "MISSING_TRANSITION_TARGET" in result.stdout + result.stderr


def test_lambda_workflow(context: Path) -> None:
    states = machine(context, "lambda")["States"]
    task = states["ndvi"]
    assert task["Resource"] == "${tasks.ndvi.lambda.function_arn}" and task["End"] is True
    assert task["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                              "Next": "failure"}]  # fmt: skip
    assert task["Retry"][0]["ErrorEquals"] == ["Lambda.TooManyRequestsException", "Lambda.Unknown"]
    assert states["failure"] == {
        "Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause",
    }  # fmt: skip
    definition = yaml.safe_load((context / "workflows/ndvi-lambda/definition.yaml").read_text())
    assert definition == {
        "name": "ndvi-lambda",
        "state_machine_filepath": "workflows/ndvi-lambda/state-machine.json",
    }


def test_batch_workflow_is_cirrus_triad(context: Path) -> None:
    group = machine(context, "batch")["States"]["ndvi"]
    assert group["Type"] == "Parallel" and group["OutputPath"] == "$[0]"
    [branch] = group["Branches"]
    assert branch["StartAt"] == "ndvi-pre-batch"
    pre, job, post = (branch["States"][f"ndvi-{s}"] for s in ("pre-batch", "batch", "post-batch"))
    assert pre["Resource"] == "${tasks.pre-batch.lambda.function_arn}"
    assert pre["Next"] == "ndvi-batch"
    assert job["Resource"] == "arn:aws:states:::batch:submitJob.sync"
    assert job["Parameters"] == {
        "JobName": "ndvi",
        "JobQueue": "${tasks.ndvi.batch.job_queue_arn}",
        "JobDefinition": "${tasks.ndvi.batch.job_definition_arn}",
        "Parameters": {"url.$": "$.url", "url_out.$": "$.url_out"},
    }
    assert job["Retry"][0]["ErrorEquals"] == ["Batch.AWSBatchException"]
    assert job["Catch"][0] == {
        "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "ndvi-post-batch",
    }  # fmt: skip
    assert post["Resource"] == "${tasks.post-batch.lambda.function_arn}" and post["End"] is True
    # Invalid input is never retried; anything else is, three times, as Cirrus' docs say.
    no_retry, retry = group["Retry"]
    assert no_retry == {"ErrorEquals": ["stactask.exceptions.InvalidInput"], "MaxAttempts": 0}
    assert retry["ErrorEquals"] == ["States.ALL"] and retry["MaxAttempts"] == 3
    assert group["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                               "Next": "failure"}]  # fmt: skip


def test_only_enabled_runtimes_get_a_workflow(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "heavy.ipynb",
        'payload = "in.json"',
        "import nb2task\nnb2task.emit(nb2task.read_items(payload))",
        metadata={"lambda": False},
    )
    assert run_cli("build", notebook, "-o", tmp_path / "ctx").returncode == 0
    assert [p.name for p in (tmp_path / "ctx/workflows").iterdir()] == ["heavy-batch"]
    readme = (tmp_path / "ctx/README.md").read_text()
    assert "workflows/heavy-batch/" in readme and "workflows/heavy-lambda/" not in readme


def test_fill_names_what_is_missing() -> None:
    with pytest.raises(KeyError, match=r"tasks\.x\.lambda\.function_arn"):
        fill('{"Resource": "${tasks.x.lambda.function_arn}"}', {})
