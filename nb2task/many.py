"""Run one notebook over many payloads, ``--jobs`` at a time, from one process.

Every payload goes through the same ``Runner`` (and so the same warm executor: with
the fork engine, one child per payload of one warm parent) in its own folder
``<output dir>/<payload stem>/``: the output payload, the executed notebook and the
payload's own log.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path

from . import logs
from .errors import Nb2TaskError, error_line, exit_code
from .paths import inside, safe_name
from .publish import UrlOutput
from .runner import Runner, RunOptions

logger = logging.getLogger(__name__)

OUTPUT_NAME = "output-payload.json"
LOG_NAME = "run.log"


@dataclass(frozen=True)
class PayloadRun:
    """How one payload's run ended."""

    payload: str
    workdir: Path
    exit_code: int
    last_line: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_many(
    runner: Runner, payloads: list[str], output_dir: Path, jobs: int, options: RunOptions
) -> list[PayloadRun]:
    """Run the task on every payload; raise Nb2TaskError naming the ones that failed."""
    workdirs = _workdirs(payloads, output_dir)
    logs.quiet_stderr()  # each payload's records go to its run.log; stderr gets one line each
    with concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="nb2task-run") as pool:
        futures = [
            pool.submit(_run_one, runner, payload, workdir, options)
            for payload, workdir in zip(payloads, workdirs, strict=True)
        ]
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            if run.ok:
                logger.info("%s: ok", run.payload)
            else:
                logger.warning("%s: %s", run.payload, run.last_line)
        runs = [future.result() for future in futures]
    failed = [r for r in runs if not r.ok]
    if failed:
        names = ", ".join(f"{r.payload} ({r.last_line.split(':', 1)[0]})" for r in failed)
        raise Nb2TaskError(
            f"{len(failed)} of {len(runs)} payloads failed: {names}; "
            f"see {output_dir}/<payload>/{LOG_NAME}"
        )
    return runs


def _workdirs(payloads: list[str], output_dir: Path) -> list[Path]:
    """One folder per payload, named after it (made safe: a name like ``..`` must not
    move it out of ``output_dir``); repeated names get a number."""
    stems = [safe_name(Path(p.rstrip("/").rsplit("/", 1)[-1]).stem, "payload") for p in payloads]
    if len(set(stems)) != len(stems):  # names repeat: number every folder, none can clash
        stems = [f"{i:03d}-{stem}" for i, stem in enumerate(stems, 1)]
    return [inside(output_dir, output_dir / stem, "a payload's folder") for stem in stems]


def _run_one(runner: Runner, payload: str, workdir: Path, options: RunOptions) -> PayloadRun:
    workdir.mkdir(parents=True, exist_ok=True)
    output = UrlOutput(workdir / OUTPUT_NAME)
    with logs.to_file(workdir / LOG_NAME):
        try:
            runner.run(payload, output, options=options.replace(workdir=workdir))
        except Exception as err:  # noqa: BLE001 - each payload's failure is its own
            line = error_line(err)
            logging.getLogger("nb2task").error("%s", line)  # the log's last line
            return PayloadRun(payload, workdir, exit_code(err), line)
    return PayloadRun(payload, workdir, 0, "ok")
