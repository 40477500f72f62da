"""Docker daemon, local Lambda base stand-in and image builds for nb2task's container tests.

Recipes measured in DESIGN §7: a private dockerd started by ``dockerd.sh`` (host network only,
no bridge), Debian's docker client with BuildKit, and a stand-in for the AWS Lambda Python base
image built from an mmdebstrap tarball plus the real Runtime Interface Emulator from the
``aws-sam-cli`` wheel. Slow inputs (the tarball, the emulator) are cached in a cache directory
(``$NB2TASK_TEST_CACHE``, default ``~/.cache/nb2task-tests``) and images carry a label with the
hash of their inputs, so a second call on the same daemon returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DOCKERD_SH = HERE / "dockerd.sh"
STANDIN_SRC = HERE / "lambda-base"

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEBIAN_REF = "localhost/debian-py:bookworm"
STANDIN_REF = "localhost/lambda-python-standin:bookworm"
SAM_CLI_VERSION = "1.170.0"
RIE_MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"

LABEL = "org.nb2task.test.inputs"  # sha256 of what an image was built from

DAEMON_TIMEOUT = 90
MMDEBSTRAP_TIMEOUT = 900
PIP_TIMEOUT = 300
IMPORT_TIMEOUT = 300
BUILD_TIMEOUT = 1800
RUN_TIMEOUT = 300

_docker_host: str | None = None

# Timings and sizes collected during the session, printed in pytest's terminal summary.
REPORT: dict[str, str] = {}


@dataclass(frozen=True)
class TaskImages:
    """An ``nb2task build`` context and its two images, built FROM the test base image."""

    name: str
    context: Path
    definition: dict[str, Any]  # definition.yaml, parsed
    lambda_image: str
    batch_image: str

    @property
    def container_properties(self) -> dict[str, Any]:
        """The Batch job definition's containerProperties (a JSON string in the YAML)."""
        properties: dict[str, Any] = json.loads(self.definition["batch"]["container_properties"])
        return properties


class ContainerError(RuntimeError):
    """A container tool failed; the message says which command and shows its output's tail."""


