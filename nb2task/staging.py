"""Payloads made ready for AWS Batch: checked here as ``run`` checks them, then put in S3
where Cirrus' pre-batch step puts them.

A valid payload goes to ``s3://<bucket>/<root>/tmp/batch/<payload id>/<uuid>.json``; its
job writes the output payload to the same key ending ``_out.json`` (``url`` and
``url_out``, the job's two parameters). The uuid comes from the task's name and the
payload's content (uuid5): the same payload always stages to the same key, so that a
re-submission finds the output of an earlier one. An invalid payload is rejected here,
with the error line its run would have ended with, and never submitted.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import payload as payload_io
from .errors import error_line
from .tally import REJECTED, Row

if TYPE_CHECKING:
    from .engines import Executor
    from .task import NotebookTask

logger = logging.getLogger(__name__)

DEFAULT_ROOT_PREFIX = "cirrus"  # Cirrus' own default (CIRRUS_PAYLOAD_ROOT_PREFIX)
STAGED = "STAGED"
# uuid5 namespace of staged payload keys: uuid5(NAMESPACE, task name + payload JSON).
NAMESPACE = uuid.UUID("6f1c4d0e-5a7b-4e55-9c1f-2b8f0e4a9d31")
_UNUSED = cast("Executor", object())


@dataclass
class JobRow(Row):
    """A payload on its way through AWS Batch: a summary row plus where it is."""

    url: str | None = None  # the staged payload (the job's ``url``)
    url_out: str | None = None  # where the job writes its output payload
    job_id: str | None = None  # an array child's id ends with ``:<index>``
    log_stream: str | None = None


@dataclass(frozen=True)
class PayloadBucket:
    """Cirrus' payload bucket and its root prefix: where staged payloads go."""

    bucket: str
    root: str = DEFAULT_ROOT_PREFIX

    @classmethod
    def from_env(cls, bucket: str | None, root: str | None) -> PayloadBucket:
        """From the arguments, else CIRRUS_PAYLOAD_BUCKET / CIRRUS_PAYLOAD_ROOT_PREFIX."""
        from .errors import UsageError

        name = bucket or os.environ.get("CIRRUS_PAYLOAD_BUCKET")
        if not name:
            raise UsageError("no payload bucket: use --payload-bucket or CIRRUS_PAYLOAD_BUCKET")
        prefix = root if root is not None else os.environ.get("CIRRUS_PAYLOAD_ROOT_PREFIX")
        return cls(name, (DEFAULT_ROOT_PREFIX if prefix is None else prefix).strip("/"))

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<root>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *([self.root] if self.root else []), *parts])

    def batch_url(self, task: str, document: dict[str, Any]) -> str:
        """Where a payload is staged for ``task`` (a key that depends only on both)."""
        content = json.dumps(document, sort_keys=True, separators=(",", ":"))
        key = uuid.uuid5(NAMESPACE, f"{task}\n{content}")
        return self.url("tmp", "batch", document["id"], f"{key}.json")


def output_url(url: str) -> str:
    """The job's ``url_out`` for a staged ``url``, as Cirrus' pre-batch step makes it."""
    return url.removesuffix(".json") + "_out.json"


def stage(
    sources: list[str],
    task_class: type[NotebookTask],
    bucket: PayloadBucket,
    *,
    check_schema: bool = True,
    upload: bool = True,
    jobs: int = 8,
) -> list[JobRow]:
    """Check every payload; upload the valid ones (unless ``upload`` is False: then
    only their URLs are made). One row each, in the order given: STAGED or REJECTED."""
    rows = [JobRow(source) for source in sources]
    with concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="nb2task-stage") as pool:
        list(pool.map(lambda row: _stage_one(row, task_class, bucket, check_schema, upload), rows))
    return rows


def _stage_one(
    row: JobRow,
    task_class: type[NotebookTask],
    bucket: PayloadBucket,
    check_schema: bool,
    upload: bool,
) -> None:
    try:
        document = payload_io.load(row.payload)
        if isinstance(document.get("id"), str):
            row.id = document["id"]
        check(task_class, document, check_schema)
    except Exception as err:  # noqa: BLE001 - a payload's rejection is its own
        row.state, row.error = REJECTED, error_line(err)
        return
    row.url = bucket.batch_url(task_class.name, document)
    row.url_out = output_url(row.url)
    if upload:
        bucket_name, key = row.url.removeprefix("s3://").split("/", 1)
        body = json.dumps(document).encode()
        payload_io.s3_client().put_object(Bucket=bucket_name, Key=key, Body=body)
    row.state = STAGED


# Staged payloads are keyed by their id, and nb2task keeps submission records under
# <root>/tmp/batch/nb2task/: an id must be a plain key, and not land among the records.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RECORDS_SEGMENT = "nb2task"


def check_payload_id(payload_id: str) -> None:
    """InvalidInput unless ``payload_id`` can key a staged payload (Cirrus' ids are
    ``<collections>/workflow-<name>/<item ids>``: '/' is fine, '..' or '//' is not)."""
    from stactask.exceptions import InvalidInput

    segments = payload_id.split("/")
    if _CONTROL.search(payload_id) or any(s in ("", ".", "..") for s in segments):
        raise InvalidInput(
            f"the payload id {payload_id!r} cannot key a staged payload: no control "
            "characters, '.', '..' or empty segments"
        )
    if segments[0] == RECORDS_SEGMENT:
        raise InvalidInput(
            f"the payload id {payload_id!r} cannot start with '{RECORDS_SEGMENT}/': "
            "nb2task keeps its submission records there"
        )


def check(task_class: type[NotebookTask], document: dict[str, Any], check_schema: bool) -> None:
    """Raise what a Batch run of this payload would raise before its notebook starts:
    the payload's structure, its items (STAC schema too, if ``check_schema``), the
    notebook's parameters; plus what only a job in AWS cannot live with."""
    from stactask.exceptions import InvalidInput

    if not isinstance(document.get("id"), str) or not document["id"]:
        raise InvalidInput("the payload has no 'id' (Cirrus keys staged payloads by it)")
    check_payload_id(document["id"])
    with tempfile.TemporaryDirectory(prefix="nb2task-check-") as workdir:
        # Made only to check: it never runs, so any executor will do and none is started.
        task_class(document, workdir=workdir, check_schema=check_schema, executor=_UNUSED)
    process = document["process"]
    definition = process[0] if isinstance(process, list) else process
    template = definition.get("upload_options", {}).get("path_template")
    if isinstance(template, str) and "://" not in template:
        raise InvalidInput(
            f"upload_options.path_template {template!r} is a local path: a Batch job's "
            "outputs must go to S3 (s3://...)"
        )
    local = [
        asset["href"]
        for item in document.get("features", [])  # none: a payload with no items
        for asset in item.get("assets", {}).values()
        if "://" not in asset["href"]
    ]
    if local:
        logger.warning(
            "payload %s: asset %s is a local file, which a Batch job cannot read",
            document["id"],
            local[0],
        )
