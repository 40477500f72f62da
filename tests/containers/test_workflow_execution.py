"""The Cirrus workflows ``nb2task build`` writes, executed by moto's Step Functions with real
functions and jobs behind them: the task's Lambda handler (moto's Lambda runs it in a
container of the task's own image), stand-ins for Cirrus' pre-batch and post-batch Lambda
functions, and the task's Batch image (moto's Batch runs it on our daemon).

moto 5.2.5 leaves the Batch integration's parameters and results un-normalised, so
``batch:submitJob.sync`` cannot run as AWS runs it; the moto server here fixes that one
thing (tests/containers/moto_sfn.py). The state machines are the generated ones, with
FilmDrop's variables filled in as FilmDrop deploys them.
"""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import images
import pytest
from images import REPORT, TaskImages
from support import (
    AWS_REGION,
    aws_client,
    create_job_queue,
    get_json,
    make_payload,
    register_job_definition,
    sample_item,
)

from nb2task.workflow import fill

pytestmark = pytest.mark.container

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "moto-lambda"  # the runtime image moto's Lambda runs zip functions in
BUCKET = "nb2task-workflows"
LAMBDA_IMAGE = "localhost/nb2task-moto-lambda:test"


@pytest.fixture(scope="module")
def lambda_runtime(failing_task: TaskImages) -> str:
    """The image moto's Lambda runs functions in (FROM the task's Lambda image), and the
    ``busybox`` moto copies function code with (our Debian image has ``sleep``)."""
    images.build_image(
        STANDIN, STANDIN / "Dockerfile", LAMBDA_IMAGE, {"TASK_IMAGE": failing_task.lambda_image}
    )
    images.docker("tag", images.DEBIAN_REF, "busybox:latest")
    return LAMBDA_IMAGE


@pytest.fixture(scope="module")
def moto_sfn(
    docker_host: str, lambda_runtime: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A moto server that executes state machines, with Lambda and Batch on our daemon."""
    log = tmp_path_factory.mktemp("moto-sfn") / "moto_server.log"
    command = [sys.executable, str(HERE / "moto_sfn.py")]
    with images.moto_server(
        docker_host, log, command, MOTO_DOCKER_LAMBDA_IMAGE=lambda_runtime
    ) as url:
        request = urllib.request.Request(
            f"{url}/moto-api/config",
            data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        aws_client("s3", url).create_bucket(Bucket=BUCKET)
        yield url


def function(endpoint: str, name: str, handler: str) -> str:
    """A zip function on moto's Lambda (the stand-ins' module inside); its ARN."""
    iam = aws_client("iam", endpoint)
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.write(STANDIN / "cirrus_batch.py", "cirrus_batch.py")
    variables = {
        "NB2TASK_TEST_ENDPOINT": endpoint,
        "CIRRUS_PAYLOAD_BUCKET": BUCKET,
        "AWS_DEFAULT_REGION": AWS_REGION,  # moto's Lambda sets none
    }
    arn: str = aws_client("lambda", endpoint).create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role,
        Handler=handler,
        Code={"ZipFile": code.getvalue()},
        Timeout=300,
        MemorySize=1024,
        Environment={"Variables": variables},
    )["FunctionArn"]
    return arn


def state_machine(endpoint: str, task: TaskImages, runtime: str, values: dict[str, str]) -> str:
    """The generated workflow's state machine, filled in and created; its ARN."""
    folder = task.context / "workflows" / f"{task.name}-{runtime}"
    definition = fill((folder / "state-machine.json").read_text(), values)
    iam = aws_client("iam", endpoint)
    role = iam.create_role(RoleName=f"{runtime}-sfn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    arn: str = aws_client("stepfunctions", endpoint).create_state_machine(
        name=f"{task.name}-{runtime}", definition=definition, roleArn=role
    )["stateMachineArn"]
    return arn


