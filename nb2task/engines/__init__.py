"""How a notebook's cells run: two engines behind one seam (``Executor``).

- ``fork`` (default on Linux): a child forked from a warm parent per payload
  (``fork``, ``warm_parent``, ``zygote``, ``warmup``, ``pools``, ``child``, ``shell``,
  ``kernel_shim``, ``fork_client``, ``messages``);
- ``kernel``: a Jupyter kernel per payload (``kernel``).

Both run through one papermill driver (``driver``) in the task's process, as papermill
engines (``papermill_engines``); ``processes`` keeps what a run starts from outliving it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .executor import Execution, Executor, Limits, describe_exit

__all__ = [
    "ENGINES",
    "Execution",
    "Executor",
    "Limits",
    "choose_engine",
    "create_executor",
    "default_engine",
    "describe_exit",
]

ENGINES = ("fork", "kernel")


def default_engine() -> str:
    """``fork`` where processes can fork (Linux), else ``kernel``."""
    return "fork" if hasattr(os, "fork") and sys.platform.startswith("linux") else "kernel"


def choose_engine(requested: str | None, setting: str | None, kernelspec: dict[str, Any]) -> str:
    """The engine for a notebook: asked for (``--engine``), else its metadata setting,
    else ``kernel`` for a kernel that is not Python, else the default."""
    for name in (requested, setting):
        if name:
            if name not in ENGINES:
                from ..errors import UsageError

                raise UsageError(f"unknown engine {name!r} (choose from: {', '.join(ENGINES)})")
            return name
    language = str(kernelspec.get("language") or "python").lower()
    return default_engine() if language == "python" else "kernel"


def create_executor(
    name: str, notebook_path: Path | None, kernelspec: dict[str, Any], once: bool = False
) -> Executor:
    """An executor of the named engine for the notebook at ``notebook_path`` (for one
    payload only, if ``once``)."""
    writable_home()
    kernel_name = str(kernelspec.get("name") or "python3")
    language = str(kernelspec.get("language") or "python")
    if name == "fork":
        from .fork import ForkExecutor

        return ForkExecutor(notebook_path, kernel_name, language, once)
    from .kernel import KernelExecutor

    return KernelExecutor(notebook_path, kernel_name, language, once)


# Where IPython, Jupyter and matplotlib write their own files, by default under HOME.
HOME_DIRS = {
    "IPYTHONDIR": ".ipython",
    "JUPYTER_CONFIG_DIR": ".jupyter",
    "JUPYTER_DATA_DIR": ".local/share/jupyter",
    "JUPYTER_RUNTIME_DIR": ".local/share/jupyter/runtime",
    "MPLCONFIGDIR": ".config/matplotlib",
}


def writable_home() -> None:
    """If HOME cannot be written (a read-only image, a missing folder), point IPython,
    Jupyter and matplotlib at a temporary folder instead, as in Lambda; settings already
    made are kept."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        return
    base = Path(tempfile.gettempdir()) / f"nb2task-home-{os.getuid()}"
    for name, relative in HOME_DIRS.items():
        os.environ.setdefault(name, str(base / relative))
