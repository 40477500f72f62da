"""Session fixtures for the container tests: a private Docker daemon, the local Lambda base
stand-in and nb2task's shared base image (Dockerfile.base) built on it.

Skipped when dockerd is not installed, unless NB2TASK_REQUIRE_CONTAINERS=1 (as in CI), which
turns that into a failure. Environment:
  NB2TASK_TEST_CACHE   cache for the Debian tarball, the emulator, the daemon (~/.cache/...)
  NB2TASK_DOCKER_ROOT  the daemon's directory (default: $NB2TASK_TEST_CACHE/dockerd); a daemon
                       already running there (e.g. started by .ci/run) is reused and left running
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import images
import pytest
import yaml
from images import TaskImages
from support import NB2TASK, REPO, write_notebook

HERE = Path(__file__).resolve().parent

# Timings and sizes collected during the session, printed in the terminal summary.
REPORT = images.REPORT


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


# --- Task images: what `nb2task build` emits, built for real -----------------------------


def build_task_images(notebook: Path, out: Path, base_image: str) -> TaskImages:
    """Run the real ``nb2task build`` on notebook, then build both targets of its Dockerfile
    (each reused when its context, target and base image are unchanged)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [NB2TASK, "build", str(notebook), "-o", str(out), "--base-image", base_image],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    definition = yaml.safe_load((out / "definition.yaml").read_text())
    name = definition["name"]
    lambda_ref = definition["lambda"]["ecr_image_uri"]
    batch_ref = json.loads(definition["batch"]["container_properties"])["image"]
    # The images `nb2task build` announces are the ones its definition deploys.
    assert f"lambda image: {lambda_ref}" in proc.stdout
    assert f"batch image:  {batch_ref}" in proc.stdout
    REPORT[f"{name} context"] = f"nb2task build in {time.monotonic() - t0:.1f} s"
    base_size = images.image_size(base_image)
    for target, ref in (("lambda", lambda_ref), ("batch", batch_ref)):
        t0 = time.monotonic()
        _, built = images.ensure_context_image(out, target, ref, base_image)
        size = images.image_size(ref)
        how = "built" if built else "reused (same inputs)"
        REPORT[f"{name} {target} image"] = (
            f"{ref}, {_mb(size)} ({_mb(size - base_size)} over the base), "
            f"{how} in {time.monotonic() - t0:.1f} s"
        )
    return TaskImages(name, out, definition, lambda_ref, batch_ref)


@pytest.fixture(scope="session")
def ndvi_task(nb2task_base_image: str, tmp_path_factory: pytest.TempPathFactory) -> TaskImages:
    """The NDVI example (rasterio, numpy) as Lambda and Batch images."""
    out = tmp_path_factory.mktemp("ndvi-build") / "ctx"
    return build_task_images(REPO / "notebooks" / "ndvi.ipynb", out, nb2task_base_image)


# A task whose outcome is a parameter: one small image covers success, Cirrus' INVALID
# (stactask.exceptions.InvalidInput raised in the notebook) and FAILED (any other error).
FAILING_PARAMETERS = """\
payload = "payload.json"  # nb2task injects the real one
mode: str = "ok"  # ok, invalid (raise InvalidInput) or divide (ZeroDivisionError)
pad: int = 0  # characters of padding per output item (oversized outputs)"""

FAILING_CELLS = (
    "import nb2task\n"
    "from stactask.exceptions import InvalidInput\n\n"
    "items = nb2task.read_items(payload)",
    'if mode == "invalid":\n    raise InvalidInput(f"no usable band in {items[0].id}")',
    'ratio = 1 / 0 if mode == "divide" else 1.0',
    "for item in items:\n"
    '    item.properties["mode"] = mode\n'
    '    item.properties["padding"] = "x" * pad\n'
    "nb2task.emit(items)",
)


@pytest.fixture(scope="session")
def failing_task(nb2task_base_image: str, tmp_path_factory: pytest.TempPathFactory) -> TaskImages:
    """A small notebook that succeeds or fails as its ``mode`` parameter says."""
    src = tmp_path_factory.mktemp("failing-src")
    notebook = write_notebook(
        src / "failing.ipynb",
        FAILING_PARAMETERS,
        *FAILING_CELLS,
        metadata={"name": "failing", "version": "0.1.0", "description": "fails on request"},
    )
    # nbformat gives new cells random ids, which `nb2task build` keeps: fixed ones keep the
    # context, and so the cached images, the same from run to run.
    document = json.loads(notebook.read_text())
    for index, cell in enumerate(document["cells"]):
        cell["id"] = f"cell-{index}"
    notebook.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    out = tmp_path_factory.mktemp("failing-build") / "ctx"
    return build_task_images(notebook, out, nb2task_base_image)


# --- AWS Batch: a moto server whose jobs are containers on our daemon --------------------


@pytest.fixture(scope="session")
def moto_batch(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server (S3, Batch, CloudWatch Logs) that runs Batch jobs as containers on our
    daemon, on the host network; its endpoint."""
    log = tmp_path_factory.mktemp("moto-batch") / "moto_server.log"
    with images.moto_server(docker_host, log) as endpoint:
        yield endpoint
