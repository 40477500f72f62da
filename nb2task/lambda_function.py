"""AWS Lambda entry point: ``nb2task.lambda_handler(event, context)``.

The image sets ``NB2TASK_NOTEBOOK`` (the notebook's path) and optionally
``NB2TASK_TASK_NAME``. The event is a Cirrus payload or ``{"url": ...}``; the
return value is the output payload, or ``{"url": ...}`` when its JSON is over
Cirrus' limit (see ``nb2task.publish.ReturnOutput``). One runner per container: its
executor stays warm between invocations. It is set up when Lambda imports this module
(its init phase), so the engine warms up before the first event arrives; a setup
error is reported by the first invocation, with its dotted name.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import cache
from typing import Any

from . import settings

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
def _runner() -> Any:
    """Once per container: writable dirs, logging, and the warm runner."""
    for name, path in WRITABLE_DIRS.items():
        os.environ.setdefault(name, path)
    from . import logs
    from .runner import retry_storage_errors

    retry_storage_errors()
    current = settings.current()
    logs.configure(
        current.log_level,
        "[%(levelname)s] %(aws_request_id)s %(payload_id)s %(name)s: %(message)s",
        _context,
    )
    notebook = current.notebook
    if not notebook:
        from .errors import UsageError

        raise UsageError("NB2TASK_NOTEBOOK is not set: the image must name its notebook")
    from . import validation
    from .runner import Runner, RunOptions

    options = RunOptions(
        task_name=current.task_name,
        engine=current.engine,
        local_indirection=False,  # an event's {"url"} must point at s3://
        log_output=current.log_output,
    )
    runner = Runner(notebook, options)
    if hasattr(runner.executor, "keep_spare"):
        runner.executor.keep_spare = True  # kernel engine: the next kernel boots meanwhile
    validation.prepare()  # compile the item schema while no payload waits
    return runner


def _init() -> None:
    """Set up at import, in Lambda's init phase (where the image names its notebook)."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda, not in a test's import
        # _runner is cached only when it succeeds: an error comes back with the first event.
        with contextlib.suppress(Exception):
            _runner()


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Run the notebook task on a Cirrus payload event and return the output payload."""
    from .errors import error_line, with_dotted_name

    _context.request_id = getattr(context, "aws_request_id", "-")
    _context.payload_id = str(event.get("id", "-")) if isinstance(event, dict) else "-"
    try:
        settings.current()  # a bad setting is named by every invocation, not only the first
        check_event(event)
        runner = _runner()
        from .publish import ReturnOutput

        options = runner.options.replace(timeout=_time_left(context))
        output: dict[str, Any] = runner.run(event, ReturnOutput(), options=options)
        return output
    except Exception as err:
        logger.error(error_line(err))
        raise with_dotted_name(err) from err
    finally:
        _context.payload_id = "-"


def check_event(event: Any) -> None:
    """InvalidInput unless ``event`` is a JSON object (a payload, or ``{"url": "s3://..."}``):
    a bare string would be read as a local path, and None as stdin."""
    if not isinstance(event, dict):
        from .errors import invalid_input

        raise invalid_input(
            f'a Lambda event must be a JSON object (a payload or {{"url": "s3://..."}}), '
            f"not {'null' if event is None else type(event).__name__}"
        )


def _time_left(context: Any) -> float | None:
    """Seconds the notebook may run: what Lambda grants, less a margin to report and
    upload the record, so a slow run ends in a clean error, not in Lambda's kill."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return max(1.0, float(remaining()) / 1000 - TIMEOUT_MARGIN_S)


_init()
