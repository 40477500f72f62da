"""The ``nb2task`` command line: parses arguments, calls the API, prints.

Exit codes: 0 success, 1 the task failed, 2 bad usage or unusable notebook,
3 invalid input (payload or parameters), 143 stopped by SIGTERM. On failure the
last line on stderr is ``dotted.ErrorName: message``, which Cirrus' post-batch
step parses.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__, settings

LOCAL_WORKDIR = "local-output"
ENGINES = settings.ENGINES


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nb2task``."""
    parser = argparse.ArgumentParser(
        prog="nb2task", description="Run parameterized Jupyter notebooks as Cirrus tasks."
    )
    parser.add_argument("--version", action="version", version=f"nb2task {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a notebook as a task on one payload")
    run.add_argument(
        "notebook",
        type=Path,
        help="the notebook: .ipynb, or a .py file in jupytext's percent format "
        "(# %%%% cells; works on a plain install)",
    )
    add_run_arguments(run)
    run.add_argument(
        "--payloads", nargs="+", metavar="INPUT",
        help="run on many payloads instead of one: files, folders (their *.json), globs "
        "('in/*.json', quoted) or s3:// prefixes; each gets <output dir>/<payload stem>/",
    )  # fmt: skip
    run.add_argument(
        "--jobs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="with --payloads: payloads run at a time (default: %(default)s, the cores)",
    )
    run.add_argument(
        "--output-dir", type=Path, default=Path(LOCAL_WORKDIR),
        help=f"with --payloads: where each payload's folder goes (default: {LOCAL_WORKDIR}/)",
    )  # fmt: skip

    report = commands.add_parser(
        "report", help="render an executed notebook (a run's record) as HTML"
    )
    report.add_argument("executed", type=Path, help="the executed notebook (.ipynb)")
    report.add_argument("-o", "--output", type=Path, help="the HTML file (default: beside it)")

    inspect = commands.add_parser("inspect", help="show a notebook's parameters")
    inspect.add_argument("notebook", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the JSON Schema")

    new = commands.add_parser(
        "new", help="make a task folder: notebook, sample payload, golden fixtures, tests"
    )
    new.add_argument("name", type=Path, help="the folder to make; its name is the task's")
    new.add_argument(
        "--template",
        choices=("minimal", "ndvi"),
        default="minimal",
        help="minimal: standard library only (default); ndvi: rasterio and numpy",
    )

    test = commands.add_parser(
        "test", help="run a notebook's golden fixtures (fixtures/{success,failure}/<case>/)"
    )
    test.add_argument(
        "notebook", type=Path, help="the notebook, or its folder (the one notebook in it)"
    )
    test.add_argument(
        "--update", action="store_true", help="write out.json / exception.txt from this run"
    )
    test.add_argument("-k", metavar="TEXT", help="only the cases whose name contains TEXT")
    test.add_argument("--engine", choices=ENGINES, default=_current().engine)

    replay = commands.add_parser(
        "replay",
        help="run a recorded run again here, from its executed notebook (local or s3://)",
    )
    replay.add_argument("record", help="the run's executed notebook: a path or URL (s3://...)")
    replay.add_argument(
        "--notebook", type=Path, help="run this notebook instead of the code the record holds"
    )
    replay.add_argument(
        "--payload", metavar="INPUT", help="the payload, if the record's cannot be reached"
    )
    replay.add_argument(
        "--workdir",
        type=Path,
        default=Path(LOCAL_WORKDIR) / "replay",
        help=f"where the run goes, as run --local (default: {LOCAL_WORKDIR}/replay/)",
    )
    replay.add_argument("--engine", choices=ENGINES, help="default: the recorded run's engine")
    replay.add_argument(
        "--jupyter",
        type=Path,
        metavar="DIR",
        help="do not run: write the notebook with the run's parameters, and its payload, "
        "into DIR for JupyterLab",
    )
    replay.add_argument(
        "--assets",
        nargs="?",
        const="",
        metavar="KEYS",
        help="with --jupyter: download the payload's assets into DIR too (default: those the "
        "run downloaded, else all)",
    )
    add_logging_argument(replay)

    lint = commands.add_parser(
        "lint", help="find what would go wrong with notebooks as tasks, before they run"
    )
    lint.add_argument("notebooks", type=Path, nargs="+", metavar="NOTEBOOK")
    lint.add_argument("--strict", action="store_true", help="warnings fail too (exit 1), as in CI")

    submit = commands.add_parser(
        "submit", help="run a notebook task on many payloads as AWS Batch jobs"
    )
    submit.add_argument(
        "task", type=Path, metavar="NOTEBOOK_OR_CONTEXT",
        help="the notebook, or its build context (nb2task build): needed for --register",
    )  # fmt: skip
    submit.add_argument(
        "payloads", nargs="+", metavar="PAYLOADS",
        help="files, folders (their *.json), globs (quoted) or s3:// prefixes",
    )  # fmt: skip
    submit.add_argument("--job-queue", required=True, help="the Batch job queue (name or ARN)")
    submit.add_argument(
        "--job-definition",
        help="the Batch job definition (name, name:revision or ARN); with --register, the "
        "name to register (default: nb2task-<task>)",
    )
    submit.add_argument(
        "--register",
        action="store_true",
        help="register the job definition from the build context's definition.yaml first",
    )
    submit.add_argument("--image", help="with --register: the image URI (in your registry)")
    submit.add_argument("--job-role", metavar="ARN", help="with --register: the job's IAM role")
    submit.add_argument(
        "--payload-bucket",
        help="where payloads are staged (default: $CIRRUS_PAYLOAD_BUCKET)",
    )
    submit.add_argument(
        "--root-prefix",
        help="key prefix in the bucket (default: $CIRRUS_PAYLOAD_ROOT_PREFIX, else 'cirrus')",
    )
    submit.add_argument(
        "--array",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one array job for two payloads or more, each child picking its payload "
        "from a manifest by its index (default: on; --no-array: one job per payload)",
    )
    submit.add_argument(
        "--resume",
        action="store_true",
        help="skip payloads whose output already exists, and those an earlier submission "
        "is still running or saw fail",
    )
    submit.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: submit again the payloads whose earlier job failed",
    )
    submit.add_argument("--vcpu", type=_positive, help="vCPUs per job (overrides the definition)")
    submit.add_argument("--memory", type=_positive_int, metavar="MB", help="memory per job")
    submit.add_argument("--gpus", type=_positive_int, metavar="N", help="GPUs per job")
    submit.add_argument(
        "--timeout", type=_timeout, metavar="SECONDS", help="time limit per job attempt (≥ 60)"
    )
    submit.add_argument(
        "--retries", type=_positive_int, metavar="ATTEMPTS", help="attempts per job (1-10)"
    )
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        type=_assignment,
        metavar="NAME=VALUE",
        help="set an environment variable in the jobs' containers",
    )
    submit.add_argument("--task-name", help="task name (default: the notebook's or context's)")
    submit.add_argument(
        "--check-schema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check the payloads' items against the STAC item schema (default: on)",
    )
    add_follow_arguments(submit)

    status = commands.add_parser("status", help="follow the jobs of a submission")
    status.add_argument(
        "submission",
        help="the submission's record: a path, its s3:// URL, or the submission id",
    )
    add_follow_arguments(status)

    build = commands.add_parser("build", help="write a Docker build context and deploy files")
    build.add_argument("notebook", type=Path)
    build.add_argument("-o", "--output-dir", type=Path, help="where (default: build/<name>)")
    build.add_argument("--name", help="task name (default: notebook metadata or file stem)")
    build.add_argument("--requirements", type=Path, help="requirements file of the notebook")
    build.add_argument("--base-image", help="the nb2task base image to build FROM")
    build.add_argument("--image", help="image repository (default: nb2task/<name>)")
    build.add_argument("--tag", help="image tag prefix (default: the task version)")
    build.add_argument(
        "--allow-url-requirements",
        action="store_true",
        help="allow requirements given as URLs (name @ https://...)",
    )
    build.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="a file or folder the notebook reads, copied beside it",
    )
    build.add_argument("--lambda-memory", type=int, metavar="MB")
    build.add_argument("--lambda-timeout", type=int, metavar="SECONDS")
    build.add_argument("--lambda-storage", type=int, metavar="MB")
    build.add_argument("--batch-vcpu", type=float)
    build.add_argument("--batch-memory", type=int, metavar="MB")
    build.add_argument("--batch-timeout", type=int, metavar="SECONDS")
    build.add_argument("--build", action="store_true", help="also build both images (Docker)")
    build.add_argument("--push", action="store_true", help="build, then push both images")
    build.add_argument(
        "--docker",
        default=_current().docker,
        help="the docker client to run (default: $NB2TASK_DOCKER or docker)",
    )
    build.add_argument("--network", help="docker build --network (e.g. host)")
    return parser


