"""What `nb2task build` emits, built and run for real: the Batch image as Batch runs it, the
Lambda image through the real Lambda Runtime Interface Emulator, the Cirrus error contract of
both, and a job submitted through (moto's) AWS Batch API that runs the Batch image on our
Docker daemon. S3 is a moto server on 127.0.0.1; every container uses the host's network.

Images come from the session fixtures in conftest.py (``ndvi_task``, ``failing_task``).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import images
import pytest
from images import REPORT, TaskImages
from support import (
    NDVI_ID,
    aws_client,
    aws_env,
    create_job_queue,
    get_bytes,
    get_json,
    keys,
    local_hrefs,
    make_payload,
    ndvi_payload,
    put_json,
    register_job_definition,
    sample_item,
)

pytestmark = pytest.mark.container

# As in Lambda: read-only root, only /tmp writable, an unprivileged user (sbx_user1051).
LAMBDA_USER = "993:990"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def check_ndvi_output(s3: Any, bucket: str, output: dict[str, Any]) -> None:
    """The output payload of the NDVI task on ndvi_payload: the COG and the run record are on
    S3 under the path_template, and no asset points at the container's filesystem."""
    assert output["id"].endswith(NDVI_ID)
    assert output["process"][0]["workflow"] == "ndvi"
    [item] = output["features"]
    assert item["id"] == f"{NDVI_ID}_ndvi"
    assert item["collection"] == "sentinel-2-l2a-ndvi"  # the catch_all collection matcher
    assert item["properties"]["nb2task:ndvi_threshold"] == 0.3  # tasks.ndvi.threshold
    # Every asset is on S3 (links: see test_batch_output_links_are_not_local).
    assert local_hrefs(item["assets"]) == [], item["assets"]
    prefix = f"s3://{bucket}/ndvi/{item['id']}/"

    cog = item["assets"]["ndvi"]
    assert cog["href"] == f"{prefix}{item['id']}.tif"
    import numpy as np
    import rasterio

    with rasterio.MemoryFile(get_bytes(s3, cog["href"])) as memfile, memfile.open() as ds:
        assert ds.driver == "GTiff" and ds.count == 1 and ds.dtypes == ("float32",)
        data = ds.read(1)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", ds.tags(ns="IMAGE_STRUCTURE")
    valid = data[np.isfinite(data)]
    assert valid.size > 0 and valid.min() >= 0.3 and valid.max() <= 1.0

    notebook_href = item["assets"]["executed-notebook"]["href"]
    assert notebook_href.startswith(prefix)
    executed = json.loads(get_bytes(s3, notebook_href))
    assert executed["metadata"]["papermill"]["exception"] in (None, False)
    # A successful run renders no HTML unless asked (metadata record_html, --html).
    assert "executed-notebook-html" not in item["assets"]


# --- The images themselves ----------------------------------------------------------------


def image_config(ref: str) -> dict[str, Any]:
    out = images.docker("image", "inspect", "--format", "{{json .}}", ref).stdout
    config: dict[str, Any] = json.loads(out)
    return config


def test_task_images_are_thin_layers_over_the_base(
    ndvi_task: TaskImages, nb2task_base_image: str
) -> None:
    base = image_config(nb2task_base_image)
    lam, bat = image_config(ndvi_task.lambda_image), image_config(ndvi_task.batch_image)
    base_layers = base["RootFS"]["Layers"]
    # One shared task stage: both images have exactly the same layers, on top of the base's.
    assert lam["RootFS"]["Layers"] == bat["RootFS"]["Layers"]
    assert lam["RootFS"]["Layers"][: len(base_layers)] == base_layers
    # Lambda: the base's entrypoint (AWS's /lambda-entrypoint.sh) with the handler as CMD.
    assert lam["Config"]["Entrypoint"] == base["Config"]["Entrypoint"]
    assert lam["Config"]["Cmd"] == ndvi_task.definition["lambda"]["image_config"]["command"]
    # Batch: the task CLI as entrypoint, the job definition's command as its arguments.
    assert bat["Config"]["Entrypoint"] == ["nb2task-task"]
    assert bat["Config"]["User"] == "65534"
    for config in (lam, bat):
        env = dict(e.split("=", 1) for e in config["Config"]["Env"])
        assert env["NB2TASK_TASK_NAME"] == "ndvi"
        assert env["NB2TASK_NOTEBOOK"].endswith("/ndvi.ipynb")