def execute(endpoint: str, machine: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run the state machine on a payload to its end; its description and history."""
    sfn = aws_client("stepfunctions", endpoint)
    # A name: moto's engine names every unnamed execution "None" (a second one clashes).
    execution = sfn.start_execution(
        stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps(payload)
    )
    arn = execution["executionArn"]
    deadline = time.monotonic() + 240
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:  # the history's end says where it is stuck
            history = sfn.get_execution_history(executionArn=arn)["events"]
            raise AssertionError(json.dumps(history[-4:], default=str, indent=1))
        time.sleep(0.5)
    return {**described, "history": sfn.get_execution_history(executionArn=arn)["events"]}


def failing_payload(mode: str) -> dict[str, Any]:
    payload = make_payload(
        features=[sample_item(f"scene-{mode}")],
        tasks={"failing": {"mode": mode}},
        upload_options={"path_template": f"s3://{BUCKET}/runs/${{id}}/"},
    )
    payload["id"] = f"test-collection/workflow-failing/scene-{mode}"
    return payload


def entered(history: list[dict[str, Any]]) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")
    ]


def exited(history: list[dict[str, Any]], state: str) -> Any:
    """The output of a state, from the execution's history."""
    details = [
        e["stateExitedEventDetails"]
        for e in history
        if e["type"].endswith("StateExited") and e["stateExitedEventDetails"]["name"] == state
    ]
    return json.loads(details[-1]["output"])


def test_lambda_workflow_runs_the_task_on_moto(moto_sfn: str, failing_task: TaskImages) -> None:
    endpoint = moto_sfn
    task_function = function(endpoint, "failing", "nb2task.lambda_handler")
    machine = state_machine(
        endpoint, failing_task, "lambda", {"tasks.failing.lambda.function_arn": task_function}
    )
    t0 = time.monotonic()
    done = execute(endpoint, machine, failing_payload("ok"))
    REPORT["workflow (lambda) on moto Step Functions"] = f"{time.monotonic() - t0:.1f} s"
    assert done["status"] == "SUCCEEDED", done["history"][-3:]
    [item] = json.loads(done["output"])["features"]
    assert item["id"] == "scene-ok" and item["properties"]["mode"] == "ok"
    assert entered(done["history"]) == ["failing"]

    # Invalid input: the Task's Catch sends it to the Fail state, with Lambda's errorType
    # and message as the execution's error and cause (what Cirrus' update-state reads).
    done = execute(endpoint, machine, failing_payload("invalid"))
    assert done["status"] == "FAILED"
    assert done["error"] == "stactask.exceptions.InvalidInput"
    assert json.loads(done["cause"])["errorMessage"].startswith("no usable band in scene-invalid")
    assert entered(done["history"]) == ["failing", "failure"]


def test_batch_workflow_runs_the_triad_on_moto(moto_sfn: str, failing_task: TaskImages) -> None:
    endpoint = moto_sfn
    queue = create_job_queue(endpoint, "nb2task-workflow-queue")
    job_definition = register_job_definition(
        aws_client("batch", endpoint), failing_task.definition, endpoint
    )
    values = {
        "tasks.pre-batch.lambda.function_arn": function(
            endpoint, "pre-batch", "cirrus_batch.pre_batch"
        ),
        "tasks.post-batch.lambda.function_arn": function(
            endpoint, "post-batch", "cirrus_batch.post_batch"
        ),
        "tasks.failing.batch.job_queue_arn": queue,
        "tasks.failing.batch.job_definition_arn": job_definition,
    }
    machine = state_machine(endpoint, failing_task, "batch", values)
    t0 = time.monotonic()
    done = execute(endpoint, machine, failing_payload("ok"))
    REPORT["workflow (batch triad) on moto Step Functions"] = f"{time.monotonic() - t0:.1f} s"
    assert done["status"] == "SUCCEEDED", done["history"][-3:]
    output = json.loads(done["output"])
    [item] = output["features"]
    assert item["id"] == "scene-ok" and item["properties"]["mode"] == "ok"
    assert entered(done["history"]) == [
        "failing", "failing-pre-batch", "failing-batch", "failing-post-batch",
    ]  # fmt: skip
    # pre-batch staged the payload in Cirrus' layout; the job wrote the output at url_out.
    staged = exited(done["history"], "failing-pre-batch")
    assert staged["url"].startswith(f"s3://{BUCKET}/cirrus/tmp/batch/{output['id']}/")
    assert get_json(aws_client("s3", endpoint), staged["url_out"]) == output

    # Invalid input: the job fails, post-batch raises the task's own error name from the
    # job's last log line, and the Parallel state does not retry it: straight to failure.
    done = execute(endpoint, machine, failing_payload("invalid"))
    assert done["status"] == "FAILED", done["history"][-3:]
    assert done["error"] == "stactask.exceptions.InvalidInput"
    assert "no usable band in scene-invalid" in done["cause"]
    assert entered(done["history"]) == [
        "failing", "failing-pre-batch", "failing-batch", "failing-post-batch", "failure",
    ]  # fmt: skip
