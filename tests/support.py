"""Test helpers, each written once: notebooks and payloads made on the fly, the CLI as a
subprocess, the fake AWS environment and S3 helpers, the NDVI sample scene on S3.

Importable from every test folder (``pythonpath = ["tests"]`` in pyproject.toml). The
Cirrus judge (tests/cirrus/judge.py) runs in a venv of its own and does not use it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAYLOADS = FIXTURES / "payloads"
NOTEBOOKS = REPO / "notebooks"
BIN = Path(sys.executable).parent
NB2TASK = str(BIN / "nb2task")
NB2TASK_TASK = str(BIN / "nb2task-task")

ENGINES = ("fork", "kernel")

# --- Items, payloads, notebooks ---------------------------------------------------------


def sample_item(item_id: str = "item-1", **properties: Any) -> dict[str, Any]:
    """A small valid STAC item."""
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": "test-collection",
        "geometry": {"type": "Point", "coordinates": [10.0, 50.0]},
        "bbox": [10.0, 50.0, 10.0, 50.0],
        "properties": {"datetime": "2024-05-01T10:00:00Z", **properties},
        "links": [{"rel": "self", "href": f"https://example.com/items/{item_id}"}],
        "assets": {},
    }


def make_payload(
    tasks: dict[str, dict[str, Any]] | None = None,
    workflow_options: dict[str, Any] | None = None,
    features: list[dict[str, Any]] | None = None,
    **process: Any,
) -> dict[str, Any]:
    """A Cirrus process payload around ``features`` (one sample item by default)."""
    definition: dict[str, Any] = {"workflow": "test-workflow", "upload_options": {}}
    if tasks is not None:
        definition["tasks"] = tasks
    if workflow_options is not None:
        definition["workflow_options"] = workflow_options
    definition.update(process)
    return {
        "type": "FeatureCollection",
        "id": "test-collection/workflow-test-workflow/item-1",
        "features": features if features is not None else [sample_item()],
        "process": [definition],
    }


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_notebook(
    path: Path,
    parameters: str | None,
    *cells: str | tuple[str, list[str]],
    metadata: dict[str, Any] | None = None,
    markdown: str | None = None,
) -> Path:
    """Write a notebook: a markdown cell (if given), a ``parameters`` cell (if given),
    then code cells. A cell given as ``(source, tags)`` carries those tags."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if metadata is not None:
        nb.metadata["nb2task"] = metadata
    if markdown is not None:
        nb.cells.append(new_markdown_cell(markdown))
    if parameters is not None:
        cell = new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for spec in cells:
        source, tags = (spec, []) if isinstance(spec, str) else spec
        cell = new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def listing(directory: Path) -> list[str]:
    """Every path under ``directory``, relative and sorted; [] if it does not exist."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# --- The CLI ------------------------------------------------------------------------------


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(
    *args: str | Path,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    program: str = NB2TASK,
    timeout: float = 300,
) -> CliResult:
    """Run the real ``nb2task`` console script (or ``program``, e.g. ``NB2TASK_TASK``).

    ``env`` is added to this process's environment (which carries the fake AWS settings
    and ``NB2TASK_ENGINE`` the fixtures set); a value of None removes that variable.
    """
    environment = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    proc = subprocess.run(
        [program, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_cli_on_a_terminal(*args: str | Path, cwd: Path | None = None) -> CliResult:
    """``run_cli`` with stderr on a pseudo-terminal, as a person at a terminal sees it
    (escape codes included); stdout stays a pipe."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [NB2TASK, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=cwd,
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal's other side closed: all is read
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    os.close(leader)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(timeout=60)
    return CliResult(proc.returncode, stdout, seen.decode().replace("\r\n", "\n"))


