"""AWS Lambda entry point: ``nb2task.lambda_handler(event, context)``.

The image sets ``NB2TASK_NOTEBOOK`` (the notebook's path) and optionally
``NB2TASK_TASK_NAME``. The event is a Cirrus payload or ``{"url": ...}``; the
return value is the output payload, or ``{"url": ...}`` when its JSON is over
Cirrus' limit (then written to ``s3://<bucket>/<prefix>/<uuid>.json``, bucket from
``NB2TASK_PAYLOAD_BUCKET`` or Cirrus' ``CIRRUS_PAYLOAD_BUCKET``, prefix from
``NB2TASK_OVERSIZED_PREFIX``, default ``tmp/oversized``).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from functools import cache
from typing import Any

# Cirrus' MAX_PAYLOAD_LENGTH: Step Functions' state limit, counted on escaped JSON.
MAX_PAYLOAD_LENGTH = 120_000
OVERSIZED_PREFIX = "tmp/oversized"
TIMEOUT_MARGIN_S = 20

# Lambda's filesystem is read-only but for /tmp; Jupyter and matplotlib write here.
# The same values as Dockerfile.base's ENV; these are for images built on another base.
WRITABLE_DIRS = {
    "HOME": "/tmp",
    "IPYTHONDIR": "/tmp/.ipython",
    "JUPYTER_CONFIG_DIR": "/tmp/.jupyter",
    "JUPYTER_DATA_DIR": "/tmp/.local/share/jupyter",
    "JUPYTER_RUNTIME_DIR": "/tmp/.local/share/jupyter/runtime",
    "MPLCONFIGDIR": "/tmp/.config/matplotlib",
}

logger = logging.getLogger("nb2task.lambda")


class _InvocationContext(logging.Filter):
    """Puts the Lambda request id and the payload id on every log record."""

    request_id = "-"
    payload_id = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        record.payload_id = self.payload_id
        return True


_context = _InvocationContext()


@cache
def _setup() -> type[Any]:
    """Once per container: writable dirs, logging, and the task class."""
    for name, path in WRITABLE_DIRS.items():
        os.environ.setdefault(name, path)
    root = logging.getLogger()
    root.setLevel(os.environ.get("NB2TASK_LOG_LEVEL", "INFO"))
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = logging.Formatter(
        "[%(levelname)s] %(aws_request_id)s %(payload_id)s %(name)s: %(message)s"
    )
    for handler in root.handlers:
        handler.addFilter(_context)
        handler.setFormatter(formatter)
    for name in ("botocore", "s3transfer", "urllib3", "fsspec", "aiobotocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # see cli._configure_logging

    from . import engine
    from .task import NotebookTask

    engine.launcher.keep_spare = True  # a warm container has the next kernel ready

    notebook = os.environ.get("NB2TASK_NOTEBOOK")
    if not notebook:
        from .errors import UsageError

        raise UsageError("NB2TASK_NOTEBOOK is not set: the image must name its notebook")
    return NotebookTask.for_notebook(notebook, os.environ.get("NB2TASK_TASK_NAME") or None)


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Run the notebook task on a Cirrus payload event and return the output payload."""
    from .errors import error_line, with_dotted_name

    _context.request_id = getattr(context, "aws_request_id", "-")
    try:
        task_class = _setup()
        from .payload import dereference

        # Inside the try: an unreadable {"url"} is InvalidInput, reported by dotted name.
        document = dereference(event)
        _context.payload_id = str(document.get("id", "-"))
        output: dict[str, Any] = task_class.handler(
            document, deliver=offload_if_oversized, upload=True, timeout=_time_left(context)
        )
        return output
    except Exception as err:
        logger.error(error_line(err))
        raise with_dotted_name(err) from err
    finally:
        _context.payload_id = "-"


def _time_left(context: Any) -> float | None:
    """Seconds the notebook may run: what Lambda grants, less a margin to report and
    upload the record, so a slow run ends in a clean error, not in Lambda's kill."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return max(1.0, float(remaining()) / 1000 - TIMEOUT_MARGIN_S)


def offload_if_oversized(output: dict[str, Any]) -> dict[str, Any]:
    """``output`` itself, or ``{"url": ...}`` of a copy on S3 when it is too long for Cirrus."""
    length = len(json.dumps(output))
    if length <= MAX_PAYLOAD_LENGTH:
        return output
    from .errors import Nb2TaskError
    from .payload import write_json

    bucket = os.environ.get("NB2TASK_PAYLOAD_BUCKET") or os.environ.get("CIRRUS_PAYLOAD_BUCKET")
    if not bucket:
        raise Nb2TaskError(
            f"the output payload is {length} characters, over Cirrus' {MAX_PAYLOAD_LENGTH}, "
            "and neither NB2TASK_PAYLOAD_BUCKET nor CIRRUS_PAYLOAD_BUCKET says where to put it"
        )
    prefix = os.environ.get("NB2TASK_OVERSIZED_PREFIX", OVERSIZED_PREFIX).strip("/")
    url = f"s3://{bucket}/{prefix}/{uuid.uuid4()}.json"
    write_json(output, url)
    logger.info("output payload of %d characters written to %s", length, url)
    return {"url": url}
