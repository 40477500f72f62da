"""``nb2task submit``: many payloads to AWS Batch, and the record ``nb2task status`` reads.

Payloads are staged as Cirrus' pre-batch step stages them (``nb2task.staging``), then
submitted: one job per payload (parameters ``url`` and ``url_out``, as Cirrus submits
it), or one array job for many, whose children find their payload in a manifest by
their index (``nb2task.manifest``). The ``Submission`` record (task, queue, job
definition, one row per payload with its job) is kept as JSON on disk and beside the
staged payloads in S3; ``nb2task.follow`` brings it up to date.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import manifest
from . import payload as payload_io
from .errors import UsageError
from .staging import RECORDS_SEGMENT, STAGED, JobRow, PayloadBucket
from .tally import FAILED, INVALID, REJECTED, SKIPPED, summary

if TYPE_CHECKING:
    from .task import NotebookTask

logger = logging.getLogger(__name__)

VERSION = 1
SUBMITTED = "SUBMITTED"
MAX_ARRAY_SIZE = 10_000  # AWS Batch's limit for one array job
MIN_TIMEOUT_S = 60  # AWS Batch's minimum attemptDurationSeconds
JOB_NAME_MAX = 128
RECORDS = ("tmp", "batch", RECORDS_SEGMENT)  # under the root prefix: <task>/<submission>.json
LOCAL_RECORDS = Path("nb2task-submissions")
IN_FLIGHT = frozenset({SUBMITTED, "PENDING", "RUNNABLE", "STARTING", "RUNNING"})


@dataclass(frozen=True)
class Resources:
    """Per-submission overrides of the job definition's resources; None keeps its value."""

    vcpu: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    timeout_seconds: int | None = None
    retry_attempts: int | None = None

    def requirements(self) -> list[dict[str, str]]:
        """containerOverrides.resourceRequirements."""
        wanted = (("VCPU", self.vcpu), ("MEMORY", self.memory_mb), ("GPU", self.gpus))
        return [{"type": kind, "value": f"{value:g}"} for kind, value in wanted if value]


@dataclass(frozen=True)
class SubmitOptions:
    """What ``nb2task submit`` was asked."""

    job_queue: str
    bucket: PayloadBucket
    job_definition: str | None = None  # a name, name:revision or ARN; with register: its name
    register: bool = False
    image: str | None = None
    job_role: str | None = None
    array: bool = True  # one array job for two payloads or more
    resume: bool = False
    retry_failed: bool = False
    resources: Resources = Resources()
    environment: tuple[tuple[str, str], ...] = ()
    check_schema: bool = True  # the STAC schema of the payloads' items
    task_name: str | None = None


@dataclass(frozen=True)
class TaskSource:
    """The task to submit: a notebook, or an ``nb2task build`` context (its cleaned
    notebook and its FilmDrop ``definition.yaml``)."""

    notebook: Path
    definition: dict[str, Any] | None = None

    @classmethod
    def at(cls, path: Path) -> TaskSource:
        """The notebook at ``path``, or the context in the folder ``path``."""
        if not path.is_dir():
            return cls(path)
        from . import safe_yaml
        from .notebook import TASK_NAME

        definition_file = path / "definition.yaml"
        if not definition_file.is_file():
            raise UsageError(f"{path} is a folder but not an nb2task build context")
        try:
            text = definition_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {definition_file}: {err}") from None
        definition = safe_yaml.load(text, str(definition_file))
        if not isinstance(definition, dict):
            raise UsageError(f"{definition_file} is not a mapping")
        name = definition.get("name")
        # The name becomes a file name below: the task-name rule keeps it in the context.
        if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
            raise UsageError(f"{definition_file}: 'name' must be a task name, not {name!r:.80}")
        notebook = path / "notebook" / f"{name}.ipynb"
        if not notebook.is_file():
            raise UsageError(f"build context {path} has no notebook/{notebook.name}")
        return cls(notebook, definition)


