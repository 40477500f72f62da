"""nb2task's exceptions and the one-line error format Cirrus reads.

Bad input (payload, parameters) is ``stactask.exceptions.InvalidInput``: Cirrus marks
such a payload INVALID instead of FAILED. Everything else that goes wrong in a run
is an ``Nb2TaskError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nbclient.exceptions import CellTimeoutError, DeadKernelError

if TYPE_CHECKING:
    from stactask.exceptions import InvalidInput

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_INPUT",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "AssetError",
    "BuildError",
    "GoldenMismatch",
    "InvalidInput",
    "InvalidItemError",
    "LintError",
    "Nb2TaskError",
    "NoItemsError",
    "NotebookCellError",
    "NotebookDiedError",
    "NotebookError",
    "NotebookExitedEarly",
    "OutputError",
    "PayloadUnavailable",
    "RunTimeoutError",
    "Terminated",
    "UsageError",
    "error_line",
    "exit_code",
]

EXIT_FAILED = 1  # the task ran and failed (notebook raised, bad emitted items, I/O)
EXIT_USAGE = 2  # the command line or the notebook file itself is wrong
EXIT_INVALID_INPUT = 3  # the payload or its parameters are invalid
EXIT_INTERRUPTED = 130  # stopped by SIGINT, Ctrl-C (the shell's 128 + 2)
EXIT_TERMINATED = 143  # stopped by SIGTERM (the shell's 128 + 15)

# Exceptions a notebook may raise whose meaning Cirrus knows: the kernel reports
# only the class name, so we restore the dotted name here.
_KNOWN_KERNEL_ERRORS = {
    "InvalidInput": "stactask.exceptions.InvalidInput",
    "FailedValidation": "stactask.exceptions.FailedValidation",
}


class Nb2TaskError(Exception):
    """Base class of nb2task's own errors."""


class UsageError(Nb2TaskError):
    """The command line is wrong."""


class NotebookError(UsageError):
    """The notebook file cannot be used as a task (unreadable, bad parameters cell)."""


class BuildError(UsageError):
    """The notebook cannot be turned into a build context, or the image build failed."""


class LintError(Nb2TaskError):
    """``nb2task lint`` found errors (or warnings, with ``--strict``)."""


class GoldenMismatch(Nb2TaskError):
    """``nb2task test``: a golden case failed."""


class AssetError(Nb2TaskError):
    """An asset could not be downloaded or uploaded."""


class PayloadUnavailable(Nb2TaskError):
    """Storage could not be reached now (refused connection, 5xx): not the payload's
    fault, so Cirrus retries it (FAILED), unlike a payload that does not exist."""


class OutputError(Nb2TaskError):
    """The output payload could not be written."""


class RunTimeoutError(Nb2TaskError, CellTimeoutError):
    """The notebook (or one cell) ran longer than its timeout (an nbclient
    CellTimeoutError, as code written for papermill expects)."""


class NotebookExitedEarly(Nb2TaskError):
    """The notebook called ``sys.exit(0)`` before it emitted anything (not a success:
    an empty output must be said with ``emit([])``)."""


class NotebookDiedError(Nb2TaskError, DeadKernelError):
    """The process running the notebook died (a signal, ``os._exit``, out of memory), or
    could not start (an nbclient DeadKernelError, as code written for papermill expects)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: a Batch job timeout or cancellation).

    A KeyboardInterrupt, as SIGINT's is, and for the same reason: raised by the signal
    handler wherever the main thread is, it must not be swallowed by an ``except
    Exception`` there (logging's own, around every log line, did: the run went on)."""


class InvalidItemError(Nb2TaskError):
    """The notebook emitted something that is not a valid STAC item."""


class NoItemsError(InvalidItemError):
    """The notebook emitted no item, and the run required some (``--require-items``)."""