def add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    """How ``submit`` and ``status`` follow the jobs."""
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the jobs until they end (default: on; --no-wait: report and return)",
    )
    parser.add_argument(
        "--poll", type=_positive, default=5.0, metavar="SECONDS", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="the submission's record and summary, JSON (submit's default: "
        "nb2task-submissions/<submission id>.json; status: where it was read)",
    )
    add_logging_argument(parser)


def build_task_parser() -> argparse.ArgumentParser:
    """The parser of ``nb2task-task``: stactask's CLI, for the notebook baked into an image."""
    parser = argparse.ArgumentParser(
        prog="nb2task-task",
        description="Run this image's notebook task (NB2TASK_NOTEBOOK) on a payload.",
    )
    parser.add_argument("--version", action="version", version=f"nb2task {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the task on one payload")
    add_run_arguments(run)
    run.add_argument(
        "--manifest",
        metavar="URL",
        help="in an AWS Batch array job: run the payload at this child's index "
        "(AWS_BATCH_JOB_ARRAY_INDEX) in the manifest at URL (replaces INPUT and --output)",
    )
    return parser


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``run``, stactask's CLI plus nb2task's own."""
    run.add_argument("input", nargs="?", help="payload: path or URL (s3://...); stdin if omitted")
    run.add_argument(
        "--output", help="write the output payload here (path or URL); stdout if omitted"
    )
    run.add_argument(
        "--workdir", type=Path, help="work directory (kept); a temporary one if omitted"
    )
    run.add_argument(
        "--save-workdir", action="store_true", default=None, help="keep the temporary workdir"
    )
    run.add_argument(
        "--upload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="upload output assets (default: on)",
    )
    run.add_argument(
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the notebook's validate step, its cells tagged nb2task-validate, as "
        "stactask runs a task's validate() (default: on)",
    )
    run.add_argument(
        "--check-schema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check input and emitted items against the STAC item schema (default: on; "
        "the payload's structure is always checked)",
    )
    run.add_argument(
        "--local",
        action="store_true",
        help=f"workdir {LOCAL_WORKDIR}/, no upload, output {LOCAL_WORKDIR}/output-payload.json",
    )
    run.add_argument(
        "--task-name",
        help="task name in process[0].tasks (default: notebook metadata or file stem)",
    )
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (overrides the payload and -f); VALUE is JSON unless the "
        "parameter is a plain str",
    )
    run.add_argument(
        "-f",
        "--parameters-file",
        type=Path,
        metavar="FILE",
        help="parameters from a YAML or JSON file (as papermill's -f): over the payload's, "
        "under -p",
    )
    run.add_argument(
        "--cell-timeout", type=_positive, help="seconds a cell may run (default: no limit)"
    )
    run.add_argument(
        "--timeout", type=_positive, help="seconds the whole notebook may run (default: no limit)"
    )
    run.add_argument(
        "--download-assets",
        metavar="KEYS",
        help="comma-separated asset keys to download before the run, '*' for all "
        "(default: the notebook's metadata, or the payload's tasks.<name>.download_assets)",
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default=_current().engine,
        help="how cells run: fork (a child of a warm process per payload; the default on "
        "Linux) or kernel (a Jupyter kernel per payload; default for non-Python kernels); "
        "default: $NB2TASK_ENGINE, else the notebook's metadata",
    )
    run.add_argument(
        "--html",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="render the executed notebook as HTML on success too (default: the notebook's "
        "record_html setting; a failed run's record is always rendered)",
    )
    run.add_argument(
        "--log-output",
        action=argparse.BooleanOptionalAction,
        default=_current().log_output,
        help="stream the cells' output to the log as it comes (default: off, or "
        "$NB2TASK_LOG_OUTPUT; the executed notebook always has it)",
    )
    run.add_argument(
        "--require-items",
        action="store_true",
        help="fail the run if the notebook emits no items (default: a warning)",
    )
    add_logging_argument(run)


def add_logging_argument(parser: argparse.ArgumentParser) -> None:
    """``--logging LEVEL``."""
    parser.add_argument(
        "--logging",
        default=_current().log_level,
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="log level (default: $NB2TASK_LOG_LEVEL or INFO)",
    )


def _positive(text: str) -> float:
    """An argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def _timeout(text: str) -> int:
    """An argparse type: a job timeout, whole seconds, at least AWS Batch's minimum."""
    value = _positive_int(text)
    if value < 60:
        raise argparse.ArgumentTypeError(f"{text}: AWS Batch's minimum is 60 seconds")
    return value