@dataclass
class Submission:
    """Payloads submitted together, with their jobs: what ``status`` follows."""

    id: str
    task: str
    job_queue: str
    job_definition: str
    record_url: str  # the copy in S3, beside the staged payloads
    created: str
    rows: list[JobRow]
    region: str | None = None  # the jobs' region: ``status`` asks there
    array_jobs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        meta = {k: v for k, v in dataclasses.asdict(self).items() if k != "rows"}
        return summary(self.rows, nb2task_submission=VERSION, **meta)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Submission:
        if not isinstance(document, dict) or document.get("nb2task_submission") != VERSION:
            raise UsageError("not an nb2task submission record")
        fields = {f.name for f in dataclasses.fields(cls)} - {"rows"}
        rows = [JobRow(**row) for row in document["payloads"]]
        return cls(rows=rows, **{k: v for k, v in document.items() if k in fields})

    def save(self, local: Path | None, remote: bool = True) -> None:
        """Write the record to ``local`` (if given) and to its S3 copy (if ``remote``)."""
        document = self.as_dict()
        if local is not None:
            payload_io.write_json(document, local)
        if remote:
            payload_io.write_json(document, self.record_url)

    @classmethod
    def load(cls, where: str) -> Submission:
        """A record from a path or URL."""
        from stactask.exceptions import InvalidInput

        try:
            return cls.from_dict(payload_io.read_json(where))
        except InvalidInput as err:
            raise UsageError(f"cannot read submission {where}: {err}") from None


def submit(
    task_class: type[NotebookTask],
    source: TaskSource,
    payloads: list[str],
    options: SubmitOptions,
) -> Submission:
    """Stage the payloads, submit their jobs, and return the submission (saved to S3)."""
    from . import staging

    batch = aws_client("batch")
    task = task_class.name
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    submission_id = f"{task[:80]}-{stamp}-{secrets.token_hex(2)}"
    definition = resolve_job_definition(batch, task, source, options)
    rows = staging.stage(payloads, task_class, options.bucket, check_schema=options.check_schema)
    for row in rows:
        if row.state == REJECTED:
            logger.warning("rejected %s: %s", row.payload, row.error)
    submission = Submission(
        id=submission_id,
        task=task,
        job_queue=options.job_queue,
        job_definition=definition["jobDefinitionArn"],
        record_url=options.bucket.url(*RECORDS, task, f"{submission_id}.json"),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        rows=rows,
        region=batch.meta.region_name,
    )
    if options.resume:
        _resume(submission, options)
    todo = [row for row in rows if row.state == STAGED]
    overrides = _overrides(definition, options)
    singles = todo
    if options.array:
        chunks = [todo[i : i + MAX_ARRAY_SIZE] for i in range(0, len(todo), MAX_ARRAY_SIZE)]
        # An array job has 2 children at least: a payload left alone goes as a job of its own.
        singles = chunks.pop() if chunks and len(chunks[-1]) == 1 else []
        for number, chunk in enumerate(chunks, 1):
            _submit_array(batch, submission, chunk, number, overrides)
    with concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="nb2task-submit") as pool:
        list(pool.map(lambda row: _submit_one(batch, submission, row, overrides), singles))
    submitted = sum(1 for row in todo if row.state == SUBMITTED)
    logger.info(
        "%d of %d payloads submitted to %s (%s)",
        submitted,
        len(rows),
        options.job_queue,
        f"{len(submission.array_jobs)} array job(s), {len(singles)} single job(s)",
    )
    submission.save(None)
    return submission


def aws_client(service: str, region: str | None = None) -> Any:
    """A boto3 client with standard retries (throttling is retried)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 8})
    return boto3.client(service, region_name=region, config=config)


def job_name(*parts: str) -> str:
    """A valid Batch job name (letters, digits, '-' and '_', at most 128) from parts."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-_")
    return name[:JOB_NAME_MAX] or "nb2task"


