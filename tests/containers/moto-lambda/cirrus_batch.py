"""TEST STAND-INS for Cirrus' built-in pre-batch and post-batch Lambda functions (cirrus-geo
2.0 needs Python 3.12; this image has 3.11), doing what they do for a workflow's Batch step:

- ``pre_batch``: put the payload at ``s3://$CIRRUS_PAYLOAD_BUCKET/<root>/tmp/batch/<id>/
  <uuid>.json``, return ``{"url", "url_out"}`` (``url_out``: the key ending ``_out.json``);
- ``post_batch``: after a job that succeeded (the ``batch:submitJob.sync`` result, whose
  ``Parameters.url_out`` names the output), return the output payload; after a failure
  (``error.Cause``: the described job), raise an exception named as the last line of the
  job's CloudWatch log says (``dotted.Name: message``).
"""

import json
import os
import re
import uuid

import boto3

ERROR_LINE = re.compile(r"^(?:([.\w]+):)?\s*(.*)")


def _s3_json(url):
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def pre_batch(event, context):
    bucket = os.environ["CIRRUS_PAYLOAD_BUCKET"]
    root = os.environ.get("CIRRUS_PAYLOAD_ROOT_PREFIX", "cirrus")
    key = f"{root}/tmp/batch/{event['id']}/{uuid.uuid1()}.json"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(event).encode())
    url = f"s3://{bucket}/{key}"
    return {"url": url, "url_out": url.replace(".json", "_out.json")}


def post_batch(event, context):
    if "error" not in event:
        return _s3_json(event["Parameters"]["url_out"])
    cause = json.loads(event["error"]["Cause"])
    stream = cause["Attempts"][-1]["Container"]["LogStreamName"]
    events = boto3.client("logs").get_log_events(
        logGroupName="/aws/batch/job", logStreamName=stream
    )["events"]
    name, message = ERROR_LINE.match(events[-1]["message"]).groups()
    raise type(name or "UnknownError", (Exception,), {})(message)
