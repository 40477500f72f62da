"""docker-lambda's contract, as moto's Lambda uses it: ``HANDLER EVENT_JSON`` runs the handler
once on the event and prints its result as JSON on the last line of stdout; a raised error
as ``{"errorType", "errorMessage"}``, with exit status 1 (as AWS' runtime reports it)."""

import importlib
import json
import os
import re
import sys
import types
import uuid

handler, event = sys.argv[1], json.loads(sys.argv[2])
# moto sends the function to http://host.docker.internal:PORT; the test says where moto is.
if os.environ.get("NB2TASK_TEST_ENDPOINT"):
    os.environ["AWS_ENDPOINT_URL"] = os.environ["NB2TASK_TEST_ENDPOINT"]
if os.environ.get("NB2TASK_NOTEBOOK"):
    os.environ["NB2TASK_NOTEBOOK"] = re.sub("^/opt/", "/srv/", os.environ["NB2TASK_NOTEBOOK"])
sys.path.insert(0, "/var/task")
context = types.SimpleNamespace(
    aws_request_id=str(uuid.uuid4()),
    function_name=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "function"),
    get_remaining_time_in_millis=lambda: 900_000,
)
real_stdout = sys.stdout
sys.stdout = sys.stderr  # only the result goes to stdout
module, _, name = handler.rpartition(".")
try:
    result = getattr(importlib.import_module(module), name)(event, context)
except Exception as error:  # noqa: BLE001 - reported as Lambda reports it
    print(
        json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)}),
        file=real_stdout,
        flush=True,
    )
    sys.exit(1)
print(json.dumps(result), file=real_stdout, flush=True)
