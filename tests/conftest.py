"""Shared fixtures (helpers live in nbtest.py)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nbtest import FIXTURES, CliResult, run_cli


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    return run_cli


@pytest.fixture
def fixture_payload() -> Callable[[str], dict[str, Any]]:
    """Load a payload from tests/fixtures/payloads by file name."""

    def load(name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((FIXTURES / "payloads" / name).read_text())
        return copy.deepcopy(document)

    return load


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    def write(name: str, document: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(document))
        return path

    return write


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint: moto's server on loopback, reached over HTTP by boto3, s3fs,
    stac-asset and every nb2task subprocess (through AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "",
}


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client on the test endpoint."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test."""
    name = "nb2task-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + "-b"
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    s3.create_bucket(Bucket=name)
    return name