class NotebookCellError(Nb2TaskError):
    """A cell of the notebook raised; carries the kernel's error name, the cell, and (when
    the executed notebook had it) the traceback and the cell's failing line."""

    def __init__(
        self,
        ename: str,
        evalue: str,
        cell_index: int,
        exec_count: int | None,
        source: str,
        traceback: Sequence[str] = (),
        line: int | None = None,
    ):
        self.ename = ename
        self.evalue = evalue
        self.cell_index = cell_index
        self.exec_count = exec_count
        self.source = source
        self.traceback = list(traceback)  # frames as plain text (no ANSI colours)
        self.line = line  # the line of the cell that was running, 1-based
        # "In [n]" is what the executed notebook shows; the failing line says where (the
        # cell's first line when the traceback did not say).
        lines = source.splitlines()
        if line is not None and 0 < line <= len(lines) and lines[line - 1].strip():
            where, text = f"In [{exec_count}], line {line}", lines[line - 1].strip()
        else:
            where, text = f"In [{exec_count}]", next((t.strip() for t in lines if t.strip()), "")
        if len(text) > 60:
            text = text[:57] + "..."
        # The message is cut before the cell is named, so that a long one keeps the cell.
        if len(evalue) > MAX_MESSAGE_CHARS - 200:
            evalue = evalue[: MAX_MESSAGE_CHARS - 200] + "... (cut)"
        super().__init__(f"{evalue} (notebook cell {where}: {text})")

    @property
    def dotted_name(self) -> str:
        """The error's name as Cirrus should record it."""
        return _KNOWN_KERNEL_ERRORS.get(self.ename, self.ename)


def error_name(exc: BaseException) -> str:
    """Dotted name of an exception, as Cirrus' post-batch step parses it."""
    if isinstance(exc, NotebookCellError):
        return exc.dotted_name
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# Docker's log driver splits lines at 16 KiB and Cirrus reads only the last piece: a
# longer line would lose its error name and turn INVALID into FAILED.
MAX_MESSAGE_CHARS = 8_000


def error_message(exc: BaseException) -> str:
    """The exception's message on one line, secrets redacted, cut to ``MAX_MESSAGE_CHARS``."""
    from .redact import redact

    message = " ".join(redact(str(exc)).split()) or "(no message)"
    if len(message) > MAX_MESSAGE_CHARS:
        cut = len(message) - MAX_MESSAGE_CHARS
        message = (
            f"{message[:MAX_MESSAGE_CHARS]}... ({cut} characters cut; "
            "the executed notebook has the whole message)"
        )
    return message


def error_line(exc: BaseException) -> str:
    """One line, ``dotted.ErrorName: message``, for the last line of stderr."""
    return f"{error_name(exc)}: {error_message(exc)}"


def with_dotted_name(exc: Exception) -> Exception:
    """``exc`` re-typed so that its class's ``__name__`` is its dotted name.

    AWS Lambda reports ``type(exc).__name__`` as the errorType, and Cirrus marks a
    payload INVALID only for ``stactask.exceptions.InvalidInput`` (Cirrus'
    post-batch step builds its exceptions the same way). ``isinstance`` still holds.
    """
    name = error_name(exc)
    if type(exc).__name__ == name:
        return exc
    # "builtins": a traceback then prints the dotted name once, not module + name.
    renamed: type[Exception] = type(name, (type(exc),), {"__module__": "builtins"})
    clone = renamed.__new__(renamed)  # the class's own __new__: OSError has one of its own
    clone.__dict__.update(exc.__dict__)
    clone.args = (error_message(exc),)
    return clone


def __getattr__(name: str) -> Any:
    # stactask loads in ~0.4 s (boto3, aiohttp): only when its InvalidInput is wanted,
    # so that the engines (imported by papermill itself) stay light.
    if name == "InvalidInput":
        from stactask.exceptions import InvalidInput

        return InvalidInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def invalid_input(message: str) -> InvalidInput:
    """stactask's InvalidInput, for modules that must not load stactask until it is raised."""
    from stactask.exceptions import InvalidInput

    return InvalidInput(message)


def exit_code(exc: BaseException) -> int:
    """The process exit code for a run that ended with ``exc``."""
    from stactask.exceptions import InvalidInput

    if isinstance(exc, InvalidInput):
        return EXIT_INVALID_INPUT
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED
