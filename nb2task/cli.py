"""The ``nb2task`` command line: parses arguments, calls the API, prints.

Exit codes: 0 success, 1 the task failed, 2 bad usage or unusable notebook,
3 invalid input (payload or parameters), 143 stopped by SIGTERM. On failure the
last line on stderr is ``dotted.ErrorName: message``, which Cirrus' post-batch
step parses.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__

LOCAL_WORKDIR = "local-output"
QUIET_LOGGERS = (
    "botocore",
    "s3transfer",
    "urllib3",
    "fsspec",
    "asyncio",
    "aiobotocore",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nb2task``."""
    parser = argparse.ArgumentParser(
        prog="nb2task", description="Run parameterized Jupyter notebooks as Cirrus tasks."
    )
    parser.add_argument("--version", action="version", version=f"nb2task {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a notebook as a task on one payload")
    run.add_argument("notebook", type=Path, help="the notebook (.ipynb)")
    add_run_arguments(run)
    run.add_argument(
        "--payloads", nargs="+", metavar="INPUT",
        help="run on many payloads instead of one; each gets <output dir>/<payload stem>/",
    )  # fmt: skip
    run.add_argument(
        "--jobs", type=_positive_int, default=1, help="with --payloads: runs at a time"
    )
    run.add_argument(
        "--output-dir", type=Path, default=Path(LOCAL_WORKDIR),
        help=f"with --payloads: where each payload's folder goes (default: {LOCAL_WORKDIR}/)",
    )  # fmt: skip

    inspect = commands.add_parser("inspect", help="show a notebook's parameters")
    inspect.add_argument("notebook", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the JSON Schema")

    build = commands.add_parser("build", help="write a Docker build context and deploy files")
    build.add_argument("notebook", type=Path)
    build.add_argument("-o", "--output-dir", type=Path, help="where (default: build/<name>)")
    build.add_argument("--name", help="task name (default: notebook metadata or file stem)")
    build.add_argument("--requirements", type=Path, help="requirements file of the notebook")
    build.add_argument("--base-image", help="the nb2task base image to build FROM")
    build.add_argument("--image", help="image repository (default: nb2task/<name>)")
    build.add_argument("--tag", help="image tag prefix (default: the task version)")
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
        default=os.environ.get("NB2TASK_DOCKER", "docker"),
        help="the docker client to run (default: $NB2TASK_DOCKER or docker)",
    )
    build.add_argument("--network", help="docker build --network (e.g. host)")
    return parser


