"""Following a submission's Batch jobs until they end: their states and durations, and for
each failed job the last line of its CloudWatch log, the line Cirrus' post-batch step
reads (``dotted.ErrorName: message``). A job that succeeded counts only once its output
payload is in S3.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .redact import redact
from .staging import JobRow
from .submit import Submission, aws_client, exists
from .tally import FAILED, INVALID, SUCCEEDED, Progress

logger = logging.getLogger(__name__)

LOG_GROUP = "/aws/batch/job"  # where Batch's awslogs driver writes by default
DESCRIBE_MAX = 100  # job ids per DescribeJobs call
INVALID_LINE = "stactask.exceptions.InvalidInput"
UNKNOWN_ERROR = "UnknownError"  # Cirrus' post-batch name for a failure without a log line


def follow(
    submission: Submission,
    *,
    wait: bool = True,
    poll: float = 5.0,
    on_change: Callable[[], None] | None = None,
) -> None:
    """Bring the submission's rows up to date; with ``wait``, until every job ended.
    Progress shows meanwhile; ``on_change`` runs whenever a row changed."""
    batch = aws_client("batch", submission.region)
    logs = aws_client("logs", submission.region)
    progress = Progress(submission.rows)
    try:
        while True:
            if refresh(submission.rows, batch, logs) and on_change is not None:
                on_change()
            progress.update()
            if not wait or all(row.done or not row.job_id for row in submission.rows):
                return
            deadline = time.monotonic() + poll
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                progress.tick()
    finally:
        progress.close()


def refresh(rows: list[JobRow], batch: Any, logs: Any) -> bool:
    """Describe the jobs of the rows still under way; whether any row changed."""
    live = [row for row in rows if row.job_id and not row.done]
    changed = False
    for start in range(0, len(live), DESCRIBE_MAX):
        chunk = live[start : start + DESCRIBE_MAX]
        described = batch.describe_jobs(jobs=[row.job_id for row in chunk])["jobs"]
        jobs = {job["jobId"]: job for job in described}
        for row in chunk:
            before = (row.state, row.error)
            job = jobs.get(row.job_id or "")
            if job is not None:
                update(row, job, logs)
            else:
                forgotten(row)
            changed = changed or (row.state, row.error) != before
    return changed


def forgotten(row: JobRow) -> None:
    """A job Batch no longer describes (it keeps ended jobs for about a week): done if
    its output is there, else failed, with no way to learn why."""
    if row.url_out and exists(row.url_out):
        row.output, row.state = row.url_out, SUCCEEDED
        return
    row.error = (
        f"{UNKNOWN_ERROR}: AWS Batch no longer knows job {row.job_id}, and it left no output"
    )
    row.state = FAILED


def update(row: JobRow, job: dict[str, Any], logs: Any) -> None:
    """Set the row from its described job (and, if it failed, its last log line)."""
    status = job["status"]
    started, stopped = job.get("startedAt"), job.get("stoppedAt")
    if started and stopped:
        row.seconds = max(0.0, (stopped - started) / 1000)
    attempts = job.get("attempts") or [{}]
    container = job.get("container") or attempts[-1].get("container") or {}
    row.log_stream = container.get("logStreamName") or row.log_stream
    if status == SUCCEEDED:
        if row.url_out and exists(row.url_out):
            row.output = row.url_out
        else:
            row.error = f"{UNKNOWN_ERROR}: the job succeeded but wrote no output at {row.url_out}"
            status = FAILED
    elif status == FAILED:
        line = last_log_line(logs, row.log_stream) if row.log_stream else None
        row.error = line or (
            f"{UNKNOWN_ERROR}: the job failed before its log said why "
            f"(status reason: {job.get('statusReason')}; "
            f"container reason: {container.get('reason')})"
        )
        status = INVALID if row.error.startswith(f"{INVALID_LINE}:") else FAILED
    if row.error:
        # Batch's reasons may span lines; the summary and the table keep one line each,
        # with this machine's secrets out of them as out of every error line.
        row.error = redact(" ".join(row.error.split()))
    row.state = status  # last: the row is complete when its state is final


def last_log_line(logs: Any, stream: str) -> str | None:
    """The last line of a job's log stream (what Cirrus' post-batch step parses)."""
    from botocore.exceptions import ClientError

    try:
        events = logs.get_log_events(
            logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=False, limit=1
        )["events"]
    except ClientError as err:
        logger.warning("cannot read log stream %s: %s", stream, err)
        return None
    return str(events[-1]["message"]).strip() if events else None