def _assignment(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=VALUE``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    value = _positive(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text} is not a whole number")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nb2task`` console script."""
    if (code := _check_settings()) is not None:
        return code
    return _exit_at_once(_dispatch(build_parser().parse_args(argv)))


def task_main(argv: list[str] | None = None) -> int:
    """Entry point of ``nb2task-task``: the image's notebook, from NB2TASK_NOTEBOOK."""
    if (code := _check_settings()) is not None:
        return code
    args = build_task_parser().parse_args(argv)
    args.notebook = Path(_current().notebook or "")
    args.task_name = args.task_name or _current().task_name
    args.in_image = True  # a {"url"} payload is followed to s3:// only
    return _exit_at_once(_dispatch(args))


def _exit_at_once(code: int) -> int:
    """End the process now, once everything is written: a command that ran a notebook
    has everything done by now, and tearing the interpreter down (stactask, papermill,
    their modules and objects) would take a quarter of a second more."""
    if not _ran_a_notebook:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


_ran_a_notebook = False
_settings: settings.Settings | None = None  # read first thing by main and task_main


def _current() -> settings.Settings:
    """The settings read at start (or now, for a parser made outside ``main``)."""
    return _settings or settings.current()


def _check_settings() -> int | None:
    """Read every NB2TASK_* variable before anything else: a bad one ends the command
    with its name (exit 2), before any work. None when all are good."""
    global _settings
    try:
        _settings = settings.current()
    except Exception as err:  # noqa: BLE001 - a UsageError, reported as every error is
        return _report(err)
    return None


def _runner_ready() -> None:
    """The engine is set up and everything imported: what was made so far lives as long
    as the process, so the garbage collector, paused while it was made, need not look at
    it again (``gc.freeze``); it runs again for the run's own objects."""
    global _ran_a_notebook
    _ran_a_notebook = True
    gc.freeze()
    gc.enable()


def _from_manifest(args: argparse.Namespace) -> None:
    """An array job's child: INPUT and --output from the manifest, by its index."""
    from . import manifest
    from .errors import UsageError

    if args.input is not None or args.output is not None:
        raise UsageError("--manifest replaces INPUT and --output")
    args.input, args.output = manifest.entry(args.manifest, manifest.array_index(os.environ))


def _stop_on(signum: int, frame: Any) -> None:
    """SIGTERM (Batch: a job timeout or cancellation) and SIGINT (Ctrl-C) end the run the
    same way: the exception unwinds it, the notebook's processes are killed, the record
    says why and is kept, the last line too. Once: a second signal while the run ends
    would cut the record's last save short."""
    from .errors import Terminated

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGTERM:
        raise Terminated("stopped by SIGTERM (job timeout or cancellation)")
    raise KeyboardInterrupt("stopped by SIGINT (Ctrl-C)")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "test"):
        # Imports make objects that live as long as the process: scanning them again and
        # again while they are made would cost ~0.1 s of the start (see _runner_ready).
        gc.disable()
    from . import logs, progress
    from .runner import retry_storage_errors

    retry_storage_errors()
    # Batch sends SIGTERM before it kills, a terminal SIGINT: unwind, so the record is
    # kept and the last line still says what happened.
    signal.signal(signal.SIGTERM, _stop_on)
    signal.signal(signal.SIGINT, _stop_on)
    display: progress.LiveDisplay | None = None
    try:
        if args.command == "run":
            if not str(args.notebook) or str(args.notebook) == ".":
                from .errors import UsageError

                raise UsageError("NB2TASK_NOTEBOOK is not set: the image must name its notebook")
            logs.configure(args.logging)
            if not getattr(args, "payloads", None):
                display = progress.live_display()
            _run(args)
        elif args.command == "inspect":
            _inspect(args)
        elif args.command == "report":
            _report_html(args)
        elif args.command == "build":
            logs.configure("INFO")
            _build(args)
        elif args.command == "lint":
            _lint(args)
        elif args.command == "test":
            _test(args)
        elif args.command == "new":
            _new(args)
        elif args.command == "replay":
            logs.configure(args.logging)
            logging.getLogger("papermill").setLevel(logging.WARNING)
            if args.jupyter is None:
                display = progress.live_display()
            _replay(args, display)
        elif args.command in ("submit", "status"):
            logs.configure(args.logging)
            with _aws_errors():
                _submit(args) if args.command == "submit" else _status(args)
        if display is not None:
            display.finish(failed=False)
        return 0
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - one clean line each
        if display is not None:
            display.finish(failed=True)  # the status line goes before the error line
        return _report(err)


