"""The Cirrus judge: a Python 3.12 venv with cirrus-geo 2.0, and a way to ask it.

cirrus-geo 2.0 needs Python >= 3.12 while nb2task runs on 3.11, so Cirrus' own code runs
in a separate venv, built once and cached in
``${NB2TASK_TEST_CACHE:-~/.cache/nb2task-tests}/cirrus-venv`` (rebuilt when
``requirements.txt`` or the interpreter changes). ``judge.py`` runs inside it.

Python 3.12 is found with ``NB2TASK_PYTHON312``, then ``pyenv prefix 3.12.1`` (or any
3.12 pyenv has), then ``python3.12`` on PATH. Without it the tests skip, unless
``NB2TASK_REQUIRE_CIRRUS=1``, when they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
JUDGE = HERE / "judge.py"
STAMP_NAME = ".nb2task-stamp.json"

Judge = Callable[..., dict[str, Any]]


def _cache_root() -> Path:
    return Path(os.environ.get("NB2TASK_TEST_CACHE") or Path.home() / ".cache" / "nb2task-tests")


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _pyenv_candidates() -> Iterator[str]:
    pyenv = shutil.which("pyenv")
    if not pyenv:
        return
    for version in ("3.12.1", "3.12"):
        result = subprocess.run(
            [pyenv, "prefix", version], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            yield str(Path(result.stdout.strip().splitlines()[0]) / "bin" / "python3")


def find_python312() -> tuple[str | None, str]:
    """A Python 3.12 interpreter (real binary, not a refusing shim), and what was tried."""
    tried: list[str] = []
    candidates: list[str] = []
    if os.environ.get("NB2TASK_PYTHON312"):
        candidates.append(os.environ["NB2TASK_PYTHON312"])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates.extend(_pyenv_candidates())
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]  # pyenv not on PATH
    for root in filter(None, roots):
        candidates.extend(
            str(p) for p in sorted(Path(root).glob("versions/3.12.*/bin/python3"), reverse=True)
        )
    if shutil.which("python3.12"):
        candidates.append("python3.12")
    for candidate in candidates:
        version = _version_of(candidate)
        tried.append(f"{candidate} -> {version}")
        if version == (3, 12):
            return candidate, "; ".join(tried)
    return None, "; ".join(tried) or "no pyenv, no python3.12 on PATH, NB2TASK_PYTHON312 unset"


def _stamp(python: str) -> dict[str, str]:
    real = subprocess.run(
        [python, "-c", "import sys; print(sys.executable, sys.version)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    return {
        "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "interpreter": real,
    }


def _build(venv: Path, python: str) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        # uv resolves nothing here: requirements.txt is fully pinned.
        commands = [
            [uv, "venv", "-q", "-p", python, str(venv)],
            [
                uv,
                "pip",
                "install",
                "-q",
                "-p",
                str(venv / "bin" / "python"),
                "-r",
                str(REQUIREMENTS),
            ],
        ]
    else:
        commands = [
            [python, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "-r",
                str(REQUIREMENTS),
            ],
        ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(
                f"building the cirrus venv failed: {' '.join(command)}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def cirrus_python() -> Path:
    """The Python of the cached cirrus-geo venv, built on first use."""
    python, tried = find_python312()
    if python is None:
        reason = f"cirrus-geo 2.0 needs Python 3.12, none found ({tried})"
        if os.environ.get("NB2TASK_REQUIRE_CIRRUS") == "1":
            pytest.fail(reason + "; NB2TASK_REQUIRE_CIRRUS=1", pytrace=False)
        pytest.skip(reason)

    venv = _cache_root() / "cirrus-venv"
    stamp_file = venv / STAMP_NAME
    wanted = _stamp(python)
    lock_path = venv.parent / "cirrus-venv.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        current = None
        with contextlib.suppress(OSError, ValueError):
            current = json.loads(stamp_file.read_text())
        if current != wanted or not (venv / "bin" / "python").exists():
            started = time.monotonic()
            _build(venv, python)
            stamp_file.write_text(json.dumps(wanted))
            print(f"\nbuilt {venv} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def judge(cirrus_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Judge]:
    """Ask ``judge.py`` (one ``serve`` process per session) for a JSON verdict."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CIRRUS_"))}
    env.pop("PYTHONPATH", None)
    log_path = tmp_path_factory.mktemp("cirrus-judge") / "judge.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(cirrus_python), str(JUDGE), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    assert process.stdin is not None and process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)

    def run(*args: str | Path, timeout: float = 180) -> dict[str, Any]:
        request = [str(a) for a in args]
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass
        line = process.stdout.readline() if selector.select(timeout) else ""
        if not line:
            log_tail = log_path.read_text(errors="replace")[-5000:]
            pytest.fail(f"judge.py gave no verdict for {request}:\n{log_tail}", pytrace=False)
        verdict: dict[str, Any] = json.loads(line)
        if "judge_error" in verdict:
            pytest.fail(f"judge.py {request} failed:\n{verdict['judge_error']}", pytrace=False)
        return verdict

    yield run
    process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
