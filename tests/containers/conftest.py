"""Session fixtures for the container tests: a private Docker daemon, the local Lambda base
stand-in and nb2task's shared base image (Dockerfile.base) built on it.

Skipped when dockerd is not installed, unless NB2TASK_REQUIRE_CONTAINERS=1 (as in CI), which
turns that into a failure. Environment:
  NB2TASK_TEST_CACHE   cache for the Debian tarball, the emulator, the daemon (~/.cache/...)
  NB2TASK_DOCKER_ROOT  the daemon's directory (default: $NB2TASK_TEST_CACHE/dockerd); a daemon
                       already running there (e.g. started by .ci/run) is reused and left running
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import images
import pytest

HERE = Path(__file__).resolve().parent

# Timings and sizes collected during the session, printed in the terminal summary.
REPORT: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.container)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("container images")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


@pytest.fixture(scope="session")
def container_cache() -> Path:
    """Where slow inputs are cached between runs on this machine."""
    cache = images.default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def docker_host(container_cache: Path) -> Iterator[str]:
    """DOCKER_HOST of a running private daemon; stopped at the end if this session started it."""
    reason = images.dockerd_available()
    if reason:
        if os.environ.get("NB2TASK_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"NB2TASK_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    root = Path(os.environ.get("NB2TASK_DOCKER_ROOT") or container_cache / "dockerd")
    was_running = images.daemon_running(root)
    t0 = time.monotonic()
    host = images.ensure_daemon(root)
    if not was_running:
        REPORT["dockerd start"] = f"{time.monotonic() - t0:.1f} s ({host})"
    try:
        yield host
    finally:
        if not was_running:
            images.stop_daemon(root)


@pytest.fixture(scope="session")
def lambda_base_standin(docker_host: str, container_cache: Path) -> str:
    """Image ref of the local stand-in for the AWS Lambda Python base image."""
    t0 = time.monotonic()
    ref = images.ensure_lambda_base_standin(container_cache)
    REPORT["lambda base stand-in"] = (
        f"{ref}, {_mb(images.image_size(ref))}, ready in {time.monotonic() - t0:.1f} s"
    )
    return ref


@pytest.fixture(scope="session")
def nb2task_base_image(lambda_base_standin: str) -> str:
    """Image ref of Dockerfile.base built on the stand-in (BuildKit's cache makes reruns fast)."""
    t0 = time.monotonic()
    ref = images.build_base_image(lambda_base_standin)
    size = images.image_size(ref)
    added = size - images.image_size(lambda_base_standin)
    REPORT["nb2task base image"] = (
        f"{ref}, {_mb(size)} ({_mb(added)} over the stand-in), "
        f"built in {time.monotonic() - t0:.1f} s"
    )
    return ref