def run_options(args: argparse.Namespace) -> Any:
    """The RunOptions the command line asks for (``--local`` as stactask defines it)."""
    from .runner import RunOptions
    from .schema import read_parameters_file

    values_file = args.parameters_file
    options = {
        "task_name": args.task_name,
        "parameters": tuple((name, value) for name, value in args.parameter),
        "parameter_values": read_parameters_file(values_file) if values_file else {},
        "parameter_values_from": f"-f {values_file}",
        "log_output": args.log_output,
        "require_items": args.require_items,
        "download_assets": args.download_assets,
        "cell_timeout": args.cell_timeout,
        "timeout": args.timeout,
        "engine": args.engine,
        "html": args.html,
        "validate": args.validate,
        "check_schema": args.check_schema,
    }
    options["local_indirection"] = not getattr(args, "in_image", False)
    if args.local:
        return RunOptions.local(args.workdir, **options)
    return RunOptions(
        workdir=args.workdir, save_workdir=args.save_workdir, upload=args.upload, **options
    )


def _run(args: argparse.Namespace) -> None:
    from .runner import LOCAL_OUTPUT, Runner

    if getattr(args, "manifest", None) is not None:
        _from_manifest(args)
    options = run_options(args)
    if not options.log_output:  # papermill's INFO records are the cells' output
        logging.getLogger("papermill").setLevel(logging.WARNING)
    if getattr(args, "payloads", None):
        _run_many(args, options)
        return
    output = args.output
    if args.local and output is None:
        output = str(options.workdir / LOCAL_OUTPUT)
    # The runner first: its engine starts warming up before stactask loads (~0.5 s).
    with Runner(args.notebook, options, once=True) as runner:
        from .publish import StreamOutput, UrlOutput

        _runner_ready()
        runner.run(args.input, UrlOutput(output) if output is not None else StreamOutput())


