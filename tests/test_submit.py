"""``submit``'s parts, fast: payload sources, staging (checks, keys), submission (single,
array, overrides, --resume) against a recording stand-in for the Batch API with moto's S3,
following (states from described jobs), the array child's manifest, and the progress
display. Real Batch jobs run in tests/containers/test_submit.py.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from support import NB2TASK_TASK, get_json, make_payload, put_json, run_cli, write_notebook

from nb2task import follow, manifest, sources, staging, submit
from nb2task.errors import Nb2TaskError, UsageError
from nb2task.tally import Progress, Row, table
from nb2task.task import NotebookTask

TASK_CELLS = (
    "import nb2task\nitems = nb2task.read_items(payload)",
    'for item in items:\n    item.properties["mode"] = mode\nnb2task.emit(items)',
)


@pytest.fixture
def task_notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "nb" / "modes.ipynb",
        'payload = "in.json"\nmode: str = "ok"  # what to do',
        *TASK_CELLS,
    )


def payload_for(name: str, bucket: str = "out", **options: Any) -> dict[str, Any]:
    payload = make_payload(
        tasks={"modes": options}, upload_options={"path_template": f"s3://{bucket}/${{id}}/"}
    )
    payload["id"] = f"test/workflow-modes/{name}"
    return payload


# --- Sources ---------------------------------------------------------------------------------


def test_sources_files_folders_globs_and_s3_prefixes(tmp_path: Path, s3: Any, bucket: str) -> None:
    folder = tmp_path / "in"
    (folder / "deeper").mkdir(parents=True)
    for name in ("b.json", "a.json", "notes.txt", "deeper/c.json"):
        (folder / name).write_text("{}")
    for key in ("p/1.json", "p/2.json", "p/readme.md", "pq/3.json"):
        put_json(s3, bucket, key, {})
    s3.put_object(Bucket=bucket, Key="p/", Body=b"")  # the S3 console's folder marker
    put_json(s3, bucket, "odd/..", {})  # an object named as no file could be
    found = sources.expand(
        [
            str(folder / "b.json"),
            str(folder),  # the folder's *.json, sorted; b.json only once
            str(tmp_path / "**" / "c.json"),
            f"s3://{bucket}/p",  # a prefix: the .json objects under p/, not pq/
            f"s3://{bucket}/p/",  # the same, though p/ is also an (empty) object
            f"s3://{bucket}/pq/3.json",
            f"s3://{bucket}/odd/..",  # an object: itself, whatever its name
        ]
    )
    assert found == [
        str(folder / "b.json"),
        str(folder / "a.json"),
        str(folder / "deeper" / "c.json"),
        f"s3://{bucket}/p/1.json",
        f"s3://{bucket}/p/2.json",
        f"s3://{bucket}/pq/3.json",
        f"s3://{bucket}/odd/..",
    ]
    with pytest.raises(UsageError, match=r"no payload found at .*nothing-\*"):
        sources.expand([str(tmp_path / "nothing-*.json")])
    # A file that does not exist is left to its run, which says so.
    assert sources.expand(["missing.json"]) == ["missing.json"]


# --- Staging ---------------------------------------------------------------------------------


def test_staging_keys_follow_cirrus_and_depend_on_the_content_only() -> None:
    bucket = staging.PayloadBucket("payloads", "cirrus")
    document = payload_for("x")
    url = bucket.batch_url("modes", document)
    assert url.startswith("s3://payloads/cirrus/tmp/batch/test/workflow-modes/x/")
    assert url == bucket.batch_url("modes", json.loads(json.dumps(document)))
    assert url != bucket.batch_url("other-task", document)
    assert url != bucket.batch_url("modes", payload_for("x", mode="divide"))
    assert staging.output_url(url) == url.removesuffix(".json") + "_out.json"
    assert staging.PayloadBucket("b", "").url("tmp", "k.json") == "s3://b/tmp/k.json"


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (lambda p: p.pop("id"), "stactask.exceptions.InvalidInput: the payload has no 'id'"),
        (
            lambda p: p["process"][0]["tasks"]["modes"].update(zzz=1),
            "stactask.exceptions.InvalidInput: unknown parameter 'zzz'",
        ),
        (
            lambda p: p["process"][0]["upload_options"].update(path_template="out/${id}"),
            "stactask.exceptions.InvalidInput: upload_options.path_template 'out/${id}' is a "
            "local path",
        ),
        (
            lambda p: (p.pop("features"), p.pop("process")),
            "stactask.exceptions.InvalidInput: not a Cirrus process",
        ),
        # The id keys the staged payload: it must not climb out of tmp/batch/, nor land
        # among nb2task's submission records (--resume reads those).
        (
            lambda p: p.update(id="../../elsewhere/x"),
            "stactask.exceptions.InvalidInput: the payload id '../../elsewhere/x' cannot key",
        ),
        (
            lambda p: p.update(id="a//b\x1b[2J"),
            "stactask.exceptions.InvalidInput: the payload id 'a//b\\x1b[2J' cannot key",
        ),
        (
            lambda p: p.update(id="nb2task/modes/fake-submission"),
            "stactask.exceptions.InvalidInput: the payload id 'nb2task/modes/fake-submission' "
            "cannot start with 'nb2task/'",
        ),
    ],
)
def test_staging_rejects_what_a_run_would_reject(
    task_notebook: Path, tmp_path: Path, change: Any, line: str
) -> None:
    document = payload_for("x")
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    task_class = NotebookTask.for_notebook(task_notebook)
    [row] = staging.stage([str(path)], task_class, staging.PayloadBucket("b"), upload=False)
    assert row.state == "REJECTED" and row.error is not None and row.error.startswith(line)
    assert row.url is None
    assert not list((tmp_path / "nb").glob("*.executed.ipynb"))  # nothing ran


# --- Submission, against a stand-in for the Batch API ----------------------------------------


class RecordingBatch:
    """The Batch calls ``submit`` makes, recorded; jobs never run."""

    meta = type("Meta", (), {"region_name": "us-east-1"})()

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.registered: list[dict[str, Any]] = []

    def register_job_definition(self, **kwargs: Any) -> dict[str, Any]:
        self.registered.append(kwargs)
        return {"jobDefinitionArn": f"arn:jd/{kwargs['jobDefinitionName']}:1"}

    def describe_job_definitions(self, **kwargs: Any) -> dict[str, Any]:
        strategy = {"attempts": 3, "evaluateOnExit": [{"action": "EXIT", "onExitCode": "*"}]}
        return {
            "jobDefinitions": [
                {"jobDefinitionArn": "arn:jd/modes:2", "revision": 2, "retryStrategy": strategy}
            ]
        }

    def submit_job(self, **kwargs: Any) -> dict[str, Any]:
        self.submitted.append(kwargs)
        return {"jobId": f"job-{len(self.submitted)}"}


@pytest.fixture
def batch(monkeypatch: pytest.MonkeyPatch) -> RecordingBatch:
    recording = RecordingBatch()
    monkeypatch.setattr(submit, "aws_client", lambda service, region=None: recording)
    return recording


def write_payloads(folder: Path, bucket: str, *names: str) -> list[str]:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.json").write_text(json.dumps(payload_for(name, bucket)))
    return [str(folder / f"{name}.json") for name in names]


def test_array_jobs_with_overrides(
    task_notebook: Path,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    batch: RecordingBatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submit, "MAX_ARRAY_SIZE", 2)  # 5 payloads: 2 array jobs and 1 job
    options = submit.SubmitOptions(
        job_queue="q",
        bucket=staging.PayloadBucket(bucket),
        job_definition="modes",
        resources=submit.Resources(vcpu=2, memory_mb=8192, gpus=1, timeout_seconds=600,
                                   retry_attempts=5),
        environment=(("NB2TASK_LOG_LEVEL", "DEBUG"),),
    )  # fmt: skip
    payloads = write_payloads(tmp_path / "in", bucket, "a", "b", "c", "d", "e")
    task_class = NotebookTask.for_notebook(task_notebook)
    done = submit.submit(task_class, submit.TaskSource(task_notebook), payloads, options)

    first, second, single = batch.submitted
    assert first["arrayProperties"] == {"size": 2} == second["arrayProperties"]
    # An array job needs two children at least: the last payload goes as a job of its own.
    assert "arrayProperties" not in single
    assert single["parameters"] == {"url": done.rows[4].url, "url_out": done.rows[4].url_out}
    assert single["containerOverrides"] == {
        k: v for k, v in first["containerOverrides"].items() if k != "command"
    }
    assert first["jobDefinition"] == "arn:jd/modes:2"  # the newest active revision
    container = first["containerOverrides"]
    assert container["command"] == ["run", "--manifest", done.array_jobs[0]["manifest"]]
    assert container["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "8192"},
        {"type": "GPU", "value": "1"},
    ]
    assert container["environment"] == [{"name": "NB2TASK_LOG_LEVEL", "value": "DEBUG"}]
    assert first["timeout"] == {"attemptDurationSeconds": 600}
    # The definition's retry rules stay; only the attempts change.
    assert first["retryStrategy"] == {
        "attempts": 5,
        "evaluateOnExit": [{"action": "EXIT", "onExitCode": "*"}],
    }
    ids = ["job-1:0", "job-1:1", "job-2:0", "job-2:1", "job-3"]
    assert [row.job_id for row in done.rows] == ids
    entries = get_json(s3, done.array_jobs[1]["manifest"])["payloads"]
    assert entries == [{"url": r.url, "url_out": r.url_out} for r in done.rows[2:4]]
    assert get_json(s3, done.rows[2].url or "")["id"] == "test/workflow-modes/c"
    record = submit.Submission.load(done.record_url)
    assert record.rows == done.rows and record.array_jobs == done.array_jobs


def test_resume_skips_done_running_and_failed_payloads(
    task_notebook: Path, tmp_path: Path, s3: Any, bucket: str, batch: RecordingBatch
) -> None:
    options = submit.SubmitOptions(
        job_queue="q", bucket=staging.PayloadBucket(bucket), job_definition="modes", array=False
    )
    payloads = write_payloads(tmp_path / "in", bucket, "done", "running", "failed", "new")
    task_class = NotebookTask.for_notebook(task_notebook)
    source = submit.TaskSource(task_notebook)
    first = submit.submit(task_class, source, payloads[:3], options)
    assert len(batch.submitted) == 3
    # What the first submission's jobs did: one wrote its output, one still runs, one failed.
    done, running, failed = first.rows
    put_json(s3, bucket, (done.url_out or "").split("/", 3)[3], {"features": []})
    failed.state, failed.error = "FAILED", "ZeroDivisionError: division by zero"
    running.state = "RUNNING"
    first.save(None)

    resume = submit.SubmitOptions(**{**options.__dict__, "resume": True})
    again = submit.submit(task_class, source, payloads, resume)
    assert [row.state for row in again.rows] == ["SKIPPED", "RUNNING", "FAILED", "SUBMITTED"]
    assert again.rows[1].job_id == running.job_id  # followed, not submitted again
    assert again.rows[2].error == failed.error
    assert len(batch.submitted) == 4  # only "new"

    retry = submit.SubmitOptions(**{**resume.__dict__, "retry_failed": True})
    submit.submit(task_class, source, payloads[2:3], retry)
    assert len(batch.submitted) == 5


def test_register_from_a_build_context(
    tmp_path: Path, task_notebook: Path, s3: Any, bucket: str, batch: RecordingBatch
) -> None:
    assert run_cli("build", task_notebook, "-o", tmp_path / "ctx").returncode == 0
    source = submit.TaskSource.at(tmp_path / "ctx")
    assert source.notebook == tmp_path / "ctx" / "notebook" / "modes.ipynb"
    options = submit.SubmitOptions(
        job_queue="q", bucket=staging.PayloadBucket(bucket), register=True,
        image="123.dkr.ecr.us-east-1.amazonaws.com/modes:0.1.0-batch", job_role="arn:role/job",
    )  # fmt: skip
    task_class = NotebookTask.for_notebook(source.notebook)
    submit.submit(task_class, source, write_payloads(tmp_path / "in", bucket, "a"), options)
    [registered] = batch.registered
    assert registered["jobDefinitionName"] == "nb2task-modes"
    assert list(registered["parameters"]) == ["url_out", "url"]  # see register()
    properties = registered["containerProperties"]
    assert properties["image"] == options.image and properties["jobRoleArn"] == "arn:role/job"
    assert properties["command"] == ["run", "Ref::url", "--output", "Ref::url_out"]
    assert registered["retryStrategy"]["evaluateOnExit"][-1] == {
        "action": "EXIT",
        "onExitCode": "*",
    }
    [job] = batch.submitted
    assert job["jobDefinition"] == "arn:jd/nb2task-modes:1"
    with pytest.raises(UsageError, match="--register needs a build context"):
        submit.submit(task_class, submit.TaskSource(task_notebook), [], options)


# --- Following -------------------------------------------------------------------------------


class Logs:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["logGroupName"] == "/aws/batch/job" and kwargs["limit"] == 1
        return {"events": [{"message": line} for line in self.lines[-1:]]}


def test_follow_reads_states_durations_and_error_lines(s3: Any, bucket: str) -> None:
    out = put_json(s3, bucket, "x_out.json", {})
    job = {"startedAt": 1_000, "stoppedAt": 4_500, "container": {"logStreamName": "jd/default/1"}}

    row = staging.JobRow("p", url_out=out)
    follow.update(row, {**job, "status": "SUCCEEDED"}, Logs([]))
    assert (row.state, row.output, row.seconds) == ("SUCCEEDED", out, 3.5)

    row = staging.JobRow("p", url_out=f"s3://{bucket}/missing_out.json")
    follow.update(row, {**job, "status": "SUCCEEDED"}, Logs([]))
    assert row.state == "FAILED" and row.error is not None
    assert row.error.startswith("UnknownError: the job succeeded but wrote no output")

    row = staging.JobRow("p")
    invalid = "stactask.exceptions.InvalidInput: no usable band"
    follow.update(row, {**job, "status": "FAILED"}, Logs(["INFO starting", invalid]))
    assert (row.state, row.error, row.log_stream) == ("INVALID", invalid, "jd/default/1")

    row = staging.JobRow("p")
    never_ran = {"status": "FAILED", "statusReason": "Task failed to start"}
    follow.update(row, never_ran, Logs([]))
    assert row.state == "FAILED"
    assert row.error == (
        "UnknownError: the job failed before its log said why "
        "(status reason: Task failed to start; container reason: None)"
    )

    row = staging.JobRow("p")
    follow.update(row, {"status": "RUNNABLE"}, Logs([]))
    assert row.state == "RUNNABLE" and not row.done

    # Jobs Batch no longer describes: done if their output is there, else failed.
    class Forgetful:
        def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
            return {"jobs": []}

    rows = [
        staging.JobRow("p", job_id="old-1", state="RUNNING", url_out=out),
        staging.JobRow("p", job_id="old-2", state="RUNNING", url_out=f"s3://{bucket}/no.json"),
    ]
    assert follow.refresh(rows, Forgetful(), Logs([]))
    assert [(r.state, r.output) for r in rows] == [("SUCCEEDED", out), ("FAILED", None)]
    assert rows[1].error == (
        "UnknownError: AWS Batch no longer knows job old-2, and it left no output"
    )


# --- The array child's side ------------------------------------------------------------------


def test_array_index_from_the_environment() -> None:
    assert manifest.array_index({"AWS_BATCH_JOB_ARRAY_INDEX": "7"}) == 7
    assert manifest.array_index({"AWS_BATCH_JOB_ID": "0b5e-11:12"}) == 12  # as moto sets it
    with pytest.raises(UsageError, match="AWS_BATCH_JOB_ARRAY_INDEX"):
        manifest.array_index({"AWS_BATCH_JOB_ID": "0b5e-11"})


def test_an_array_child_runs_its_payload_from_the_manifest(
    task_notebook: Path, tmp_path: Path
) -> None:
    entries = []
    for index, mode in enumerate(("first", "second")):
        path = tmp_path / f"in-{index}.json"
        path.write_text(json.dumps(payload_for(mode, mode=mode)))
        entries.append((str(path), str(tmp_path / f"out-{index}.json")))
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest.document(entries)))
    env = {"NB2TASK_NOTEBOOK": str(task_notebook), "AWS_BATCH_JOB_ARRAY_INDEX": "1"}
    result = run_cli(
        "run", "--manifest", manifest_path, "--no-upload", program=NB2TASK_TASK, env=env
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out-0.json").exists()
    [item] = json.loads((tmp_path / "out-1.json").read_text())["features"]
    assert item["properties"]["mode"] == "second"

    env["AWS_BATCH_JOB_ARRAY_INDEX"] = "2"
    result = run_cli("run", "--manifest", manifest_path, program=NB2TASK_TASK, env=env)
    assert result.returncode == 1
    assert result.last_stderr_line == (
        f"nb2task.errors.Nb2TaskError: manifest {manifest_path} has no payload at index 2"
    )


# --- Progress --------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_and_off_it(caplog: pytest.LogCaptureFixture) -> None:
    rows = [Row("a.json", "id-a"), Row("b.json", "id-b"), Row("c.json")]
    screen = Terminal()
    handler = logging.StreamHandler(screen)
    logging.getLogger().addHandler(handler)
    try:
        progress = Progress(rows, stream=screen)
        rows[0].state, rows[0].seconds, rows[0].output = "SUCCEEDED", 2.0, "out/a.json"
        rows[1].state, rows[1].seconds, rows[1].error = "FAILED", 61.0, "ZeroDivisionError: x"
        rows[2].state = "RUNNING"
        with caplog.at_level(logging.INFO, logger="nb2task.progress"):
            progress.update()
            progress.close()
    finally:
        logging.getLogger().removeHandler(handler)
    text = screen.getvalue()
    # The status line is redrawn in place and cleared before each log record.
    assert "\r\x1b[K2/3 done · RUNNING 1 · SUCCEEDED 1 · FAILED 1 · " in text
    failure = "[2/3] FAILED id-b (1m 01s): ZeroDivisionError: x"
    assert ("nb2task.progress", logging.WARNING, failure) in caplog.record_tuples
    assert (
        "nb2task.progress",
        logging.INFO,
        "[1/3] SUCCEEDED id-a (2.0 s)",
    ) in caplog.record_tuples
    assert text.endswith("\n")

    lines = table(rows).splitlines()
    assert lines[0].split() == ["payload", "state", "duration", "output", "/", "error"]
    assert lines[1].split() == ["id-a", "SUCCEEDED", "2.0", "s", "out/a.json"]
    assert lines[2].split()[:4] == ["id-b", "FAILED", "1m", "01s"]
    assert lines[2].endswith("ZeroDivisionError: x")
    assert lines[3].split() == ["c.json", "RUNNING", "-"]


def test_failures_name_their_payloads() -> None:
    from nb2task.tally import raise_for_failures

    rows = [Row("a.json", state="SUCCEEDED"), Row("b.json", state="REJECTED", error="X.Y: no")]
    with pytest.raises(Nb2TaskError, match=r"^1 of 2 payloads failed: b.json \(X.Y\); see here$"):
        raise_for_failures(rows, "see here")
    many = [Row(f"{i}.json", state="FAILED", error="E: x") for i in range(25)]
    with pytest.raises(Nb2TaskError, match=r": 0.json \(E\), .* 9.json \(E\) and 15 more; h$"):
        raise_for_failures(many, "h")