def _submit_one(batch: Any, submission: Submission, row: JobRow, overrides: dict[str, Any]) -> None:
    assert row.url is not None and row.url_out is not None
    key = row.url.rsplit("/", 1)[-1].removesuffix(".json")
    response = batch.submit_job(
        jobName=job_name(submission.task, key[:8]),
        jobQueue=submission.job_queue,
        jobDefinition=submission.job_definition,
        parameters={"url": row.url, "url_out": row.url_out},
        **overrides,
    )
    row.job_id, row.state = response["jobId"], SUBMITTED


def _submit_array(
    batch: Any, submission: Submission, rows: list[JobRow], number: int, overrides: dict[str, Any]
) -> None:
    entries = [(row.url or "", row.url_out or "") for row in rows]
    manifest_url = submission.record_url.removesuffix(".json") + f"/manifest-{number}.json"
    payload_io.write_json(manifest.document(entries), manifest_url)
    container = dict(overrides.get("containerOverrides", {}))
    container["command"] = ["run", "--manifest", manifest_url]
    response = batch.submit_job(
        jobName=job_name(submission.id, str(number)),
        jobQueue=submission.job_queue,
        jobDefinition=submission.job_definition,
        arrayProperties={"size": len(rows)},
        **{**overrides, "containerOverrides": container},
    )
    parent = response["jobId"]
    submission.array_jobs.append({"job_id": parent, "manifest": manifest_url, "size": len(rows)})
    for index, row in enumerate(rows):
        row.job_id, row.state = f"{parent}:{index}", SUBMITTED


def _overrides(definition: dict[str, Any], options: SubmitOptions) -> dict[str, Any]:
    """submit_job's overrides: resources, environment, timeout, retries."""
    resources = options.resources
    container: dict[str, Any] = {}
    if requirements := resources.requirements():
        container["resourceRequirements"] = requirements
    if options.environment:
        container["environment"] = [{"name": k, "value": v} for k, v in options.environment]
    overrides: dict[str, Any] = {"containerOverrides": container} if container else {}
    if resources.timeout_seconds is not None:
        overrides["timeout"] = {"attemptDurationSeconds": resources.timeout_seconds}
    if resources.retry_attempts is not None:
        # A submission's retryStrategy replaces the definition's whole: keep its rules
        # (retry infrastructure failures, exit on task errors), change the attempts.
        strategy = dict(definition.get("retryStrategy") or {})
        overrides["retryStrategy"] = {**strategy, "attempts": resources.retry_attempts}
    return overrides


def resolve_job_definition(
    batch: Any, task: str, source: TaskSource, options: SubmitOptions
) -> dict[str, Any]:
    """The job definition to submit to (described), registered first with --register."""
    if options.register:
        return register(batch, task, source, options)
    if not options.job_definition:
        raise UsageError("pass --job-definition NAME, or --register with a build context")
    found = batch.describe_job_definitions(jobDefinitions=[options.job_definition])
    active: list[dict[str, Any]] = [
        d for d in found["jobDefinitions"] if d.get("status", "ACTIVE") == "ACTIVE"
    ]
    if not active:
        found = batch.describe_job_definitions(
            jobDefinitionName=options.job_definition, status="ACTIVE"
        )
        active = found["jobDefinitions"]
    if not active:
        raise UsageError(f"no active job definition {options.job_definition!r}")
    newest: dict[str, Any] = max(active, key=lambda d: int(d.get("revision", 0)))
    return newest


def register(batch: Any, task: str, source: TaskSource, options: SubmitOptions) -> dict[str, Any]:
    """Register the build context's Batch job definition (its definition.yaml)."""
    if source.definition is None or "batch" not in source.definition:
        raise UsageError("--register needs a build context with a Batch task (nb2task build)")
    spec = source.definition["batch"]
    properties = json.loads(spec["container_properties"])
    if options.image:
        from .image_ref import check_reference

        properties["image"] = check_reference(options.image, "--image")
    else:
        logger.warning("registering with image %s (pass --image URI)", properties["image"])
    if options.job_role:
        properties["jobRoleArn"] = options.job_role
    # Longest names first: moto puts the first parameter whose Ref:: is a substring of an
    # argument ("Ref::url" in "Ref::url_out"); AWS Batch replaces whole placeholders.
    parameters = dict(sorted(spec["parameters"].items(), key=lambda kv: -len(kv[0])))
    response = batch.register_job_definition(
        jobDefinitionName=options.job_definition or f"nb2task-{task}",
        type="container",
        parameters=parameters,
        containerProperties=properties,
        retryStrategy=_camel(spec["retry_strategy"]),
        timeout={"attemptDurationSeconds": int(spec["timeout_seconds"])},
        propagateTags=True,
    )
    logger.info("registered job definition %s", response["jobDefinitionArn"])
    return {
        "jobDefinitionArn": response["jobDefinitionArn"],
        "retryStrategy": _camel(spec["retry_strategy"]),
    }


