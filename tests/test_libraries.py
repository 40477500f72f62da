"""Fork-safe with the libraries geospatial notebooks use.

For each library, a task notebook imports it at top level (so the warm parent imports
it too) and does a little work that uses its native code (BLAS, GDAL, PROJ, GEOS,
OpenMP, numba's JIT, arrow's allocator, dask's threads). Under the fork engine it runs
30 payloads through ``run --payloads`` (two at a time, one warm parent) and 30 through
the Lambda handler (a warm process, as in Lambda): none hangs, every one gives the same
value, and the warm parent had exactly one thread at every fork (it refuses to fork
otherwise; each run reports the count). Under the kernel engine, a few payloads each
way give the same values.

The libraries come with the ``libraries`` extra (``pip install -e '.[dev]'`` has it);
without them these tests are skipped, but not in CI (``NB2TASK_REQUIRE_LIBRARIES=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import make_payload, sample_item, write_notebook

from nb2task.many import run_many
from nb2task.runner import Runner, RunOptions

PAYLOADS = 30
KERNEL_PAYLOADS = 3
PARAMETERS = 'payload = "x.json"\nworkdir = "."\nn: int = 0'
EMIT = """
import nb2task
items = nb2task.read_items(payload)
for item in items:
    item.properties["value"] = round(float(value), 6)
    item.properties["n"] = n
nb2task.emit(items)
"""
# library -> (its top-level import, the work that sets `value`)
LIBRARIES: dict[str, tuple[str, str]] = {
    "numpy": (
        "import numpy as np",
        "a = np.arange(40000, dtype=float).reshape(200, 200) / 1e4\nvalue = (a @ a.T).trace()",
    ),
    "pandas": (
        "import numpy as np\nimport pandas as pd",
        "df = pd.DataFrame({'k': np.arange(1000) % 7, 'v': np.arange(1000.0)})\n"
        "value = df.groupby('k').v.sum().max()",
    ),
    "xarray": (
        "import numpy as np\nimport xarray as xr",
        "da = xr.DataArray(np.arange(100.0).reshape(10, 10), dims=('y', 'x'))\n"
        "value = da.mean('x').sum().item()",
    ),
    "rasterio": (
        "import numpy as np\nimport rasterio\nfrom rasterio.io import MemoryFile\n"
        "from rasterio.transform import from_origin",
        "profile = dict(driver='GTiff', height=16, width=16, count=1, dtype='float32',\n"
        "               crs='EPSG:4326', transform=from_origin(0, 16, 1, 1))\n"
        "with MemoryFile() as memory:\n"
        "    with memory.open(**profile) as ds:\n"
        "        ds.write(np.arange(256, dtype='float32').reshape(16, 16), 1)\n"
        "    with memory.open() as ds:\n"
        "        value = ds.read(1).sum()",
    ),
    "shapely": ("import shapely", "value = shapely.Point(0, 0).buffer(1.0, 64).area"),
    "pyproj": (
        "from pyproj import Transformer",
        "x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(10, 50)\nvalue = x",
    ),
    "geopandas": (
        "import geopandas as gpd",
        "gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy([0, 1, 2], [0, 1, 2]), crs=4326)\n"
        "value = gdf.to_crs(3857).geometry.x.sum()",
    ),
    "sklearn": (
        "import numpy as np\nfrom sklearn.cluster import KMeans\n"
        "from sklearn.linear_model import LinearRegression",
        "X = np.arange(40.0).reshape(20, 2)\ny = X @ [1.5, -2.0] + 3\n"
        "model = LinearRegression().fit(X, y)\n"
        "inertia = KMeans(n_clusters=2, n_init=1, random_state=0).fit(X).inertia_\n"
        "value = model.intercept_ + inertia",
    ),
    "dask": (
        "import dask.array as da",
        "value = da.arange(10000, chunks=1000).sum().compute(scheduler='threads')",
    ),
    "numba": (
        "import numba",
        "@numba.njit(cache=True)\ndef total(k):\n    s = 0\n    for i in range(k):\n"
        "        s += i * i\n    return s\nvalue = total(1000)",
    ),
    "pyarrow": (
        "import pyarrow as pa",  # (pyarrow.compute takes 1.4 s to start in every process)
        "table = pa.table({'a': pa.array(range(100_000), type=pa.int64())})\n"
        "value = sum(chunk.to_numpy().sum() for chunk in table['a'].chunks)",
    ),
    "matplotlib": (
        "import matplotlib.pyplot as plt",
        "fig, ax = plt.subplots()\nax.plot([0, 1, 4])\nfig.canvas.draw()\n"
        "value = len(ax.lines) + fig.get_size_inches()[0]\nplt.close(fig)",
    ),
    "h5netcdf": (
        "import os\nimport h5netcdf",
        "path = os.path.join(workdir, 'values.nc')\n"
        "with h5netcdf.File(path, 'w') as f:\n    f.dimensions = {'x': 4}\n"
        "    f.create_variable('v', ('x',), float)[:] = [1.0, 2.0, 3.0, 4.0]\n"
        "with h5netcdf.File(path, 'r') as f:\n    value = f['v'][:].sum()",
    ),
}


def available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def require(library: str) -> None:
    if not available(library):
        if os.environ.get("NB2TASK_REQUIRE_LIBRARIES"):
            pytest.fail(f"{library} is not installed (the libraries extra)")
        pytest.skip(f"{library} is not installed (pip install -e '.[libraries]')")


def task_notebook(library: str, folder: Path) -> Path:
    imports, work = LIBRARIES[library]
    return write_notebook(folder / f"{library}-task.ipynb", PARAMETERS, imports, work, EMIT)


def payloads(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        payload = make_payload(tasks={"x": {"n": n}}, features=[sample_item(f"item-{n}")])
        path = folder / f"p{n:02d}.json"
        path.write_text(json.dumps(payload))
        paths.append(str(path))
    return paths


def values_from_payloads(
    library: str, engine: str, notebook: Path, inputs: list[str], out: Path
) -> tuple[dict[int, float], list[dict[str, Any]], dict[str, Any]]:
    """Run ``inputs`` as ``run --payloads`` does (two at a time, one runner); each
    payload's value by its n, the runs' stats, and the warm parent's report."""
    options = RunOptions.local(out, task_name="x", engine=engine)
    with Runner(notebook, options) as runner:
        rows = run_many(runner, inputs, out, 2, options)
        history = list(runner.executor.history)
        warm = dict(getattr(runner.executor, "warm_info", {}))
    failed = [(row.payload, row.error) for row in rows if row.error]
    assert not failed, failed
    values = {}
    for row in rows:
        [item] = json.loads(Path(str(row.output)).read_text())["features"]
        values[item["properties"]["n"]] = item["properties"]["value"]
    return values, history, warm