def run_task(
    notebook: Path, payload: dict[str, Any] | str | Path, workdir: Path, **options: Any
) -> tuple[dict[str, Any] | None, Exception | None]:
    """Run ``notebook`` on ``payload`` in this process, as ``run --local --workdir``
    does (about a second faster than the CLI, which loads everything anew): the output
    payload, or the error the run ended with."""
    from nb2task.publish import UrlOutput
    from nb2task.runner import Runner, RunOptions

    with Runner(notebook, RunOptions.local(workdir, **options)) as runner:
        try:
            return runner.run(payload, UrlOutput(workdir / "output-payload.json")), None
        except Exception as err:  # noqa: BLE001 - the test looks at it
            return None, err


# --- AWS: fake credentials, S3 --------------------------------------------------------------

AWS_REGION = "us-east-1"
# What boto3 and every nb2task subprocess or container need to take a moto server for AWS
# (with AWS_ENDPOINT_URL, see ``aws_env``): never real credentials.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": AWS_REGION,
    "AWS_REGION": AWS_REGION,
}


def aws_env(endpoint: str) -> dict[str, str]:
    """The environment that sends every AWS client to the moto server at ``endpoint``."""
    return {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": endpoint}


def aws_client(service: str, endpoint: str) -> Any:
    """A boto3 client for ``service`` on the moto server at ``endpoint``, whatever
    this process's environment says."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=AWS_REGION,
        aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
    )


def create_job_queue(endpoint: str, name: str) -> str:
    """An enabled Batch job queue on an UNMANAGED compute environment (with its service
    role) on the moto server at ``endpoint``; its ARN."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "batch.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role_arn = aws_client("iam", endpoint).create_role(
        RoleName=f"{name}-service", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    batch = aws_client("batch", endpoint)
    env_arn = batch.create_compute_environment(
        computeEnvironmentName=f"{name}-env",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=role_arn,
    )["computeEnvironmentArn"]
    queue_arn: str = batch.create_job_queue(
        jobQueueName=name,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}],
    )["jobQueueArn"]
    return queue_arn


def snake_to_camel(value: Any) -> Any:
    """FilmDrop's snake_case keys (retry_strategy) as Batch's API spells them."""
    if isinstance(value, dict):
        return {
            re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): snake_to_camel(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [snake_to_camel(v) for v in value]
    return value


def register_job_definition(batch: Any, definition: dict[str, Any], endpoint: str) -> str:
    """Register a task's Batch job definition (its definition.yaml, parsed) as FilmDrop's
    module would, plus what the container needs to reach moto (in AWS: the job role and the
    real endpoints); its ARN."""
    spec = definition["batch"]
    properties = json.loads(spec["container_properties"])
    properties["environment"] = properties.get("environment", []) + [
        {"name": k, "value": v} for k, v in sorted(aws_env(endpoint).items())
    ]
    # moto substitutes the first parameter whose "Ref::name" is a substring of an argument, so
    # "Ref::url_out" became "<url>_out" with url first (AWS Batch replaces whole placeholders):
    # longest names first. moto merges submit_job's parameters into this order.
    parameters = dict(sorted(spec["parameters"].items(), key=lambda kv: -len(kv[0])))
    response = batch.register_job_definition(
        jobDefinitionName=f"{definition['name']}-job",
        type="container",
        parameters=parameters,
        containerProperties=properties,
        retryStrategy=snake_to_camel(spec["retry_strategy"]),
        timeout={"attemptDurationSeconds": spec["timeout_seconds"]},
    )
    return str(response["jobDefinitionArn"])


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key)."""
    assert url.startswith("s3://"), url
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return bucket, key


def put_json(s3: Any, bucket: str, key: str, document: Any) -> str:
    """Store ``document`` as JSON at s3://bucket/key; return that URL."""
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())
    return f"s3://{bucket}/{key}"


def get_bytes(s3: Any, url: str) -> bytes:
    bucket, key = split_s3_url(url)
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def get_json(s3: Any, url: str) -> Any:
    return json.loads(get_bytes(s3, url))


def keys(s3: Any, bucket: str, prefix: str = "") -> set[str]:
    """The keys in ``bucket`` (under ``prefix``)."""
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"] for o in found}


# --- The NDVI example on S3 -----------------------------------------------------------------

NDVI_ID = "S2B_33TUG_20240704_0_L2A-sample"
NDVI_BANDS = ("red", "nir")


