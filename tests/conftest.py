"""Shared fixtures (helpers live in support.py)."""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ENGINES, PAYLOADS, REPO, CliResult, aws_client, aws_env, run_cli

# --- Nothing a test does may land in the repository -----------------------------------------

# Not looked into: version control, the venv, tool caches (pytest writes __pycache__
# next to test modules when bytecode is on).
UNWATCHED = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
# Tests read these: their content must not change either.
WATCHED_CONTENT = ("notebooks", "tests/fixtures", "tests/cirrus/fixtures")


def repo_tree() -> dict[str, tuple[int, int] | None]:
    """Every path in the repository (files and folders, git-ignored ones too), with
    (size, mtime) for the files whose content the tests read."""
    tree: dict[str, tuple[int, int] | None] = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in UNWATCHED and not d.endswith(".egg-info")]
        base = Path(root).relative_to(REPO)
        for name in dirs:
            tree[f"{base / name}/"] = None
        for name in files:
            path = base / name
            stat = None
            if str(path).startswith(WATCHED_CONTENT):
                info = (Path(root) / name).stat()
                stat = (info.st_size, info.st_mtime_ns)
            tree[str(path)] = stat
    return tree


@pytest.fixture(scope="session", autouse=True)
def repo_stays_clean() -> Iterator[None]:
    """Fails the session (an error at the last teardown) if the tests created, removed or
    rewrote anything in the repository: tests work in tmp_path. Editing the tree while
    the tests run shows up here too (new or removed files)."""
    before = repo_tree()
    yield
    after = repo_tree()
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    if created or removed or changed:
        pytest.fail(
            "the tests changed the repository tree (work in tmp_path):\n"
            + "".join(f"  created {p}\n" for p in created)
            + "".join(f"  removed {p}\n" for p in removed)
            + "".join(f"  changed {p}\n" for p in changed),
            pytrace=False,
        )


# --- Workers ------------------------------------------------------------------------------------


GROUPS = ("containers", "cirrus")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist: the container tests share one Docker daemon and the Cirrus tests
    one judge venv, so each group runs in a single worker."""
    for item in items:
        for group in GROUPS:
            if f"{os.sep}{group}{os.sep}" in str(item.path):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail at once, not with a daemon stopped under another worker's feet, if xdist did
    not group (its group is a suffix of the node id, which some pytest versions drop)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"pytest-xdist did not put {item.nodeid} in its group: pytest and "
                "pytest-xdist do not fit (see pyproject.toml)"
            )


# --- Engines -----------------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each engine in turn: ``NB2TASK_ENGINE`` is what ``nb2task run`` (as the default of
    --engine) and the Lambda handler read, here and in every subprocess started."""
    monkeypatch.setenv("NB2TASK_ENGINE", request.param)
    return str(request.param)


# --- Files and the CLI -----------------------------------------------------------------------


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    return run_cli


@pytest.fixture
def fixture_payload() -> Callable[[str], dict[str, Any]]:
    """Load a payload from tests/fixtures/payloads by file name."""

    def load(name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
        return copy.deepcopy(document)

    return load


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    def write(name: str, document: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(document))
        return path

    return write


# --- S3: a moto server --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint: moto's server on loopback, reached over HTTP by boto3, s3fs,
    stac-asset and every nb2task subprocess (this process's environment points AWS
    clients at it from first use to the end of the session)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = aws_env(endpoint)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    # nb2task keeps one S3 client per process, bound to the environment it was made in: one
    # made before (e.g. by the Lambda handler's init in tests/cirrus) would miss moto.
    import nb2task.payload

    nb2task.payload._s3 = None
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client on the test endpoint."""
    return aws_client("s3", s3_endpoint)


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test (one per parametrized case too)."""
    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())
    name = f"nb2task-{slug[:36].strip('-')}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name
