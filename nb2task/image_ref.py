"""Docker image references, parsed by the distribution reference grammar
(github.com/distribution/reference, regexp.go), before one reaches a Dockerfile."""

from __future__ import annotations

import re

from .errors import UsageError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

REPOSITORY = re.compile(_NAME, re.ASCII)
REFERENCE = re.compile(rf"{_NAME}(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
MAX_NAME = 255


def _check(text: object, flag: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(text, str) or not pattern.fullmatch(text) or len(text) > 4096:
        raise UsageError(f"{flag} {text!r} is not {what}")
    name = text.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if len(name) > MAX_NAME:
        raise UsageError(f"{flag} {text!r}: the repository name is over {MAX_NAME} characters")
    return text


def check_reference(text: object, flag: str) -> str:
    """``text`` if it is an image reference (``name[:tag][@digest]``); UsageError if not."""
    return _check(text, flag, REFERENCE, "an image reference (name[:tag][@digest])")


def check_repository(text: object, flag: str) -> str:
    """``text`` if it is an image repository name (no tag, no digest); UsageError if not."""
    return _check(text, flag, REPOSITORY, "an image repository (lowercase, no tag or digest)")
