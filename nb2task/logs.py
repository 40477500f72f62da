"""One logging setup for every entry point: records to stderr, noisy libraries quiet,
and, for ``--payloads``, each payload's records in its own ``run.log``."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .redact import RedactingFilter

FORMAT = "%(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("botocore", "s3transfer", "urllib3", "fsspec", "asyncio", "aiobotocore")


def configure(level: str, fmt: str = FORMAT, extra: logging.Filter | None = None) -> None:
    """Log at ``level`` to stderr (or to the handlers already there, as in Lambda)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not [h for h in root.handlers if not isinstance(h, _PerThreadFiles)]:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        if isinstance(handler, _PerThreadFiles):
            continue
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(_redacting)
        if extra is not None:
            handler.addFilter(extra)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # jupyter_client's "could not destroy zmq context" when a kernel client is collected
    # after its event loop closed: harmless, and it would trail the run's last line.
    logging.getLogger("traitlets").setLevel(logging.ERROR)


_redacting = RedactingFilter()


class _PerThreadFiles(logging.Handler):
    """Writes each record to the file its thread was given (``to_file``), if any."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[int, logging.Handler] = {}
        self.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
        self.addFilter(_redacting)

    def emit(self, record: logging.LogRecord) -> None:
        handler = self.files.get(threading.get_ident())
        if handler is not None:
            handler.handle(record)


_per_thread = _PerThreadFiles()


@contextlib.contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Also write the records of the calling thread to ``path`` while inside."""
    root = logging.getLogger()
    if _per_thread not in root.handlers:
        root.addHandler(_per_thread)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_per_thread.formatter)
    _per_thread.files[threading.get_ident()] = handler
    try:
        yield
    finally:
        _per_thread.files.pop(threading.get_ident(), None)
        handler.close()


def quiet_stderr() -> None:
    """Keep other threads' records off stderr (``--payloads``: they go to run.log)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, _PerThreadFiles):
            handler.addFilter(lambda record: threading.current_thread() is threading.main_thread())
