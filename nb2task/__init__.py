"""nb2task: run parameterized Jupyter notebooks as Cirrus (stactask) tasks.

In a notebook, ``import nb2task`` is light: ``read_items``, ``read_payload``,
``download_assets`` and ``emit`` come from ``nb2task.runtime``; the task machinery
(stactask, papermill) loads only when used.
"""

from __future__ import annotations

import warnings
from typing import Any

from .runtime import download_assets, emit, read_items, read_payload

# stactask warns about payloads' legacy keys (``upload_options.collections``, ``process``
# as a dict, ``tasks`` as a list) on every access, its own included: the one filter, by
# message, since the warnings are attributed to whichever module reads the key.
STACTASK_LEGACY_WARNINGS = (
    r"'(upload_options\.collections|process|tasks)' .*(deprecated|unsupported)"
)
warnings.filterwarnings("ignore", message=STACTASK_LEGACY_WARNINGS, category=DeprecationWarning)

__version__ = "0.1.0"

__all__ = [
    "NotebookTask",
    "__version__",
    "download_assets",
    "emit",
    "lambda_handler",
    "read_items",
    "read_payload",
]


def __getattr__(name: str) -> Any:
    # Heavy parts load on first use, so that notebooks import nb2task quickly.
    if name == "NotebookTask":
        from .task import NotebookTask

        return NotebookTask
    if name == "lambda_handler":
        from .lambda_function import lambda_handler

        return lambda_handler
    raise AttributeError(f"module 'nb2task' has no attribute {name!r}")
