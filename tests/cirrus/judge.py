"""Judge nb2task's payloads and error lines with cirrus-geo's own code.

Run it with the Python 3.12 of the cirrus venv (tests/cirrus/conftest.py builds it). Every
command prints one JSON verdict as the last line of stdout; cirrus' and moto's logs go to
stderr. AWS is a moto server on 127.0.0.1 started by this process (AWS_ENDPOINT_URL), so
cirrus' Lambda functions run unchanged, boto3 clients and all.

  validate-payload FILE
      cirrus.lib.cirrus_payload.CirrusPayload(payload).validate(), and the same through
      cirrus.lib.payload_manager.PayloadManager (what every Cirrus Lambda wraps payloads in).

  batch-success OUTPUT_FILE [--input INPUT_FILE]
      Cirrus' path after a Batch task succeeded: the output payload is at the job's url_out
      in S3 → cirrus.lambda_functions.post_batch.lambda_handler → a Step Functions
      SUCCEEDED event → cirrus.lambda_functions.update_state.lambda_handler → the state DB
      (DynamoDB) says SUCCEEDED, the output payload is stored, its items are published (SNS).

  parse-batch-error LINE  |  parse-batch-error --log-file FILE   [--input INPUT_FILE]
                    [--max-event-bytes N]
      Cirrus' path after a Batch task failed: LINE (or every non-empty line of FILE) as the
      events of the job's CloudWatch Logs stream in /aws/batch/job (a line longer than
      CloudWatch's event limit split as the awslogs driver does) →
      post_batch.get_error_from_batch (the parse itself) and post_batch.lambda_handler, whose
      exception AWS' own Lambda runtime client (awslambdaric.bootstrap.build_fault_result)
      turns into the errorType/errorMessage Step Functions sees → a Step Functions FAILED
      event (Fail state with ErrorPath $.error.Error, CausePath $.error.Cause) →
      update_state.lambda_handler → the state DB says INVALID or FAILED.

  lambda-task-error DOTTED.EXCEPTION.CLASS MESSAGE [--class-name NAME] [--input INPUT_FILE]
      A Lambda task whose handler raises that exception (with __name__ set to NAME if
      given): awslambdaric's errorType, then update_state as above.

  classify-error ERROR_TYPE MESSAGE [--input INPUT_FILE]
      Only the last step: update_state on a workflow that failed with a Lambda errorType
      ERROR_TYPE (what AWS' runtime reports is type(exception).__name__).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"
PAYLOAD_BUCKET = "cirrus-payloads"
BATCH_BUCKET = "cirrus-batch"
STATE_TABLE = "cirrus-state"
WORKFLOW = "nb2task-judge"
# CloudWatch Logs: an event is at most 256 KiB including 26 bytes of overhead.
CLOUDWATCH_MAX_EVENT_BYTES = 262_144 - 26

# Keep the real stdout for the verdict; everything else written to fd 1 goes to stderr.
_VERDICT_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


def exception_fields(exc: BaseException) -> dict[str, str]:
    return {
        "error_type": type(exc).__name__,
        "error_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "error_message": str(exc),
    }


def cirrus_version() -> str:
    from importlib.metadata import version

    return version("cirrus-geo")


# --------------------------------------------------------------------------------- AWS


_AWS: dict[str, str] = {}


@contextlib.contextmanager
def moto_aws() -> Iterator[dict[str, str]]:
    """A moto server on 127.0.0.1 with what a Cirrus deployment has; one per process."""
    if not _AWS:
        _AWS.update(_start_aws())
    yield _AWS


def _empty_file() -> str:
    """An empty config file for botocore (not /dev/null: if anything ever replaced the
    device with a file, botocore would parse what is in it)."""
    fd, path = tempfile.mkstemp(prefix="judge-aws-", suffix=".ini")
    os.close(fd)
    atexit.register(os.unlink, path)
    return path


def _start_aws() -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith(("AWS_", "CIRRUS_"))]:
        del os.environ[key]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_CONFIG_FILE=_empty_file(),
        AWS_SHARED_CREDENTIALS_FILE=_empty_file(),
        AWS_EC2_METADATA_DISABLED="true",
    )
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    atexit.register(server.stop)
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"

    import boto3

    s3 = boto3.client("s3")
    for bucket in (PAYLOAD_BUCKET, BATCH_BUCKET):
        s3.create_bucket(Bucket=bucket)
    boto3.client("dynamodb").create_table(
        TableName=STATE_TABLE,
        KeySchema=[
            {"AttributeName": "collections_workflow", "KeyType": "HASH"},
            {"AttributeName": "itemids", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "collections_workflow", "AttributeType": "S"},
            {"AttributeName": "itemids", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="cirrus-publish")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="published-items")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    boto3.client("logs").create_log_group(logGroupName="/aws/batch/job")

    os.environ.update(
        CIRRUS_STATE_DB=STATE_TABLE,
        CIRRUS_PAYLOAD_BUCKET=PAYLOAD_BUCKET,
        CIRRUS_PUBLISH_TOPIC_ARN=topic,
        CIRRUS_BASE_WORKFLOW_ARN=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:",
        CIRRUS_LOG_LEVEL="WARNING",
    )
    return {"published_queue_url": queue_url}


def drain(queue_url: str) -> list[str]:
    """Receive and delete every message of the SQS queue; return their bodies."""
    import boto3

    sqs = boto3.client("sqs")
    bodies: list[str] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def lambda_context(name: str) -> SimpleNamespace:
    return SimpleNamespace(
        aws_request_id=str(uuid.uuid4()),
        function_name=name,
        invoked_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
    )


def lambda_fault(exc_info: Any) -> dict[str, Any]:
    """What AWS' Lambda runtime reports for an exception a handler raised."""
    from awslambdaric.bootstrap import build_fault_result

    fault = build_fault_result(exc_info, None)
    return {"errorType": fault["errorType"], "errorMessage": fault["errorMessage"]}


