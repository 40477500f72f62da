"""Run one notebook over many payloads, ``--jobs`` at a time.

Each payload runs in its own ``nb2task run`` process (papermill changes the working
directory, and a crash in one run must not take the others down), with its own
workdir ``<output dir>/<payload stem>/`` holding the output payload, the executed
notebook and the run's log.
"""

from __future__ import annotations

import concurrent.futures
import logging
import subprocess
import sys
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from .errors import Nb2TaskError

logger = logging.getLogger(__name__)

OUTPUT_NAME = "output-payload.json"
LOG_NAME = "run.log"


@dataclass(frozen=True)
class PayloadRun:
    """How one payload's run ended."""

    payload: str
    workdir: Path
    returncode: int
    last_line: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_many(
    notebook: Path, payloads: list[str], output_dir: Path, jobs: int, run_args: list[str]
) -> list[PayloadRun]:
    """Run ``notebook`` on every payload; raise Nb2TaskError naming the ones that failed."""
    workdirs = _workdirs(payloads, output_dir)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(_run_one, repeat(notebook), payloads, workdirs, repeat(run_args)))
    failed = [r for r in runs if not r.ok]
    if failed:
        names = ", ".join(f"{r.payload} ({r.last_line.split(':', 1)[0]})" for r in failed)
        raise Nb2TaskError(
            f"{len(failed)} of {len(runs)} payloads failed: {names}; "
            f"see {output_dir}/<payload>/{LOG_NAME}"
        )
    return runs


def _workdirs(payloads: list[str], output_dir: Path) -> list[Path]:
    """One folder per payload, named after it; repeated names get a number."""
    stems = [Path(p.rstrip("/").rsplit("/", 1)[-1]).stem or "payload" for p in payloads]
    if len(set(stems)) == len(stems):
        return [output_dir / stem for stem in stems]
    # Names repeat: number every folder, so none can clash.
    return [output_dir / f"{i:03d}-{stem}" for i, stem in enumerate(stems, 1)]


def _run_one(notebook: Path, payload: str, workdir: Path, run_args: list[str]) -> PayloadRun:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "nb2task.cli", "run", str(notebook), payload,
        "--workdir", str(workdir), "--output", str(workdir / OUTPUT_NAME), *run_args,
    ]  # fmt: skip
    with (workdir / LOG_NAME).open("w", encoding="utf-8") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    lines = (workdir / LOG_NAME).read_text(encoding="utf-8").strip().splitlines()
    last = lines[-1] if lines else ""
    logger.info("%s: %s", payload, "ok" if returncode == 0 else last)
    return PayloadRun(payload, workdir, returncode, last if returncode else "ok")