def build_task_parser() -> argparse.ArgumentParser:
    """The parser of ``nb2task-task``: stactask's CLI, for the notebook baked into an image."""
    parser = argparse.ArgumentParser(
        prog="nb2task-task",
        description="Run this image's notebook task (NB2TASK_NOTEBOOK) on a payload.",
    )
    parser.add_argument("--version", action="version", version=f"nb2task {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_arguments(commands.add_parser("run", help="run the task on one payload"))
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
        help="set a parameter (overrides the payload)",
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
        "--logging",
        default=os.environ.get("NB2TASK_LOG_LEVEL", "INFO").upper(),
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


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    value = _positive(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text} is not a whole number")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nb2task`` console script."""
    return _dispatch(build_parser().parse_args(argv))


def task_main(argv: list[str] | None = None) -> int:
    """Entry point of ``nb2task-task``: the image's notebook, from NB2TASK_NOTEBOOK."""
    args = build_task_parser().parse_args(argv)
    args.notebook = Path(os.environ.get("NB2TASK_NOTEBOOK", ""))
    args.task_name = args.task_name or os.environ.get("NB2TASK_TASK_NAME") or None
    return _dispatch(args)


def _on_sigterm(signum: int, frame: Any) -> None:
    from .errors import Terminated

    raise Terminated("stopped by SIGTERM (job timeout or cancellation)")


def _dispatch(args: argparse.Namespace) -> int:
    # Batch sends SIGTERM before it kills: unwind, so the record is kept and the last
    # line still says what happened.
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "run":
            if not str(args.notebook) or str(args.notebook) == ".":
                from .errors import UsageError

                raise UsageError("NB2TASK_NOTEBOOK is not set: the image must name its notebook")
            _configure_logging(args.logging)
            _run(args)
        elif args.command == "inspect":
            _inspect(args)
        elif args.command == "build":
            _configure_logging("INFO")
            _build(args)
        return 0
    except KeyboardInterrupt:
        print("KeyboardInterrupt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure ends in one clean line
        return _report(err)


def _run(args: argparse.Namespace) -> None:
    from .task import run_notebook

    if getattr(args, "payloads", None):
        _run_many(args)
        return
    options: dict[str, Any] = {
        "workdir": args.workdir,
        "save_workdir": args.save_workdir,
        "upload": args.upload,
        "validate": args.validate,
    }
    output = args.output
    if args.local:
        options["workdir"] = args.workdir or Path(LOCAL_WORKDIR)
        options["save_workdir"] = True
        options["upload"] = False
        output = output or str(Path(options["workdir"]) / "output-payload.json")
    if args.download_assets is not None:
        options["download_assets"] = args.download_assets
    run_notebook(
        args.notebook,
        args.input,
        output,
        task_name=args.task_name,
        overrides=dict(args.parameter),
        cell_timeout=args.cell_timeout,
        timeout=args.timeout,
        **options,
    )


def _run_many(args: argparse.Namespace) -> None:
    from .errors import UsageError
    from .many import run_many

    if args.input is not None or args.output is not None or args.workdir is not None:
        raise UsageError("--payloads replaces INPUT, --output and --workdir: use --output-dir")
    run_args = [
        "--logging", args.logging,
        "--upload" if args.upload and not args.local else "--no-upload",
        "--validate" if args.validate else "--no-validate",
    ]  # fmt: skip
    if args.task_name:
        run_args += ["--task-name", args.task_name]
    for name, value in args.parameter:
        run_args += ["-p", name, value]
    for flag, value in (
        ("--download-assets", args.download_assets),
        ("--cell-timeout", args.cell_timeout),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            run_args += [flag, str(value)]
    runs = run_many(args.notebook.resolve(), args.payloads, args.output_dir, args.jobs, run_args)
    print(f"{len(runs)} payloads done: outputs in {args.output_dir}/<payload>/", file=sys.stderr)


def _build(args: argparse.Namespace) -> None:
    from .build import BuildOptions, build_context, build_images

    options = BuildOptions(
        output_dir=args.output_dir,
        name=args.name,
        requirements_file=args.requirements,
        **({"base_image": args.base_image} if args.base_image else {}),
        image=args.image,
        tag=args.tag,
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
        print(json.dumps(notebook.schema.json_schema(title=notebook.name), indent=2))
        return
    rows = [("name", "type", "default", "help")]
    for p in notebook.schema.parameters:
        default = (
            "(required)" if p.required else f"= {p.default}" if p.computed else repr(p.default)
        )
        rows.append((p.name, p.type_label, default, p.help))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{notebook.name} {notebook.settings.version}: {notebook.path}")
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    reserved = sorted(notebook.schema.declared_reserved)
    print(f"injected by nb2task: {', '.join(reserved) if reserved else 'none'}")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # jupyter_client's "could not destroy zmq context" when a kernel client is collected
    # after its event loop closed: harmless, and it would trail the run's last line.
    logging.getLogger("traitlets").setLevel(logging.ERROR)


def _report(err: Exception) -> int:
    from stactask.exceptions import InvalidInput

    from .errors import Nb2TaskError, error_line, exit_code

    if not isinstance(err, Nb2TaskError | InvalidInput):
        # An unexpected error: the traceback helps whoever debugs it.
        logging.getLogger("nb2task").exception("unexpected error")
    # Whatever could still log (spare kernels, kernel clients awaiting garbage
    # collection) goes first: the error line must be the very last line.
    if "nb2task.engine" in sys.modules:
        sys.modules["nb2task.engine"].launcher.discard()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    print(error_line(err), file=sys.stderr, flush=True)
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