def sfn_status_event(
    status: str,
    input_payload: dict[str, Any],
    output: Any = None,
    error: str | None = None,
    cause: str | None = None,
) -> dict[str, Any]:
    """An EventBridge 'Step Functions Execution Status Change' event."""
    name = str(uuid.uuid4())
    machine = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{WORKFLOW}"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": ACCOUNT,
        "region": REGION,
        "resources": [f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{WORKFLOW}:{name}"],
        "detail": {
            "executionArn": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{WORKFLOW}:{name}",
            "stateMachineArn": machine,
            "name": name,
            "status": status,
            "startDate": int(time.time() * 1000) - 5000,
            "stopDate": int(time.time() * 1000),
            "input": json.dumps(input_payload),
            "inputDetails": {"included": True},
            "output": None if output is None else json.dumps(output),
            "outputDetails": {"included": output is not None},
            "error": error,
            "cause": cause,
        },
    }


def forget_state(payload_id: str) -> None:
    """Remove the payload's state DB record: each judgement starts from none."""
    from cirrus.lib.statedb import StateDB

    StateDB().delete_item(payload_id)


def state_of(payload_id: str) -> dict[str, Any]:
    from cirrus.lib.statedb import StateDB

    db = StateDB()
    try:
        item = db.get_dbitem(payload_id)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"state": None, "state_error": repr(exc)}
    return {
        "state": item["state_updated"].split("_")[0],
        "last_error": item.get("last_error"),
    }


def update_state_failed(input_payload: dict[str, Any], fault: dict[str, Any]) -> dict[str, Any]:
    """update-state on a FAILED execution whose error is the Lambda fault ``fault``."""
    from cirrus.lambda_functions import update_state

    event = sfn_status_event(
        "FAILED", input_payload, error=fault["errorType"], cause=json.dumps(fault)
    )
    forget_state(input_payload["id"])
    try:
        update_state.lambda_handler(event, lambda_context("update-state"))
    except Exception as exc:  # noqa: BLE001
        return {"update_state_error": exception_fields(exc), **state_of(input_payload["id"])}
    return {
        "invalid_exceptions": list(update_state.INVALID_EXCEPTIONS),
        **state_of(input_payload["id"]),
    }


def load_json(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def default_input() -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "id": f"judge-collection/workflow-{WORKFLOW}/judge-item",
        "features": [
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": "judge-item",
                "collection": "judge-collection",
                "geometry": {"type": "Point", "coordinates": [0.0, 0.0]},
                "bbox": [0.0, 0.0, 0.0, 0.0],
                "properties": {"datetime": "2024-01-01T00:00:00Z"},
                "links": [],
                "assets": {},
            }
        ],
        "process": [{"workflow": WORKFLOW, "upload_options": {}, "tasks": {}}],
    }


# ---------------------------------------------------------------------------- commands