def test_task_requirements_keep_the_base_stack_consistent(ndvi_task: TaskImages) -> None:
    """The task's pip install (rasterio, numpy) over the base's locked stack leaves no
    broken requirement (but what the base drops on purpose), and the notebook's imports
    work in the image."""
    proc = images.docker(
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "python3",
        ndvi_task.batch_image,
        "-c",
        "import subprocess, sys, rasterio, numpy, nb2task, stactask, papermill\n"
        "sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'check']))",
        check=False,
    )
    # The base drops debugpy, jedi and parso on purpose (Dockerfile.base).
    dropped = ("requires debugpy,", "requires jedi,", "requires parso,")
    broken = [line for line in proc.stdout.splitlines() if not any(d in line for d in dropped)]
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr
    assert broken == [] or broken == ["No broken requirements found."], proc.stdout


# --- Batch image: `docker run IMAGE run URL --output URL_OUT` ---------------------------


def run_batch(
    task: TaskImages, endpoint: str, *args: str, name: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the Batch image as Batch does (its entrypoint plus the job's command)."""
    options = ["--name", name] if name else ["--rm"]
    return images.docker(
        "run",
        *options,
        "--network",
        "host",
        *env_args(aws_env(endpoint)),
        task.batch_image,
        *args,
        check=False,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ndvi_batch_run(ndvi_task: TaskImages, s3_endpoint: str) -> dict[str, Any]:
    """The NDVI Batch image run once on a payload in S3, as Batch runs it."""
    s3 = aws_client("s3", s3_endpoint)
    bucket = "nb2task-batch-image-ndvi"
    s3.create_bucket(Bucket=bucket)
    url_in = put_json(s3, bucket, "payloads/in.json", ndvi_payload(s3, bucket))
    url_out = f"s3://{bucket}/payloads/out.json"
    # The job definition's command, with Ref::url and Ref::url_out filled in as Batch does.
    refs = {"Ref::url": url_in, "Ref::url_out": url_out}
    command = [refs.get(arg, arg) for arg in ndvi_task.container_properties["command"]]
    assert command == ["run", url_in, "--output", url_out]
    t0 = time.monotonic()
    proc = run_batch(ndvi_task, s3_endpoint, *command)
    REPORT["batch run (ndvi, docker run)"] = f"{time.monotonic() - t0:.1f} s"
    return {"s3": s3, "bucket": bucket, "url_in": url_in, "url_out": url_out, "proc": proc}


def test_batch_image_runs_ndvi_from_s3_to_s3(ndvi_batch_run: dict[str, Any]) -> None:
    run = ndvi_batch_run
    s3, bucket, proc = run["s3"], run["bucket"], run["proc"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the output payload went to S3
    check_ndvi_output(s3, bucket, get_json(s3, run["url_out"]))
    # The input is untouched; Cirrus reads only url_out.
    assert get_json(s3, run["url_in"])["features"][0]["id"] == NDVI_ID


def test_batch_output_links_are_not_local(ndvi_batch_run: dict[str, Any]) -> None:
    s3, proc = ndvi_batch_run["s3"], ndvi_batch_run["proc"]
    assert proc.returncode == 0, proc.stderr
    output = get_json(s3, ndvi_batch_run["url_out"])
    assert local_hrefs(output) == []
    [item] = output["features"]
    derived_from = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert derived_from == [
        f"https://example.com/stac/collections/sentinel-2-l2a-sample/items/{NDVI_ID}"
    ]


def last_log_line(name: str) -> tuple[str, str]:
    """The container's last log line (what CloudWatch shows last) and all its stdout."""
    logs = images.docker("logs", name)
    lines = [line for line in logs.stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else ""), logs.stdout


@pytest.mark.parametrize(
    ("mode", "exit_code", "line"),
    [
        (
            "invalid",
            3,
            r"stactask\.exceptions\.InvalidInput: no usable band in item-1 "
            r"\(notebook cell In \[\d+\], line 2: raise InvalidInput\(f\"no usable band in \{items\[0\]\.id\}\"\)\)",
        ),
        (
            "divide",
            1,
            r"ZeroDivisionError: division by zero "
            r"\(notebook cell In \[\d+\], line 1: ratio = 1 / 0 if mode == \"divide\" else 1\.0\)",
        ),
    ],
)
def test_batch_image_failure_follows_the_cirrus_error_contract(
    failing_task: TaskImages,
    s3_endpoint: str,
    s3: Any,
    bucket: str,
    mode: str,
    exit_code: int,
    line: str,
) -> None:
    payload = make_payload(
        tasks={"failing": {"mode": mode}},
        upload_options={"path_template": f"s3://{bucket}/runs/${{id}}/"},
    )
    url_in = put_json(s3, bucket, "payloads/in.json", payload)
    url_out = f"s3://{bucket}/payloads/out.json"
    name = f"nb2task-batch-{mode}-{uuid.uuid4().hex[:8]}"
    try:
        proc = run_batch(failing_task, s3_endpoint, "run", url_in, "--output", url_out, name=name)
        assert proc.returncode == exit_code, proc.stderr
        last, stdout = last_log_line(name)
    finally:
        images.docker("rm", "-f", name, check=False)
    # Cirrus' post-batch step reads the last line of the job's log: stdout stays empty, so the
    # last stderr line is the last line of the log.
    assert stdout == ""
    assert re.fullmatch(line, last), last
    assert "payloads/out.json" not in keys(s3, bucket)
    # The executed notebook, with the error, is uploaded on failure too.
    record = [k for k in keys(s3, bucket, "runs/item-1/") if k.endswith(".ipynb")]
    assert record, keys(s3, bucket)
    executed = get_bytes(s3, f"s3://{bucket}/{record[0]}").decode()
    assert ("InvalidInput" if mode == "invalid" else "ZeroDivisionError") in executed


# --- Lambda image through the Runtime Interface Emulator --------------------------------


class LambdaContainer:
    """A Lambda image running under the RIE (as /lambda-entrypoint.sh does outside Lambda)."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port

    def invoke(self, event: Any, timeout: float = 300) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{INVOKE_PATH}",
            data=json.dumps(event).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode(errors="replace")

    def logs(self) -> str:
        proc = images.docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr


@contextlib.contextmanager
def lambda_container(task: TaskImages, env: dict[str, str]) -> Iterator[LambdaContainer]:
    """Run task's Lambda image detached, as Lambda would (read-only, /tmp of the definition's
    ephemeral storage, unprivileged), with the emulator on a free loopback port."""
    settings = task.definition["lambda"]
    port, api_port = images.free_port(), images.free_port()
    name = f"nb2task-lambda-{task.name}-{uuid.uuid4().hex[:8]}"
    lambda_env = {
        **env,
        **settings.get("env_vars", {}),
        "RIE_PORT": str(port),
        "RIE_RUNTIME_API_PORT": str(api_port),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(settings["timeout_seconds"]),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings["memory_mb"]),
        "AWS_LAMBDA_FUNCTION_NAME": task.name,
    }
    images.docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        f"/tmp:rw,size={settings['ephemeral_storage_mb']}m",
        "--user",
        LAMBDA_USER,
        *env_args(lambda_env),
        task.lambda_image,
        *settings["image_config"]["command"],  # FilmDrop's image_config.command: the handler
    )
    container = LambdaContainer(name, port)
    try:
        deadline = time.monotonic() + 30
        while not images.listening(port):
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.1)
        yield container
    finally:
        images.docker("rm", "-f", name, check=False)


def test_lambda_image_runs_ndvi_through_the_emulator(
    ndvi_task: TaskImages, s3_endpoint: str, s3: Any, bucket: str
) -> None:
    payload = ndvi_payload(s3, bucket)
    url_in = put_json(s3, bucket, "payloads/in.json", payload)
    env = {**aws_env(s3_endpoint), "CIRRUS_PAYLOAD_BUCKET": bucket}
    with lambda_container(ndvi_task, env) as fn:
        timings = []
        for event in (payload, {"url": url_in}):
            for key in keys(s3, bucket, "ndvi/"):
                s3.delete_object(Bucket=bucket, Key=key)
            t0 = time.monotonic()
            status, headers, output = fn.invoke(event)
            timings.append(time.monotonic() - t0)
            assert status == 200, (output, fn.logs())
            assert "X-Amz-Function-Error" not in headers
            assert "errorType" not in output, (output, fn.logs())
            check_ndvi_output(s3, bucket, output)
        logs = fn.logs()
    REPORT["lambda invocations (ndvi, RIE)"] = (
        f"first (cold) {timings[0]:.1f} s, second (warm) {timings[1]:.1f} s"
    )
    # Log lines carry the payload id (the request id is the emulator's).
    assert re.search(r"\[INFO\] \S+ " + re.escape(payload["id"]) + " ", logs), logs


def test_lambda_image_failures_and_oversized_output(
    failing_task: TaskImages, s3_endpoint: str, s3: Any, bucket: str
) -> None:
    env = {**aws_env(s3_endpoint), "CIRRUS_PAYLOAD_BUCKET": bucket}

    def event(mode: str, pad: int = 0) -> dict[str, Any]:
        return make_payload(tasks={"failing": {"mode": mode, "pad": pad}})

    with lambda_container(failing_task, env) as fn:
        # One warm container serves all: a failed invocation does not spoil the next.
        status, _, result = fn.invoke(event("invalid"))
        assert status == 200, result
        assert result["errorType"] == "stactask.exceptions.InvalidInput", result
        assert result["errorMessage"].startswith("no usable band in item-1 (notebook cell In [")

        status, _, result = fn.invoke(event("divide"))
        assert status == 200, result
        assert result["errorType"] == "ZeroDivisionError", result
        assert result["errorMessage"].startswith("division by zero (notebook cell In [")

        status, _, result = fn.invoke(event("ok"))
        assert status == 200, result
        [item] = result["features"]
        assert item["properties"]["mode"] == "ok"

        # Over Cirrus' 120 000 characters: the output goes to CIRRUS_PAYLOAD_BUCKET.
        status, _, result = fn.invoke(event("ok", pad=130_000))
        assert status == 200, (result, fn.logs())
        assert list(result) == ["url"], result
        assert result["url"].startswith(f"s3://{bucket}/tmp/oversized/")
        [item] = get_json(s3, result["url"])["features"]
        assert len(item["properties"]["padding"]) == 130_000


def test_lambda_payload_url_event_that_does_not_exist_is_invalid(
    failing_task: TaskImages, s3_endpoint: str, bucket: str
) -> None:
    with lambda_container(failing_task, aws_env(s3_endpoint)) as fn:
        status, _, result = fn.invoke({"url": f"s3://{bucket}/nothing-here.json"})
    assert status == 200
    assert result["errorType"] == "stactask.exceptions.InvalidInput", result


# --- AWS Batch through moto's Batch API --------------------------------------------------


JOB_PREFIX = "nb2task-job-"  # moto names a job's container after the job, see job_containers


def wait_for_jobs(
    batch: Any, job_ids: list[str], timeout: float = 180
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["jobId"]: j for j in batch.describe_jobs(jobs=job_ids)["jobs"]}
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, {k: j["status"] for k, j in jobs.items()}
        time.sleep(0.5)


def log_messages(endpoint: str, job: dict[str, Any]) -> list[str]:
    stream = job["container"]["logStreamName"]
    events = aws_client("logs", endpoint).get_log_events(
        logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True
    )["events"]
    return [e["message"] for e in events]


def test_batch_jobs_through_the_batch_api(
    moto_batch: str, ndvi_task: TaskImages, failing_task: TaskImages
) -> None:
    endpoint = moto_batch
    s3, batch = aws_client("s3", endpoint), aws_client("batch", endpoint)
    bucket = "nb2task-batch-api"
    s3.create_bucket(Bucket=bucket)

    queue_arn = create_job_queue(endpoint, "nb2task-queue")

    # Two jobs as Cirrus' pre-batch step submits them: the NDVI task, and a task that fails
    # with InvalidInput (Cirrus' post-batch step reads the last log line to say INVALID).
    ndvi_in = put_json(s3, bucket, "ndvi/in.json", ndvi_payload(s3, bucket))
    fail_in = put_json(
        s3,
        bucket,
        "failing/in.json",
        make_payload(features=[sample_item()], tasks={"failing": {"mode": "invalid"}}),
    )
    submitted = {}
    t0 = time.monotonic()
    for task, url in ((ndvi_task, ndvi_in), (failing_task, fail_in)):
        definition_arn = register_job_definition(batch, task.definition, endpoint)
        url_out = url.replace("/in.json", "/out.json")
        job = batch.submit_job(
            jobName=f"{JOB_PREFIX}{task.name}-{uuid.uuid4().hex[:8]}",
            jobQueue=queue_arn,
            jobDefinition=definition_arn,
            parameters={"url": url, "url_out": url_out},
        )
        submitted[task.name] = (job["jobId"], url_out)
    jobs = wait_for_jobs(batch, [job_id for job_id, _ in submitted.values()])
    REPORT["batch jobs through moto's Batch API (2, concurrent)"] = f"{time.monotonic() - t0:.1f} s"

    ndvi_job_id, ndvi_out = submitted["ndvi"]
    ndvi_job = jobs[ndvi_job_id]
    ndvi_logs = log_messages(endpoint, ndvi_job)
    assert ndvi_job["status"] == "SUCCEEDED", (ndvi_job.get("statusReason"), ndvi_logs)
    # moto without a working Docker also says SUCCEEDED: the output proves the container ran.
    assert ndvi_out.removeprefix(f"s3://{bucket}/") in keys(s3, bucket), "\n".join(ndvi_logs)
    check_ndvi_output(s3, bucket, get_json(s3, ndvi_out))
    assert ndvi_job["container"]["command"] == ["run", "Ref::url", "--output", "Ref::url_out"]
    assert ndvi_job["parameters"] == {"url": ndvi_in, "url_out": ndvi_out}
    assert any("run record uploaded" in m for m in ndvi_logs), ndvi_logs

    fail_job_id, _ = submitted["failing"]
    fail_job = jobs[fail_job_id]
    fail_logs = log_messages(endpoint, fail_job)
    assert fail_job["status"] == "FAILED", fail_logs
    assert fail_job["container"].get("exitCode", 3) == 3
    assert fail_logs[-1].startswith("stactask.exceptions.InvalidInput: no usable band"), fail_logs
    assert "failing/out.json" not in keys(s3, bucket, "failing/")

    # moto removes job containers (named after the job) when done.
    assert images.job_containers(JOB_PREFIX) == []


def test_no_container_is_left_behind(docker_host: str) -> None:
    names = images.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in names if n.startswith("nb2task-")], names