def _run_many(args: argparse.Namespace, options: Any) -> None:
    from . import sources
    from .errors import UsageError
    from .many import LOG_NAME, SUMMARY_NAME, run_many
    from .runner import Runner
    from .tally import raise_for_failures, table

    if args.input is not None or args.output is not None or args.workdir is not None:
        raise UsageError("--payloads replaces INPUT, --output and --workdir: use --output-dir")
    payloads = sources.expand(args.payloads)
    with Runner(args.notebook, options) as runner:
        _runner_ready()
        rows = run_many(runner, payloads, args.output_dir, args.jobs, options)
    print(table(rows))
    print(
        f"{len(rows)} payloads done: outputs in {args.output_dir}/<payload>/, "
        f"summary in {args.output_dir / SUMMARY_NAME}",
        file=sys.stderr,
    )
    raise_for_failures(rows, f"see {args.output_dir}/<payload>/{LOG_NAME}")


@contextlib.contextmanager
def _aws_errors() -> Iterator[None]:
    """AWS's own errors (no region, no credentials, a refused call) in one clean line."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .errors import Nb2TaskError

    try:
        yield
    except (BotoCoreError, ClientError) as err:
        raise Nb2TaskError(f"AWS: {err}") from None


def _submit(args: argparse.Namespace) -> None:
    from . import sources
    from .staging import PayloadBucket
    from .submit import Resources, SubmitOptions, TaskSource, local_record, submit
    from .task import NotebookTask

    source = TaskSource.at(args.task)
    name = args.task_name or (source.definition or {}).get("name")
    task_class = NotebookTask.for_notebook(source.notebook, name)
    options = SubmitOptions(
        job_queue=args.job_queue,
        bucket=PayloadBucket.from_env(args.payload_bucket, args.root_prefix),
        job_definition=args.job_definition,
        register=args.register,
        image=args.image,
        job_role=args.job_role,
        array=args.array,
        resume=args.resume,
        retry_failed=args.retry_failed,
        resources=Resources(args.vcpu, args.memory, args.gpus, args.timeout, args.retries),
        environment=tuple(args.env),
        check_schema=args.check_schema,
    )
    submission = submit(task_class, source, sources.expand(args.payloads), options)
    record = args.summary or local_record(submission.id)
    submission.save(record)
    print(f"submission {submission.id}: record {record} ({submission.record_url})", file=sys.stderr)
    _follow(submission, record, args)


def _status(args: argparse.Namespace) -> None:
    from .submit import Submission, find_record

    where = find_record(args.submission)
    submission = Submission.load(where)
    record = args.summary or (None if "://" in where else Path(where))
    _follow(submission, record, args)


def _follow(submission: Any, record: Path | None, args: argparse.Namespace) -> None:
    """Follow the jobs, keep the record up to date, print the summary table."""
    from .follow import follow
    from .tally import raise_for_failures, table

    again = f"nb2task status {record or submission.record_url}"
    try:
        follow(
            submission,
            wait=args.wait,
            poll=args.poll,
            on_change=lambda: submission.save(record, remote=record is None),
        )
    except KeyboardInterrupt:
        submission.save(record)
        print(f"stopped following; the jobs keep running: {again}", file=sys.stderr)
        raise
    submission.save(record)
    print(table(submission.rows))
    if not all(row.done for row in submission.rows):
        print(f"jobs still running: {again}", file=sys.stderr)
    raise_for_failures(submission.rows, f"details in {record or submission.record_url}")


def _build(args: argparse.Namespace) -> None:
    from .build import BuildOptions, build_context, build_images

    options = BuildOptions(
        output_dir=args.output_dir,
        name=args.name,
        requirements_file=args.requirements,
        **({"base_image": args.base_image} if args.base_image else {}),
        image=args.image,
        tag=args.tag,
        allow_url_requirements=args.allow_url_requirements,
        include=tuple(args.include),
        lambda_overrides={
            "memory_mb": args.lambda_memory,
            "timeout_seconds": args.lambda_timeout,
            "ephemeral_storage_mb": args.lambda_storage,
        },
        batch_overrides={
            "vcpu": args.batch_vcpu,
            "memory_mb": args.batch_memory,
            "timeout_seconds": args.batch_timeout,
        },
    )
    context = build_context(args.notebook, options)
    print(f"build context for {context.name}: {context.path}")
    print(f"  lambda image: {context.lambda_image}  (docker build --target lambda)")
    print(f"  batch image:  {context.batch_image}  (docker build --target batch)")
    if args.build or args.push:
        build_images(context, docker=args.docker, network=args.network, push=args.push)
        print(f"built {context.lambda_image} and {context.batch_image}")


def _inspect(args: argparse.Namespace) -> None:
    from .notebook import Notebook

    notebook = Notebook.load(args.notebook)
    if args.json:
        notebook.check_runnable_as_task()
        print(json.dumps(notebook.parameters_schema(), indent=2))
        return
    rows = [("name", "type", "default", "help")]
    for p in notebook.schema.parameters:
        default = (
            "(required)" if p.required else f"= {p.default}" if p.computed else repr(p.default)
        )
        kind = f"{p.type_label} ({p.rules_label})" if p.rules_label else p.type_label
        rows.append((p.name, kind, default, p.help))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{notebook.name} {notebook.settings.version}: {notebook.path}")
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    reserved = sorted(notebook.schema.declared_reserved)
    print(f"injected by nb2task: {', '.join(reserved) if reserved else 'none'}", flush=True)
    notebook.check_runnable_as_task()  # a notebook that cannot take a payload: exit 2


def _replay(args: argparse.Namespace, display: Any) -> None:
    from .errors import UsageError
    from .replay import prepare_jupyter, read_record, replay

    record = read_record(args.record)
    if args.jupyter is not None:
        path = prepare_jupyter(record, args.jupyter, args.payload, args.assets)
        print(f"prepared {path} with the recorded run's parameters and payload:")
        print(f"  jupyter lab {path}")
        if record.error:
            print(f"  the recorded run failed: {record.error}")
        return
    if args.assets is not None:
        raise UsageError("--assets goes with --jupyter (a replayed run downloads what the run did)")
    _runner_ready()
    outcome = replay(record, args.notebook, args.payload, args.workdir, args.engine)
    if display is not None:
        display.finish(failed=outcome.error is not None)
    print(outcome.verdict(), file=sys.stderr, flush=True)
    if outcome.error is not None:
        raise outcome.error


def _new(args: argparse.Namespace) -> None:
    from .scaffold import scaffold

    written = scaffold(args.name, args.template)
    folder, name = args.name, args.name.resolve().name
    print(f"made {folder}/ ({args.template} template):")
    for path in written:
        print(f"  {path}")
    print(
        f"next:\n  cd {folder}\n"
        f"  nb2task run {name}.ipynb {name}.payload.json --local\n"
        f"  nb2task test {name}.ipynb\n"
        f"  jupyter lab {name}.ipynb"
    )


def _test(args: argparse.Namespace) -> None:
    from .errors import GoldenMismatch
    from .goldens import GoldenRunner, task_cases

    notebook, cases = task_cases(args.notebook, args.k)
    fixtures = cases[0].folder.parent.parent
    print(f"{notebook}: {len(cases)} case(s) in {fixtures}", flush=True)
    failed = []
    with GoldenRunner(notebook, args.engine) as golden:
        _runner_ready()
        for case in cases:
            outcome = golden.run(case, update=args.update)
            status = "UPDATED" if outcome.updated else "PASS" if outcome.passed else "FAIL"
            print(f"  {status:<7} {case.name}  ({outcome.seconds:.1f} s)", flush=True)
            if not outcome.passed:
                failed.append(case.name)
                for line in outcome.problems + [f"log: {log}" for log in outcome.logs[-8:]]:
                    print(f"          {line}", flush=True)
    if failed:
        raise GoldenMismatch(f"{len(failed)} of {len(cases)} case(s) failed: {', '.join(failed)}")
    print(f"{len(cases)} case(s) {'updated' if args.update else 'passed'}")


def _lint(args: argparse.Namespace) -> None:
    from .errors import LintError
    from .lint import lint, verdict

    failed = []
    for notebook in args.notebooks:
        findings = lint(notebook)
        for finding in findings:
            print(finding.format(notebook))
        if not findings:
            print(f"{notebook}: no problems found")
        problem = verdict(notebook, findings, args.strict)
        if problem:
            failed.append(problem)
    sys.stdout.flush()
    if failed:
        raise LintError("; ".join(failed))


def _report_html(args: argparse.Namespace) -> None:
    from .errors import UsageError
    from .record import render_html

    if not args.executed.is_file():
        raise UsageError(f"no such executed notebook: {args.executed}")
    html = render_html(args.executed, args.output, strict=True)
    print(html)


def _report(err: BaseException) -> int:
    from stactask.exceptions import InvalidInput

    from .errors import Nb2TaskError, error_line, exit_code
    from .failure import context_lines

    if not isinstance(err, Nb2TaskError | InvalidInput | KeyboardInterrupt):
        # An unexpected error: the traceback helps whoever debugs it.
        logging.getLogger("nb2task").exception("unexpected error")
    # Whatever could still log (kernels shutting down, kernel clients awaiting garbage
    # collection) goes first: the error line must be the very last line.
    import gc

    gc.collect()
    sys.stdout.flush()
    for line in context_lines(err):
        print(line, file=sys.stderr)
    sys.stderr.flush()
    print(error_line(err), file=sys.stderr, flush=True)
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