def default_cache_dir() -> Path:
    """Cache for the Debian tarball and the emulator: $NB2TASK_TEST_CACHE or ~/.cache."""
    env = os.environ.get("NB2TASK_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nb2task-tests"


def dockerd_available() -> str | None:
    """Why container tests cannot run here, or None when dockerd and the client exist."""
    if shutil.which("dockerd") is None:
        return "dockerd not installed (apt-get install docker.io mmdebstrap)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap not installed (apt-get install mmdebstrap)"
    try:
        docker_client()
    except ContainerError as exc:
        return str(exc)
    return None


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | bytes | None = None,
    text: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; raise ContainerError with its output on failure."""
    full_env = {**os.environ, **(env or {})}
    argv = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv,
            env=full_env,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(
            f"timed out after {timeout:.0f}s: {' '.join(argv)}\n{_tail(exc.stderr)}"
        ) from None
    except FileNotFoundError as exc:
        raise ContainerError(f"not found: {argv[0]} ({exc})") from None
    if check and proc.returncode != 0:
        raise ContainerError(
            f"exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return proc


@functools.cache
def docker_client() -> str:
    """Path of Debian's docker client (package docker.io), which does BuildKit builds."""
    try:
        out = subprocess.run(
            ["dpkg", "-L", "docker.io"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise ContainerError("Debian's docker.io package is not installed") from None
    for line in out.splitlines():
        if line.endswith("bin/docker") and os.access(line, os.X_OK):
            return line
    raise ContainerError("Debian's docker client (bin/docker of docker.io) not found")


def docker_env() -> dict[str, str]:
    """Environment for the docker client: our daemon's DOCKER_HOST and BuildKit on."""
    env = {"DOCKER_BUILDKIT": "1"}
    host = _docker_host or os.environ.get("DOCKER_HOST")
    if host:
        env["DOCKER_HOST"] = host
    return env


def docker(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
    check: bool = True,
    input: str | bytes | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run Debian's docker client against our daemon; raise ContainerError on failure."""
    return _run(
        [docker_client(), *args],
        env={**docker_env(), **(env or {})},
        timeout=timeout,
        check=check,
        input=input,
        text=text,
    )


def ensure_daemon(root: Path) -> str:
    """Start (or reuse) the private dockerd under root; return its DOCKER_HOST."""
    global _docker_host
    proc = _run(["bash", DOCKERD_SH, "start", Path(root)], timeout=DAEMON_TIMEOUT + 600)
    host = proc.stdout.strip().splitlines()[-1]
    if not host.startswith("unix://"):
        raise ContainerError(f"dockerd.sh start printed no DOCKER_HOST: {proc.stdout!r}")
    _docker_host = host
    return host


def daemon_running(root: Path) -> bool:
    """Whether a daemon started under root is alive (by its pid file and command line)."""
    root = Path(root).resolve()
    try:
        pid = int((root / "dockerd.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and f"{root}/" in cmdline


def stop_daemon(root: Path) -> None:
    """Stop the private dockerd under root (by its pid), if it runs."""
    global _docker_host
    _run(["bash", DOCKERD_SH, "stop", Path(root)], timeout=DAEMON_TIMEOUT)
    _docker_host = None


def image_label(ref: str, label: str = LABEL) -> str | None:
    """A label of a local image, or None when the image or the label is missing."""
    proc = docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{label}"}}}}',
        ref,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        return None
    value = proc.stdout.strip()
    return value if value and value != "<no value>" else None


def image_size(ref: str) -> int:
    """Size in bytes of a local image (all its layers)."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref, timeout=60).stdout)


def build_image(
    context: Path,
    dockerfile: Path,
    tag: str,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> str:
    """Build an image with BuildKit on the host network; return its tag."""
    cmd: list[str | os.PathLike[str]] = [
        "build",
        "--network",
        "host",
        "--progress",
        "plain",
        "-f",
        dockerfile,
        "-t",
        tag,
    ]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    if target:
        cmd += ["--target", target]
    cmd.append(context)
    docker(*cmd, timeout=timeout)
    return tag


def _sha256(*parts: bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(part)
        h.update(b"\0")
    return h.hexdigest()


def host_ca_bundle() -> Path:
    """The host's CA bundle (it trusts this machine's TLS-intercepting proxy)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise ContainerError("no host CA bundle found (set SSL_CERT_FILE)")


def ensure_debian_tarball(cache_dir: Path) -> Path:
    """The mmdebstrap minbase tarball with Python, built once into cache_dir."""
    tarball = Path(cache_dir) / f"debian-py-{DEBIAN_SUITE}.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("mmdebstrap") is None:
        raise ContainerError("mmdebstrap not installed (apt-get install mmdebstrap)")
    partial = tarball.with_suffix(".tar.partial")
    partial.unlink(missing_ok=True)
    _run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            # Smaller image: no docs, man pages or translations.
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            '--aptopt=Acquire::Languages "none"',
            "--format=tar",
            DEBIAN_SUITE,
            partial,
        ],
        timeout=MMDEBSTRAP_TIMEOUT,
    )
    partial.replace(tarball)
    return tarball


def _pip() -> list[str]:
    """A pip to download with: this interpreter's, else python3's from PATH."""
    if _run([sys.executable, "-m", "pip", "--version"], timeout=60, check=False).returncode == 0:
        return [sys.executable, "-m", "pip"]
    python3 = shutil.which("python3")
    if (
        python3
        and _run([python3, "-m", "pip", "--version"], timeout=60, check=False).returncode == 0
    ):
        return [python3, "-m", "pip"]
    raise ContainerError("no pip found to download aws-sam-cli with")


def ensure_rie(cache_dir: Path) -> Path:
    """The Lambda Runtime Interface Emulator from the aws-sam-cli wheel, cached in cache_dir."""
    rie = Path(cache_dir) / f"aws-lambda-rie-x86_64-sam-{SAM_CLI_VERSION}"
    if rie.is_file():
        return rie
    rie.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        _run(
            [
                *_pip(),
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                f"aws-sam-cli=={SAM_CLI_VERSION}",
            ],
            timeout=PIP_TIMEOUT,
        )
        wheels = list(Path(tmp).glob("aws_sam_cli-*.whl"))
        if not wheels:
            raise ContainerError(f"pip downloaded no aws-sam-cli wheel into {tmp}")
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(RIE_MEMBER) as src:
            partial = rie.with_name(rie.name + ".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        partial.chmod(0o755)
        partial.replace(rie)
    return rie


@contextlib.contextmanager
def _locked(path: Path, timeout: float = MMDEBSTRAP_TIMEOUT + BUILD_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on path (another test run may share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ContainerError(f"could not lock {path} within {timeout:.0f}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_lambda_base_standin(cache_dir: Path | None = None) -> str:
    """Build the local stand-in for the AWS Lambda Python base once; return its image ref."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    with _locked(cache_dir / "standin.lock"):
        return _ensure_standin(cache_dir)


def _ensure_standin(cache_dir: Path) -> str:
    tarball = ensure_debian_tarball(cache_dir)
    tar_digest = _sha256(tarball)
    if image_label(DEBIAN_REF) != tar_digest:
        docker(
            "import",
            "--change",
            f"LABEL {LABEL}={tar_digest}",
            "--change",
            'CMD ["/bin/bash"]',
            tarball,
            DEBIAN_REF,
            timeout=IMPORT_TIMEOUT,
        )
    rie = ensure_rie(cache_dir)
    ca = host_ca_bundle()
    sources = sorted(p for p in STANDIN_SRC.iterdir() if p.is_file())
    digest = _sha256(tar_digest.encode(), *sources, ca, rie)
    if image_label(STANDIN_REF) == digest:
        return STANDIN_REF
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        context = Path(tmp)
        for src in sources:
            shutil.copy2(src, context / src.name)
        shutil.copyfile(ca, context / "host-ca.crt")
        shutil.copy2(rie, context / "aws-lambda-rie")
        (context / "aws-lambda-rie").chmod(0o755)
        (context / "lambda-entrypoint.sh").chmod(0o755)
        build_image(
            context,
            context / "Dockerfile",
            STANDIN_REF,
            {"DEBIAN_IMAGE": DEBIAN_REF},
            labels={LABEL: digest},
        )
    return STANDIN_REF


def build_base_image(base_image: str, tag: str = "localhost/nb2task-base:test") -> str:
    """Build the repo's Dockerfile.base FROM base_image; return its tag."""
    return build_image(REPO_ROOT, REPO_ROOT / "Dockerfile.base", tag, {"BASE_IMAGE": base_image})


def image_id(ref: str) -> str | None:
    """The id (sha256:...) of a local image, or None when it is missing."""
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


def tree_digest(root: Path) -> str:
    """sha256 of a directory's files: their relative paths, modes and contents (not mtimes)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
        h.update(_sha256(path).encode())
    return h.hexdigest()


def ensure_context_image(context: Path, target: str, tag: str, base_image: str) -> tuple[str, bool]:
    """Build one target of an ``nb2task build`` context FROM base_image, unless an image with
    the same inputs (context files, target, base image id) is already tagged; return (tag,
    whether it was built). The context's Dockerfile is used as written: only BASE_IMAGE, which
    it declares, is passed."""
    base_id = image_id(base_image)
    if base_id is None:
        raise ContainerError(f"base image {base_image} is missing")
    digest = _sha256(tree_digest(context).encode(), target.encode(), base_id.encode())
    if image_label(tag) == digest:
        return tag, False
    build_image(
        context,
        Path(context) / "Dockerfile",
        tag,
        {"BASE_IMAGE": base_image},
        target,
        labels={LABEL: digest},
    )
    return tag, True


# moto names a job's container ``<job name>-<job id>`` (an array child's id with '-<index>').
MOTO_JOB_CONTAINER = re.compile(r".+-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}(-\d+)?")


def job_containers(prefix: str = "") -> list[str]:
    """Names of moto's job containers on our daemon (whose job name starts with prefix)."""
    names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    return [n for n in names if n.startswith(prefix) and MOTO_JOB_CONTAINER.fullmatch(n)]


@contextlib.contextmanager
def moto_server(
    docker_host: str, log: Path, command: list[str] | None = None, **env: str
) -> Iterator[str]:
    """A moto server on loopback (``command``: moto_server by default) whose Batch runs jobs
    as containers on our daemon, on the host network; its endpoint. Job containers left when
    it stops are removed."""
    port = free_port()
    command = command or [str(Path(sys.executable).with_name("moto_server"))]
    environment = {
        **os.environ,
        "MOTO_PORT": str(port),
        "DOCKER_HOST": docker_host,
        "MOTO_DOCKER_NETWORK_MODE": "host",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert listening(port) == ["0100007F"]  # loopback only
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        # A job still running when moto stopped would leave its container behind.
        for name in job_containers():
            docker("rm", "-f", name, check=False)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (containers here share the host's network)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on port in our network namespace."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":
                found.append(addr)
    return found


if __name__ == "__main__":  # Manual use: python tests/containers/images.py [ROOT]
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default_cache_dir() / "dockerd"
    t0 = time.monotonic()
    print("DOCKER_HOST", ensure_daemon(root), f"{time.monotonic() - t0:.1f}s", flush=True)
    t0 = time.monotonic()
    ref = ensure_lambda_base_standin(default_cache_dir())
    print("stand-in", ref, f"{time.monotonic() - t0:.1f}s", image_size(ref), flush=True)
    t0 = time.monotonic()
    base = build_base_image(ref)
    print("base", base, f"{time.monotonic() - t0:.1f}s", image_size(base), flush=True)
    print(f"the daemon keeps running: bash {DOCKERD_SH} stop {root}")
