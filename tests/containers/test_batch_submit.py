"""``nb2task submit`` and ``nb2task status`` through moto's AWS Batch API, which runs the real
Batch image of a task on our Docker daemon for each job (or array child): payloads staged
as Cirrus stages them, one rejected before submission, one failing in the notebook (its
error line read back from CloudWatch Logs), the others' outputs in S3; then ``--resume``.

Images come from the session fixtures in conftest.py (``failing_task``), moto from
``moto_batch``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from images import REPORT, TaskImages
from support import (
    CliResult,
    aws_client,
    aws_env,
    create_job_queue,
    get_json,
    keys,
    make_payload,
    run_cli,
    sample_item,
)

pytestmark = pytest.mark.container

DIVIDE_LINE = re.compile(
    r"ZeroDivisionError: division by zero "
    r"\(notebook cell In \[\d+\], line 1: ratio = 1 / 0 if mode == \"divide\" else 1\.0\)"
)
REJECTED_LINE = "stactask.exceptions.InvalidInput: unknown parameter 'zzz'"


def write_payloads(folder: Path, bucket: str) -> dict[str, str]:
    """Five payloads of the ``failing`` task: three succeed, one divides by zero in the
    notebook, one has an unknown parameter. Their ids by name."""
    folder.mkdir()
    cases = {"a": "ok", "b": "ok", "c": "ok", "divide": "divide", "unknown": "ok"}
    ids = {}
    for name, mode in cases.items():
        options: dict[str, Any] = {"mode": mode}
        if name == "unknown":
            options["zzz"] = 1
        payload = make_payload(
            features=[sample_item(f"scene-{name}")],
            tasks={"failing": options},
            upload_options={"path_template": f"s3://{bucket}/runs/${{id}}/"},
        )
        payload["id"] = ids[name] = f"test-collection/workflow-failing/scene-{name}"
        (folder / f"{name}.json").write_text(json.dumps(payload))
    return ids


def setup(endpoint: str, name: str, folder: Path) -> tuple[str, str, dict[str, str]]:
    """A job queue and a bucket named ``name``, the five payloads in ``folder``."""
    queue = create_job_queue(endpoint, name)
    aws_client("s3", endpoint).create_bucket(Bucket=name)
    return queue, name, write_payloads(folder, name)


def submit(
    endpoint: str, task: TaskImages, queue: str, bucket: str, *args: str | Path
) -> CliResult:
    """``nb2task submit`` of the task's build context, as a user on this machine runs it;
    the jobs' containers get the moto endpoint (in AWS: their job role)."""
    env = aws_env(endpoint)
    container_env = [a for k, v in sorted(env.items()) for a in ("--env", f"{k}={v}")]
    return run_cli(
        "submit",
        task.context,
        *args,
        "--job-queue",
        queue,
        "--payload-bucket",
        bucket,
        "--poll",
        "0.5",
        *container_env,
        env=env,
        timeout=300,
    )


def jobs_in(endpoint: str, queue: str) -> int:
    """How many jobs (array children included) the queue has seen."""
    batch = aws_client("batch", endpoint)
    return len(batch.list_jobs(jobQueue=queue)["jobSummaryList"])


def check_outcome(
    endpoint: str, bucket: str, summary: dict[str, Any], ids: dict[str, str], result: CliResult
) -> dict[str, dict[str, Any]]:
    """Three outputs in S3, one failure with its error line, one rejection; the same in
    the table on stdout; exit 1 naming the two."""
    s3 = aws_client("s3", endpoint)
    rows = {row["id"]: row for row in summary["payloads"]}
    assert summary["counts"] == {"SUCCEEDED": 3, "FAILED": 1, "REJECTED": 1}, rows
    for name in ("a", "b", "c"):
        row = rows[ids[name]]
        assert row["state"] == "SUCCEEDED", row
        assert row["output"] == row["url_out"]
        assert re.fullmatch(
            rf"s3://{bucket}/cirrus/tmp/batch/{re.escape(ids[name])}/[0-9a-f-]{{36}}_out\.json",
            row["output"],
        )
        [item] = get_json(s3, row["output"])["features"]
        assert item["id"] == f"scene-{name}" and item["properties"]["mode"] == "ok"
        assert row["seconds"] is not None and row["seconds"] >= 0
    failed = rows[ids["divide"]]
    assert failed["state"] == "FAILED" and DIVIDE_LINE.fullmatch(failed["error"]), failed
    assert failed["url_out"].removeprefix(f"s3://{bucket}/") not in keys(s3, bucket)
    rejected = rows[ids["unknown"]]
    assert rejected["state"] == "REJECTED" and rejected["error"].startswith(REJECTED_LINE)
    assert rejected["job_id"] is None and rejected["url"] is None  # never staged nor submitted
    assert result.returncode == 1, result.stderr
    assert result.last_stderr_line.startswith("nb2task.errors.Nb2TaskError: 2 of 5 payloads failed")
    table = result.stdout
    assert re.search(rf"{re.escape(ids['divide'])}\s+FAILED\s+\S+ s\s+ZeroDivisionError", table)
    assert re.search(rf"{re.escape(ids['unknown'])}\s+REJECTED\s+", table)
    assert len(re.findall(r"\s+SUCCEEDED\s+\S+ s\s+s3://", table)) == 3, table
    return rows


