"""Run one notebook over many payloads, ``--jobs`` at a time, from one process.

Every payload goes through the same ``Runner`` (and so the same warm executor: with
the fork engine, one child per payload of one warm parent) in its own folder
``<output dir>/<payload stem>/``: the output payload, the executed notebook and the
payload's own log. Progress shows while they run; ``<output dir>/summary.json`` and
the returned rows say how each ended.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from pathlib import Path

from . import logs
from . import payload as payload_io
from .errors import EXIT_INVALID_INPUT, error_line, exit_code
from .paths import inside, safe_name
from .publish import UrlOutput
from .runner import Runner, RunOptions
from .tally import FAILED, INVALID, RUNNING, SUCCEEDED, Progress, Row, write_summary

logger = logging.getLogger(__name__)

OUTPUT_NAME = "output-payload.json"
LOG_NAME = "run.log"
SUMMARY_NAME = "summary.json"


def run_many(
    runner: Runner, payloads: list[str], output_dir: Path, jobs: int, options: RunOptions
) -> list[Row]:
    """Run the task on every payload; one row each, in the order given."""
    rows = [Row(payload) for payload in payloads]
    workdirs = _workdirs(payloads, output_dir)
    logs.quiet_stderr()  # each payload's records go to its run.log; stderr gets one line each
    progress = Progress(rows)
    pool = concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="nb2task-run")
    try:
        pending = {
            pool.submit(_run_one, runner, row, workdir, options)
            for row, workdir in zip(rows, workdirs, strict=True)
        }
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=1.0)
            for future in done:
                future.result()  # _run_one records every failure in its row
            progress.update()
    except BaseException as err:
        # Interrupted (Ctrl-C, SIGTERM): the runs in flight end too, each with its record.
        runner.executor.interrupt(err)
        raise
    finally:
        # Interrupted (Ctrl-C, SIGTERM): the payloads not started never start; the status
        # line goes before the error line, and the summary says how far it got.
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        write_summary(output_dir / SUMMARY_NAME, rows, output_dir=str(output_dir))
    return rows


def _workdirs(payloads: list[str], output_dir: Path) -> list[Path]:
    """One folder per payload, named after it (made safe: a name like ``..`` must not
    move it out of ``output_dir``); repeated names get a number."""
    stems = [safe_name(Path(p.rstrip("/").rsplit("/", 1)[-1]).stem, "payload") for p in payloads]
    if len(set(stems)) != len(stems):  # names repeat: number every folder, none can clash
        stems = [f"{i:03d}-{stem}" for i, stem in enumerate(stems, 1)]
    return [inside(output_dir, output_dir / stem, "a payload's folder") for stem in stems]


def _run_one(runner: Runner, row: Row, workdir: Path, options: RunOptions) -> None:
    started = time.monotonic()
    row.state = RUNNING
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with logs.to_file(workdir / LOG_NAME):
            try:
                document = payload_io.load(row.payload)  # read once, here: the row needs its id
                row.id = document.get("id") if isinstance(document.get("id"), str) else None
                runner.run(
                    document,
                    UrlOutput(workdir / OUTPUT_NAME),
                    options=options.replace(workdir=workdir),
                    origin=row.payload,
                )
            except (Exception, KeyboardInterrupt) as err:
                logging.getLogger("nb2task").error("%s", error_line(err))  # the log's last line
                raise
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - each payload's own
        row.error = error_line(err)
        state = INVALID if exit_code(err) == EXIT_INVALID_INPUT else FAILED
    else:
        row.output = str(workdir / OUTPUT_NAME)
        state = SUCCEEDED
    row.seconds = time.monotonic() - started
    row.state = state  # last: the main thread reads a row once its state is final