def ndvi_payload(
    s3: Any, bucket: str, download_assets: tuple[str, ...] | None = NDVI_BANDS
) -> dict[str, Any]:
    """The NDVI sample payload with its red and NIR bands uploaded to ``bucket``
    (``src/<band>.tif``), outputs to ``s3://bucket/ndvi/<id>/``, and (unless None)
    ``tasks.ndvi.download_assets``."""
    payload: dict[str, Any] = copy.deepcopy(load_json(NOTEBOOKS / "ndvi.payload.json"))
    [item] = payload["features"]
    for band in NDVI_BANDS:
        key = f"src/{band}.tif"
        s3.upload_file(str(NOTEBOOKS / "data" / f"sample-{band}.tif"), bucket, key)
        item["assets"][band]["href"] = f"s3://{bucket}/{key}"
    process = payload["process"][0]
    process["upload_options"]["path_template"] = f"s3://{bucket}/ndvi/${{id}}/"
    if download_assets is not None:
        process["tasks"]["ndvi"]["download_assets"] = list(download_assets)
    return payload


def hrefs(document: Any) -> Iterator[str]:
    """Every href in a JSON document."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "href" and isinstance(value, str):
                yield value
            else:
                yield from hrefs(value)
    elif isinstance(document, list):
        for value in document:
            yield from hrefs(value)


def local_hrefs(document: Any) -> list[str]:
    """The hrefs of a JSON document that point at a local file (not s3/http/https)."""
    return [h for h in hrefs(document) if not h.startswith(("s3://", "http://", "https://"))]


# --- Storage faults ---------------------------------------------------------------------------


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of the moto server that injects storage faults.

    ``fail(n, status, code)`` answers the next ``n`` requests (whose method is in
    ``methods``, if given) with an S3 error instead of forwarding them, as S3 does when it
    throttles (503 SlowDown) or breaks (500). Everything else is forwarded unchanged.
    """

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        # (status, code, methods, requests to let through first, path part), one a failure
        self.failures: list[tuple[int, str, frozenset[str], int, str]] = []
        self.passed: dict[int, int] = {}
        self.failed = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                if fault is not None:
                    status, code = fault
                    text = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = target.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(
        self,
        n: int,
        status: int = 503,
        code: str = "SlowDown",
        methods: str = "",
        after: int = 0,
        path: str = "",
    ) -> None:
        """Answer ``n`` requests (of ``methods``, e.g. "PUT GET", to a URL path holding
        ``path``) with an error, once ``after`` of them have gone through."""
        with self.lock:
            self.failures += [(status, code, frozenset(methods.split()), after, path)] * n

    def _take(self, method: str, url_path: str) -> tuple[int, str] | None:
        with self.lock:
            for index, (status, code, methods, after, path) in enumerate(self.failures):
                if (methods and method not in methods) or path not in url_path:
                    continue
                key = hash((status, code, methods, after, path))
                if self.passed.get(key, 0) < after:
                    self.passed[key] = self.passed.get(key, 0) + 1
                    return None
                del self.failures[index]
                self.failed += 1
                return status, code
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connections are refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- The Lambda handler, in this process ---------------------------------------------------


@contextlib.contextmanager
def warm_lambda(notebook: Path, engine: str) -> Iterator[Callable[[Any], Any]]:
    """nb2task's Lambda handler on ``notebook``, one warm container (runner) for the
    ``with`` block, as Lambda keeps one between invocations."""
    from nb2task import lambda_function

    saved = {k: os.environ.get(k) for k in ("NB2TASK_NOTEBOOK", "NB2TASK_ENGINE")}
    os.environ.update(NB2TASK_NOTEBOOK=str(notebook), NB2TASK_ENGINE=engine)
    lambda_function._runner.cache_clear()
    try:
        yield lambda event: lambda_function.lambda_handler(event, None)
    finally:
        if lambda_function._runner.cache_info().currsize:
            lambda_function._runner().close()
        lambda_function._runner.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