def _camel(value: Any) -> Any:
    """FilmDrop's snake_case keys (retry_strategy) as Batch's API spells them."""
    if isinstance(value, dict):
        return {
            re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): _camel(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _resume(submission: Submission, options: SubmitOptions) -> None:
    """Skip what is done or under way: an output already there (SKIPPED), a job of an
    earlier submission still running (followed, not submitted again), or one that failed
    (kept as it ended, unless --retry-failed)."""
    earlier = {row.url: row for row in earlier_rows(options.bucket, submission.task)}
    staged = [row for row in submission.rows if row.state == STAGED]
    with concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="nb2task-resume") as pool:
        present = list(pool.map(lambda row: exists(row.url_out or ""), staged))
    for row, done in zip(staged, present, strict=True):
        before = earlier.get(row.url)
        if done:
            row.state, row.output = SKIPPED, row.url_out
        elif before is not None and before.job_id and before.state in IN_FLIGHT:
            row.job_id, row.state = before.job_id, before.state
        elif before is not None and before.state in (FAILED, INVALID) and not options.retry_failed:
            row.job_id, row.state, row.error = before.job_id, before.state, before.error
            row.seconds, row.log_stream = before.seconds, before.log_stream
    kept = Counter(row.state for row in staged if row.state != STAGED)
    if kept:
        logger.info(
            "--resume: %d done already, %d still running, %d failed before "
            "(--retry-failed submits those again)",
            kept[SKIPPED],
            sum(n for state, n in kept.items() if state in IN_FLIGHT),
            kept[FAILED] + kept[INVALID],
        )


def earlier_rows(bucket: PayloadBucket, task: str) -> Iterator[JobRow]:
    """The rows of the task's earlier submissions, oldest first."""
    from .errors import Nb2TaskError

    prefix_url = bucket.url(*RECORDS, task) + "/"
    name, prefix = prefix_url.removeprefix("s3://").split("/", 1)
    pages = payload_io.s3_client().get_paginator("list_objects_v2")
    found = []
    for page in pages.paginate(Bucket=name, Prefix=prefix, Delimiter="/"):
        found += [o for o in page.get("Contents", []) if o["Key"].endswith(".json")]
    for obj in sorted(found, key=lambda o: (o["LastModified"], o["Key"])):
        try:
            yield from Submission.load(f"s3://{name}/{obj['Key']}").rows
        except (UsageError, Nb2TaskError, KeyError, TypeError) as err:
            logger.warning("ignoring s3://%s/%s: %s", name, obj["Key"], err)


def exists(url: str) -> bool:
    """Whether the S3 object at ``url`` exists."""
    from botocore.exceptions import ClientError

    bucket, key = url.removeprefix("s3://").split("/", 1)
    try:
        payload_io.s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def local_record(submission_id: str) -> Path:
    """Where ``submit`` keeps a submission's record by default."""
    return LOCAL_RECORDS / f"{submission_id}.json"


def find_record(where: str) -> str:
    """A submission record's path or URL, from what the user named: a path, an
    ``s3://`` URL, or a submission id (its default local record)."""
    if "://" in where or Path(where).is_file():
        return where
    if (default := local_record(where)).is_file():
        return str(default)
    raise UsageError(f"no submission record at {where} (nor {default})")
