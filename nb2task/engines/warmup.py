"""What the warm parent imports and runs once, so that every child starts warm.

IPython's shell, ``nb2task.runtime`` and pystac (``read_items``), and, best effort, the
notebook's own top-level imports. Each import is probed: one that leaves a thread
running (a native pool the settings of ``nb2task.engines.pools`` do not stop) would make
the parent unsafe to fork, so the warm parent starts again without it, and each run
imports it itself (``Warm.deferred`` says which, and why).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes

# What every run needs, warm in the parent and free in each child.
BASE_IMPORTS = ("nb2task.runtime", "pystac")


@dataclass
class Warm:
    """The warm-up's outcome."""

    shell: Any
    imported: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # "module: why"
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class StartsThreads(Exception):
    """Importing ``module`` left threads running in this process."""

    def __init__(self, module: str, threads: list[str]) -> None:
        self.module = module
        self.why = f"starts threads at import ({', '.join(threads)})"
        super().__init__(f"{module} {self.why}")


def notebook_imports(path: Path) -> list[str]:
    """Modules a notebook imports at top level (best effort: unparsable cells skipped)."""
    try:
        if path.suffix == ".ipynb":
            document = json.loads(path.read_text(encoding="utf-8"))
            sources = [
                "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in document.get("cells", [])
                if isinstance(c, dict) and c.get("cell_type") == "code"
            ]
        else:
            sources = [path.read_text(encoding="utf-8")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    modules: list[str] = []
    for source in sources:
        if not isinstance(source, str):
            continue
        # IPython syntax (magics, shell escapes) is not Python: drop those lines.
        code = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        )
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            for statement in node.body if isinstance(node, ast.Try) else [node]:
                if isinstance(statement, ast.Import):
                    modules += [alias.name for alias in statement.names]
                elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                    modules.append(statement.module or "")
    return list(dict.fromkeys(m for m in modules if m and m != "__future__"))


def is_installed(module: str, notebook_dir: Path | None) -> bool:
    """True for an installed module; False for one beside the notebook (it may change
    between runs, so each run imports it afresh) or one that is not found."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = spec.origin or (list(spec.submodule_search_locations or []) or [""])[0]
    if not origin or origin in ("built-in", "frozen") or notebook_dir is None:
        return True
    try:
        Path(origin).resolve().relative_to(notebook_dir)
    except ValueError:
        return True
    return False


def warm_up(
    modules: list[str], deferred: list[str], notebook_dir: Path | None, exercise: bool = True
) -> Warm:
    """Build the shell and import what the runs will need, but the ``deferred`` modules;
    run each path once (``exercise``) when more than one run will use it. Raise
    StartsThreads for the first module that leaves a thread behind."""
    from . import kernel_shim, shell

    started = time.perf_counter()
    prepared = shell.prepare_shell()
    kernel_shim.install_comms()  # before a library takes comm's functions as its own
    warm = Warm(prepared, deferred=list(deferred))
    skip = {entry.split(":", 1)[0] for entry in deferred}
    candidates = [*BASE_IMPORTS, *(m for m in modules if is_installed(m, notebook_dir))]
    for module in candidates:
        if module in skip or module in sys.modules:
            continue
        try:
            with (
                open(os.devnull, "w") as quiet,
                contextlib.redirect_stdout(quiet),
                contextlib.redirect_stderr(quiet),
            ):
                importlib.import_module(module)
            warm.imported.append(module)
        except BaseException as err:  # noqa: BLE001 - the notebook will report its own errors
            warm.failed.append(f"{module}: {type(err).__name__}")
        if processes.native_threads() > 1:
            names = [n for n in processes.thread_names()[1:] if n] or ["unnamed"]
            raise StartsThreads(module, names)
    if exercise:  # warm what every run touches, not only imports
        shell.exercise(prepared)
        exercise_runtime()
    warm.seconds = round(time.perf_counter() - started, 3)
    return warm


SAMPLE_ITEM = {
    "type": "Feature",
    "stac_version": "1.1.0",
    "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
    "id": "warm-up",
    "geometry": {"type": "Point", "coordinates": [0.0, 0.0]},
    "bbox": [0.0, 0.0, 0.0, 0.0],
    "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:code": "EPSG:4326"},
    "links": [{"rel": "self", "href": "https://example.com/warm-up.json"}],
    "assets": {"data": {"href": "data.tif", "type": "image/tiff", "roles": ["data"]}},
}


def exercise_runtime() -> None:
    """Read and serialise a sample item once: pystac loads its extension hooks and
    date parsing on first use (50 ms), which every child would otherwise pay."""
    import tempfile

    from nb2task import runtime

    with tempfile.TemporaryDirectory(prefix="nb2task-warm-") as tmp:
        path = Path(tmp) / "payload.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [SAMPLE_ITEM]}))
        with contextlib.suppress(Exception):
            for item in runtime.read_items(path):
                json.dumps(item.to_dict(transform_hrefs=False))
