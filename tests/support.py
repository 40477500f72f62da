"""Test helpers, each written once: notebooks and payloads made on the fly, the CLI as a
subprocess, the fake AWS environment and S3 helpers, the NDVI sample scene on S3.

Importable from every test folder (``pythonpath = ["tests"]`` in pyproject.toml). The
Cirrus judge (tests/cirrus/judge.py) runs in a venv of its own and does not use it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
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
