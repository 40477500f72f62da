"""nb2task's shared base image (Dockerfile.base) on the local Lambda base stand-in: it builds,
its tools work, and a notebook runs as it would in Lambda (read-only root, only /tmp writable,
not root). Also the stand-in's own Lambda contract, which the Lambda image tests rely on."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

import images
import nbformat
import pytest
from support import REPO, write_notebook

import nb2task

pytestmark = pytest.mark.container

# As in Lambda: the root filesystem is read-only, /tmp is a small writable tmpfs, and the
# function runs as an unprivileged user.
LAMBDA_LIKE = ("--read-only", "--tmpfs", "/tmp:rw,size=512m", "--user", "993:990")


def run_in(
    image: str,
    entrypoint: str,
    *args: str,
    options: tuple[str, ...] = LAMBDA_LIKE,
    timeout: float = 120,
) -> str:
    """Run a command in a throwaway container on the host network; return its stdout."""
    proc = images.docker(
        "run",
        "--rm",
        "--network",
        "host",
        *options,
        "--entrypoint",
        entrypoint,
        image,
        *args,
        timeout=timeout,
    )
    return proc.stdout


def test_daemon_has_no_bridge(docker_host: str) -> None:
    names = images.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "bridge" not in names
    assert "host" in names


def test_base_image_builds_on_the_standin(
    nb2task_base_image: str, lambda_base_standin: str
) -> None:
    def config(ref: str) -> dict:
        return json.loads(
            images.docker("image", "inspect", "--format", "{{json .Config}}", ref).stdout
        )

    base, standin = config(nb2task_base_image), config(lambda_base_standin)
    # No CMD or ENTRYPOINT of its own: the thin Lambda and Batch images add them.
    assert base["Entrypoint"] == standin["Entrypoint"] == ["/lambda-entrypoint.sh"]
    assert base["Cmd"] == standin["Cmd"]
    env = dict(e.split("=", 1) for e in base["Env"])
    for key in (
        "HOME",
        "IPYTHONDIR",
        "JUPYTER_RUNTIME_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_CONFIG_DIR",
        "MPLCONFIGDIR",
    ):
        assert env[key].startswith("/tmp"), key
    assert env["PATH"].startswith("/var/lang/bin:")
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    size = images.image_size(nb2task_base_image)
    print(f"{nb2task_base_image}: {size / 1e6:.0f} MB")
    assert size < 1_000_000_000


def test_nb2task_version(nb2task_base_image: str) -> None:
    out = run_in(nb2task_base_image, "nb2task", "--version")
    assert out.strip() == f"nb2task {nb2task.__version__}"


def test_kernelspec_is_found_read_only(nb2task_base_image: str) -> None:
    specs = json.loads(run_in(nb2task_base_image, "jupyter", "kernelspec", "list", "--json"))
    python3 = specs["kernelspecs"]["python3"]
    prefix = run_in(nb2task_base_image, "python3", "-c", "import sys; print(sys.prefix)").strip()
    assert python3["resource_dir"] == f"{prefix}/share/jupyter/kernels/python3"
    assert python3["spec"]["argv"][0].startswith(f"{prefix}/bin/python")


def test_debugpy_is_absent(nb2task_base_image: str) -> None:
    out = run_in(
        nb2task_base_image,
        "python3",
        "-c",
        "import importlib.util as u; print(u.find_spec('debugpy'))",
    )
    assert out.strip() == "None"


def test_bytecode_is_compiled(nb2task_base_image: str) -> None:
    code = (
        "import importlib.util as u, os, nb2task, papermill, stactask, ipykernel\n"
        "for m in (nb2task, papermill, stactask, ipykernel):\n"
        "    assert os.path.exists(u.cache_from_source(m.__file__)), m.__name__\n"
        "print('ok')"
    )
    assert run_in(nb2task_base_image, "python3", "-c", code).strip() == "ok"


def test_notebook_runs_with_papermill_read_only(nb2task_base_image: str, tmp_path: Path) -> None:
    write_notebook(
        tmp_path / "t.ipynb",
        "n = 2",
        "import os, sys\nprint('result', n * 21, os.getuid(), sys.prefix)",
    )
    tmp_path.chmod(0o755)
    (tmp_path / "t.ipynb").chmod(0o644)
    t0 = time.monotonic()
    out = run_in(
        nb2task_base_image,
        "papermill",
        "/nb/t.ipynb",
        "-",
        "-p",
        "n",
        "3",
        "--log-level",
        "ERROR",
        options=(*LAMBDA_LIKE, "-v", f"{tmp_path}:/nb:ro"),
    )
    elapsed = time.monotonic() - t0
    executed = nbformat.reads(out, as_version=4)
    text = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert text.startswith("result 63 993 "), text
    print(f"papermill in a read-only container: {elapsed:.1f} s")


def test_standin_runs_a_handler_through_the_emulator(
    lambda_base_standin: str, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(
        "def handler(event, context):\n    return {'echo': event}\n\n"
        "def boom(event, context):\n    raise ValueError('bad input')\n"
    )
    tmp_path.chmod(0o755)
    (tmp_path / "app.py").chmod(0o644)
    # Without a handler argument, AWS's entrypoint refuses with exit code 142.
    proc = images.docker("run", "--rm", "--network", "host", lambda_base_standin, check=False)
    assert proc.returncode == 142

    for handler, check in (
        ("app.handler", lambda r: r == {"echo": {"a": 1}}),
        ("app.boom", lambda r: r["errorType"] == "ValueError"),
    ):
        port, api_port = images.free_port(), images.free_port()
        name = f"nb2task-rie-{uuid.uuid4().hex[:8]}"
        images.docker(
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            "host",
            *LAMBDA_LIKE,
            "-e",
            f"RIE_PORT={port}",
            "-e",
            f"RIE_RUNTIME_API_PORT={api_port}",
            "-v",
            f"{tmp_path}:/var/task:ro",
            lambda_base_standin,
            handler,
        )
        try:
            deadline = time.monotonic() + 20
            # The two listeners come up one after the other: wait for both.
            while not (images.listening(port) and images.listening(api_port)):
                assert time.monotonic() < deadline, images.docker("logs", name).stderr
                time.sleep(0.1)
            # The emulator listens on the loopback address only, never on all interfaces.
            assert images.listening(port) == ["0100007F"]
            assert images.listening(api_port) == ["0100007F"]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations",
                data=b'{"a": 1}',
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
                result = json.loads(resp.read())
            assert check(result), result
        finally:
            images.docker("rm", "-f", name, check=False)


def test_nb2task_build_builds_both_images(nb2task_base_image: str, tmp_path: Path) -> None:
    """`nb2task build --build`: notebook in, both images out, in one command."""
    import subprocess
    import sys

    tag = f"t{int(time.time())}"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "nb2task"),
            "build",
            str(REPO / "notebooks/minimal.ipynb"),
            "-o",
            str(tmp_path / "ctx"),
            "--base-image",
            nb2task_base_image,
            "--image",
            "nb2task-test/minimal",
            "--tag",
            tag,
            "--build",
            "--docker",
            images.docker_client(),
            "--network",
            "host",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **images.docker_env()},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"built nb2task-test/minimal:{tag}-lambda and nb2task-test/minimal:{tag}-batch"
        in proc.stdout
    )
    for target in ("lambda", "batch"):
        ref = f"nb2task-test/minimal:{tag}-{target}"
        env = images.docker("image", "inspect", "--format", "{{json .Config.Env}}", ref).stdout
        assert "NB2TASK_NOTEBOOK=/opt/nb2task/task/minimal.ipynb" in env
        images.docker("image", "rm", ref)