def validate_payload(args: argparse.Namespace) -> dict[str, Any]:
    from cirrus.lib.cirrus_payload import CirrusPayload

    document = load_json(args.file)
    result: dict[str, Any] = {"file": args.file}
    try:
        CirrusPayload(document).validate()
    except Exception as exc:  # noqa: BLE001
        return {
            **result,
            "valid": False,
            "check": "CirrusPayload.validate",
            **exception_fields(exc),
        }
    from cirrus.lib.payload_bucket import PayloadBucket
    from cirrus.lib.payload_manager import MAX_PAYLOAD_LENGTH, PayloadManager

    try:
        # The bucket is used only to offload an oversized payload; nothing is uploaded here.
        manager = PayloadManager(document, payload_bucket=PayloadBucket(PAYLOAD_BUCKET))
        length = manager.calculate_payload_length()
    except Exception as exc:  # noqa: BLE001
        return {**result, "valid": False, "check": "PayloadManager", **exception_fields(exc)}
    return {
        **result,
        "valid": True,
        "payload_id": document.get("id"),
        "escaped_length": length,
        "max_payload_length": MAX_PAYLOAD_LENGTH,
    }


def batch_success(args: argparse.Namespace) -> dict[str, Any]:
    output_payload = load_json(args.file)
    input_payload = load_json(args.input) if args.input else output_payload
    with moto_aws() as extra:
        import boto3
        from cirrus.lambda_functions import post_batch, update_state

        prefix = f"s3://{BATCH_BUCKET}/{uuid.uuid4()}"
        boto3.client("s3").put_object(
            Bucket=BATCH_BUCKET,
            Key=prefix.split("/", 3)[3] + "/output.json",
            Body=json.dumps(output_payload).encode(),
        )
        # The Batch job's result, as Step Functions hands it to post-batch.
        event = {"Parameters": {"url": f"{prefix}/input.json", "url_out": f"{prefix}/output.json"}}
        result: dict[str, Any] = {"file": args.file}
        try:
            returned = post_batch.lambda_handler(event, lambda_context("post-batch"))
        except Exception as exc:  # noqa: BLE001
            return {
                **result,
                "valid": False,
                "step": "post_batch.lambda_handler",
                **exception_fields(exc),
                "traceback": traceback.format_exc(),
            }
        result["post_batch_returned"] = "url" if set(returned) == {"url"} else "payload"

        event = sfn_status_event("SUCCEEDED", input_payload, output=returned)
        forget_state(input_payload["id"])
        drain(extra["published_queue_url"])  # what earlier judgements published
        try:
            update_state.lambda_handler(event, lambda_context("update-state"))
        except Exception as exc:  # noqa: BLE001
            return {
                **result,
                "valid": False,
                "step": "update_state.lambda_handler",
                **exception_fields(exc),
                "traceback": traceback.format_exc(),
            }
        result.update(state_of(input_payload["id"]))

        s3 = boto3.client("s3")
        stored = [
            o["Key"]
            for o in s3.list_objects_v2(Bucket=PAYLOAD_BUCKET).get("Contents", [])
            if o["Key"].endswith(f"/{event['detail']['name']}/output.json")
        ]
        result["stored_output_payloads"] = stored
        if stored:
            body = s3.get_object(Bucket=PAYLOAD_BUCKET, Key=stored[0])["Body"].read()
            result["stored_output_equals_input_file"] = json.loads(body) == output_payload

        published = [
            json.loads(json.loads(body).get("Message", "{}")).get("id")
            for body in drain(extra["published_queue_url"])
        ]
        result["published_item_ids"] = published
        result["valid"] = result.get("state") == "SUCCEEDED"
        return result


