"""Every ``NB2TASK_*`` environment variable nb2task reads, in one place: named, typed and
checked. A bad value is a ``UsageError`` naming the variable (exit 2): a setting is the
deployer's input, so it must never pass for an invalid payload (exit 3, which Cirrus
never retries) nor end in a raw crash.

``current()`` reads the environment anew each call (a dozen lookups, microseconds): the
Lambda handler and the tests change it between runs in one process. The command line
and the Lambda handler call it first thing, so a bad value stops them before any work.

Two variables are nb2task's own, set for the notebook's process and never by a user:
``NB2TASK_EMIT_DIR`` (where ``emit`` writes) and ``NB2TASK_RUN_MARK`` (the mark that
finds what a run started).
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENGINES = ("fork", "kernel")
PROGRESS_MODES = ("live", "plain")
# A task name, as the notebook's metadata and --task-name take it (notebook.TASK_NAME).
TASK_NAME = re.compile(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*")
# S3's rule for bucket names (general purpose buckets).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_MEGABYTES = 1024 * 1024  # a terabyte: anything above is a typo, not a limit
TRUE = ("1", "true", "yes", "y", "on")
FALSE = ("", "0", "false", "no", "n", "off")


@dataclass(frozen=True)
class Settings:
    """What the ``NB2TASK_*`` variables say, checked."""

    max_payload_bytes: int  # NB2TASK_MAX_PAYLOAD_MB: the most a payload may weigh
    log_level: str  # NB2TASK_LOG_LEVEL
    log_output: bool  # NB2TASK_LOG_OUTPUT: stream the cells' output to the log
    engine: str | None  # NB2TASK_ENGINE: overrides the notebook's metadata
    notebook: str | None  # NB2TASK_NOTEBOOK: the image's notebook
    task_name: str | None  # NB2TASK_TASK_NAME: the image's task name
    docker: str  # NB2TASK_DOCKER: the docker client `build` runs
    progress: str | None  # NB2TASK_PROGRESS: plain turns the live status line off
    payload_bucket: str | None  # NB2TASK_PAYLOAD_BUCKET, else CIRRUS_PAYLOAD_BUCKET
    oversized_prefix: str  # NB2TASK_OVERSIZED_PREFIX: where big Lambda outputs go
    memory_stats: bool  # NB2TASK_MEMORY_STATS: each run's private memory (the bench's)
    record_output_bytes: int  # NB2TASK_RECORD_OUTPUT_MB: the most the record keeps of an output
    record_bytes: int  # NB2TASK_RECORD_MB: the most the record keeps of all outputs


def megabytes(text: str) -> int:
    """A positive, finite number of megabytes (fractions allowed), as bytes."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number of megabytes") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_MEGABYTES:
        raise ValueError(f"must be above 0 and at most {MAX_MEGABYTES} (megabytes)")
    size = int(value * 1024**2)
    if size < 1:
        raise ValueError("is under one byte")
    return size


def flag(text: str) -> bool:
    """A yes or no: 1/true/yes/on or 0/false/no/off (or empty)."""
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    raise ValueError(f"must be one of {', '.join(TRUE + FALSE[1:])}")


def one_of(
    choices: tuple[str, ...], fold: Callable[[str], str] = str.lower
) -> Callable[[str], str]:
    """A parser that takes one of ``choices`` (compared after ``fold``)."""

    def parse(text: str) -> str:
        if fold(text.strip()) not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return fold(text.strip())

    return parse


def matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    """A parser that takes a whole match of ``pattern``."""

    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise ValueError(f"is not {what}")
        return text

    return parse


def plain_text(text: str) -> str:
    """Any text without control characters (it reaches file names, commands and keys)."""
    if not text.strip():
        raise ValueError("is empty")
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise ValueError("holds a control character")
    return text


def key_prefix(text: str) -> str:
    """An S3 key prefix: plain text, no ``..`` segment; slashes at its ends dropped."""
    prefix = plain_text(text).strip("/")
    if ".." in prefix.split("/") or not prefix:
        raise ValueError("is not a key prefix (empty, or a .. segment)")
    return prefix


# name: (parser, default). A default of None means "not set" (the field is None).
SETTINGS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "NB2TASK_MAX_PAYLOAD_MB": (megabytes, "256"),
    "NB2TASK_LOG_LEVEL": (one_of(LOG_LEVELS, str.upper), "INFO"),
    "NB2TASK_LOG_OUTPUT": (flag, "0"),
    "NB2TASK_ENGINE": (one_of(ENGINES), None),
    "NB2TASK_NOTEBOOK": (plain_text, None),
    "NB2TASK_TASK_NAME": (matching(TASK_NAME, "a task name (letters, digits, dashes)"), None),
    "NB2TASK_DOCKER": (plain_text, "docker"),
    "NB2TASK_PROGRESS": (one_of(PROGRESS_MODES), None),
    "NB2TASK_PAYLOAD_BUCKET": (matching(BUCKET_NAME, "an S3 bucket name"), None),
    "NB2TASK_OVERSIZED_PREFIX": (key_prefix, "tmp/oversized"),
    "NB2TASK_MEMORY_STATS": (flag, "0"),
    "NB2TASK_RECORD_OUTPUT_MB": (megabytes, "4"),
    "NB2TASK_RECORD_MB": (megabytes, "32"),
}


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting's value: its variable parsed, or its default (None: not set). An empty
    variable counts as not set, as a shell's ``VAR=`` means."""
    parse, default = SETTINGS[name]
    text = (os.environ if environ is None else environ).get(name, "")
    if text == "":
        return None if default is None else parse(default)
    try:
        return parse(text)
    except ValueError as err:
        from .errors import UsageError  # not at the top: it imports nbclient (0.4 s)

        raise UsageError(f"{name}={text!r} {err}") from None


def current(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting, checked: the first bad one is a UsageError naming it."""
    env = os.environ if environ is None else environ
    bucket = read("NB2TASK_PAYLOAD_BUCKET", env)
    if bucket is None and env.get("CIRRUS_PAYLOAD_BUCKET"):
        bucket = env["CIRRUS_PAYLOAD_BUCKET"]  # Cirrus' own variable, set by its deployment
    return Settings(
        max_payload_bytes=read("NB2TASK_MAX_PAYLOAD_MB", env),
        log_level=read("NB2TASK_LOG_LEVEL", env),
        log_output=read("NB2TASK_LOG_OUTPUT", env),
        engine=read("NB2TASK_ENGINE", env),
        notebook=read("NB2TASK_NOTEBOOK", env),
        task_name=read("NB2TASK_TASK_NAME", env),
        docker=read("NB2TASK_DOCKER", env),
        progress=read("NB2TASK_PROGRESS", env),
        payload_bucket=bucket,
        oversized_prefix=read("NB2TASK_OVERSIZED_PREFIX", env),
        memory_stats=read("NB2TASK_MEMORY_STATS", env),
        record_output_bytes=read("NB2TASK_RECORD_OUTPUT_MB", env),
        record_bytes=read("NB2TASK_RECORD_MB", env),
    )