def test_submit_one_job_per_payload_then_resume(
    moto_batch: str, failing_task: TaskImages, tmp_path: Path
) -> None:
    endpoint = moto_batch
    queue, bucket, ids = setup(endpoint, "nb2task-submit-single", tmp_path / "payloads")
    record = tmp_path / "submission.json"

    t0 = time.monotonic()
    result = submit(
        endpoint, failing_task, queue, bucket, tmp_path / "payloads", "--register",
        "--no-array", "--summary", record,
    )  # fmt: skip
    REPORT["submit: 5 payloads, one job each (moto Batch)"] = f"{time.monotonic() - t0:.1f} s"
    summary = json.loads(record.read_text())
    rows = check_outcome(endpoint, bucket, summary, ids, result)
    assert summary["array_jobs"] == []
    assert len({row["job_id"] for row in rows.values() if row["job_id"]}) == 4
    # Progress on stderr, off a terminal: one line per payload as it ended.
    assert re.search(
        r"WARNING nb2task.progress: \[\d/5\] FAILED .*ZeroDivisionError", result.stderr
    )
    # The record is in S3 too, beside the staged payloads.
    assert get_json(aws_client("s3", endpoint), summary["record_url"])["id"] == summary["id"]
    submitted = jobs_in(endpoint, queue)
    assert submitted == 4

    # Again with --resume: nothing is submitted; done payloads are skipped, the failure is
    # kept as it ended, the invalid payload is rejected again.
    again = tmp_path / "resumed.json"
    result = submit(
        endpoint, failing_task, queue, bucket, tmp_path / "payloads", "--job-definition",
        "nb2task-failing", "--no-array", "--resume", "--summary", again,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert jobs_in(endpoint, queue) == submitted
    resumed = {row["id"]: row for row in json.loads(again.read_text())["payloads"]}
    assert {name: resumed[i]["state"] for name, i in ids.items()} == {
        "a": "SKIPPED", "b": "SKIPPED", "c": "SKIPPED", "divide": "FAILED", "unknown": "REJECTED",
    }  # fmt: skip
    assert resumed[ids["divide"]]["error"] == rows[ids["divide"]]["error"]
    assert resumed[ids["a"]]["output"] == rows[ids["a"]]["output"]


def test_submit_an_array_job_and_follow_it_with_status(
    moto_batch: str, failing_task: TaskImages, tmp_path: Path
) -> None:
    endpoint = moto_batch
    queue, bucket, ids = setup(endpoint, "nb2task-submit-array", tmp_path / "payloads")
    record = tmp_path / "submission.json"

    result = submit(
        endpoint, failing_task, queue, bucket, str(tmp_path / "payloads" / "*.json"),
        "--register", "--job-definition", "nb2task-failing-array", "--no-wait",
        "--summary", record,
    )  # fmt: skip
    assert result.returncode == 1  # the rejected payload
    submission = json.loads(record.read_text())
    [array] = submission["array_jobs"]
    assert array["size"] == 4
    manifest = get_json(aws_client("s3", endpoint), array["manifest"])
    children = [row for row in submission["payloads"] if row["job_id"]]
    for row in children:
        parent, index = row["job_id"].split(":")
        assert parent == array["job_id"]
        assert manifest["payloads"][int(index)] == {"url": row["url"], "url_out": row["url_out"]}
    # Each child ran `run --manifest URL` in place of the definition's command.
    batch = aws_client("batch", endpoint)
    [job] = batch.describe_jobs(jobs=[children[0]["job_id"]])["jobs"]
    assert job["container"]["command"] == ["run", "--manifest", array["manifest"]]

    t0 = time.monotonic()
    result = run_cli("status", record, "--poll", "0.5", env=aws_env(endpoint), timeout=300)
    REPORT["submit: array of 4 children followed by status (moto Batch)"] = (
        f"{time.monotonic() - t0:.1f} s"
    )
    check_outcome(endpoint, bucket, json.loads(record.read_text()), ids, result)