def parse_batch_error(args: argparse.Namespace) -> dict[str, Any]:
    if args.log_file:
        lines = Path(args.log_file).read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        lines = ["INFO nb2task: a line logged before the failure", args.line]
    # Batch's awslogs log driver sends one CloudWatch Logs event per line; an event cannot be
    # empty nor longer than CloudWatch's limit, so the driver splits longer lines.
    messages = []
    for line in lines:
        if not line.strip():
            continue
        data = line.encode("utf-8")
        for start in range(0, len(data), args.max_event_bytes):
            messages.append(data[start : start + args.max_event_bytes].decode("utf-8", "ignore"))
    input_payload = load_json(args.input) if args.input else default_input()

    with moto_aws():
        import boto3
        from cirrus.lambda_functions import post_batch

        logs = boto3.client("logs")
        stream = f"nb2task-judge/default/{uuid.uuid4().hex}"
        logs.create_log_stream(logGroupName=post_batch.BATCH_LOG_GROUP, logStreamName=stream)
        now = int(time.time() * 1000) - len(messages)
        for start in range(0, len(messages), 5000):
            chunk = messages[start : start + 5000]
            logs.put_log_events(
                logGroupName=post_batch.BATCH_LOG_GROUP,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": now + start + i, "message": m} for i, m in enumerate(chunk)
                ],
            )

        result: dict[str, Any] = {
            "last_event": messages[-1] if messages else None,
            "error_regex": post_batch.ERROR_REGEX.pattern,
        }
        try:
            parsed = post_batch.get_error_from_batch(post_batch.logger, stream)
        except Exception as exc:  # noqa: BLE001
            return {**result, "get_error_from_batch_error": exception_fields(exc)}
        result["error_type"], result["error_message"] = parsed

        # post-batch as Step Functions calls it after the Batch job failed.
        job = {
            "JobName": "nb2task-judge",
            "Status": "FAILED",
            "StatusReason": "Essential container in task exited",
            "Attempts": [
                {
                    "Container": {"ExitCode": args.exit_code, "LogStreamName": stream},
                    "StatusReason": "Essential container in task exited",
                }
            ],
            "Container": {"ExitCode": args.exit_code, "LogStreamName": stream},
        }
        event = {
            "url": f"s3://{BATCH_BUCKET}/x/input.json",
            "url_out": f"s3://{BATCH_BUCKET}/x/output.json",
            "error": {"Error": "States.TaskFailed", "Cause": json.dumps(job)},
        }
        try:
            post_batch.lambda_handler(event, lambda_context("post-batch"))
        except Exception:  # noqa: BLE001 - post-batch always raises on a failed job
            fault = lambda_fault(sys.exc_info())
        else:
            return {**result, "post_batch_error": "post_batch.lambda_handler did not raise"}
        result["lambda_fault"] = fault
        result.update(update_state_failed(input_payload, fault))
        return result


def lambda_task_error(args: argparse.Namespace) -> dict[str, Any]:
    module_name, _, class_name = args.exception.rpartition(".")
    exc_class = getattr(importlib.import_module(module_name), class_name)
    if args.class_name:
        exc_class = type(args.class_name, (exc_class,), {})
    input_payload = load_json(args.input) if args.input else default_input()
    with moto_aws():

        def handler(event: Any, context: Any) -> Any:
            raise exc_class(args.message)

        try:
            handler(input_payload, lambda_context("task"))
        except Exception:  # noqa: BLE001
            fault = lambda_fault(sys.exc_info())
        return {
            "error_type": fault["errorType"],
            "error_message": fault["errorMessage"],
            "lambda_fault": fault,
            **update_state_failed(input_payload, fault),
        }


def classify_error(args: argparse.Namespace) -> dict[str, Any]:
    input_payload = load_json(args.input) if args.input else default_input()
    with moto_aws():
        fault = {"errorType": args.error_type, "errorMessage": args.message}
        return {"lambda_fault": fault, **update_state_failed(input_payload, fault)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="judge.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("validate-payload")
    p.add_argument("file")
    p.set_defaults(func=validate_payload)
    p = commands.add_parser("batch-success")
    p.add_argument("file")
    p.add_argument("--input")
    p.set_defaults(func=batch_success)
    p = commands.add_parser("parse-batch-error")
    p.add_argument("line", nargs="?")
    p.add_argument("--log-file")
    p.add_argument("--input")
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--max-event-bytes", type=int, default=CLOUDWATCH_MAX_EVENT_BYTES)
    p.set_defaults(func=parse_batch_error)
    p = commands.add_parser("lambda-task-error")
    p.add_argument("exception")
    p.add_argument("message")
    p.add_argument("--class-name")
    p.add_argument("--input")
    p.set_defaults(func=lambda_task_error)
    p = commands.add_parser("classify-error")
    p.add_argument("error_type")
    p.add_argument("message")
    p.add_argument("--input")
    p.set_defaults(func=classify_error)
    commands.add_parser(
        "serve", help="read one JSON array of arguments per line; answer one verdict per line"
    )
    return parser


def judge(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    args = parser.parse_args(argv)
    if args.command == "parse-batch-error" and (args.line is None) == (args.log_file is None):
        parser.error("parse-batch-error takes a LINE or --log-file, not both")
    result = args.func(args)
    result["cirrus_geo"] = cirrus_version()
    return result


def answer(result: dict[str, Any]) -> None:
    _VERDICT_OUT.write(json.dumps(result, default=str) + "\n")
    _VERDICT_OUT.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["serve"]:
        answer(judge(parser, argv))
        return 0
    # Serve: imports, moto and Cirrus' clients are paid for once per test session.
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = judge(parser, json.loads(line))
        except SystemExit:
            result = {"judge_error": f"bad arguments: {line.strip()}"}
        except Exception:  # noqa: BLE001 - the session goes on; the test sees the error
            result = {"judge_error": traceback.format_exc()}
        answer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