LAMBDA_CALLS = """
import json, sys
import nb2task
from nb2task import lambda_function
events = json.load(sys.stdin)
values = {}
for event in events:
    out = nb2task.lambda_handler(event, None)
    [item] = out["features"]
    values[item["properties"]["n"]] = item["properties"]["value"]
history = list(lambda_function._runner().executor.history)
print(json.dumps({"values": values, "history": history}))
"""


def values_from_lambda(
    engine: str, notebook: Path, count: int, tmp_path: Path
) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """``count`` events, one after the other, to the Lambda handler of one warm process."""
    events = [
        make_payload(tasks={"x": {"n": n}}, features=[sample_item(f"item-{n}")])
        for n in range(count)
    ]
    env = {
        **os.environ,
        "NB2TASK_NOTEBOOK": str(notebook),
        "NB2TASK_TASK_NAME": "x",
        "NB2TASK_ENGINE": engine,
        "AWS_LAMBDA_FUNCTION_NAME": "libraries",  # set up at import, as in Lambda
        "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", LAMBDA_CALLS],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(k): v for k, v in result["values"].items()}, result["history"]


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_fork_safe_with_real_libraries(
    library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(library)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    notebook = task_notebook(library, tmp_path)
    inputs = payloads(tmp_path / "in", PAYLOADS)

    fork, history, warm = values_from_payloads(library, "fork", notebook, inputs, tmp_path / "fork")
    assert sorted(fork) == list(range(PAYLOADS))
    assert len(set(fork.values())) == 1, fork  # the same work, the same value, every time
    assert [run.get("parent_threads") for run in history] == [1] * PAYLOADS
    # Imported in the warm parent, or left to each run with the reason said.
    assert any(m.split(".")[0] == library for m in warm["imported"] + warm["deferred"]), warm

    by_lambda, lambda_history = values_from_lambda("fork", notebook, PAYLOADS, tmp_path)
    assert by_lambda == fork
    assert [run.get("parent_threads") for run in lambda_history] == [1] * PAYLOADS

    kernel, _, _ = values_from_payloads(
        library, "kernel", notebook, inputs[:KERNEL_PAYLOADS], tmp_path / "kernel"
    )
    assert kernel == {n: fork[n] for n in range(KERNEL_PAYLOADS)}
    by_lambda_kernel, _ = values_from_lambda("kernel", notebook, KERNEL_PAYLOADS, tmp_path)
    assert by_lambda_kernel == kernel
