"""nb2task's speed and size against a hand-written stactask Task doing the same work.

    .venv/bin/python bench/run_bench.py [--repeat N] [--json bench/results.json] [--quick]

nb2task is measured as installed (its bytecode compiled first, as pip and the images do).
Every figure is a ratio or a difference against an anchor measured in the same run,
interleaved (each round runs every variant once), as medians; so they hold on any
machine. Each nb2task figure is measured under both engines (fork, kernel).

(a) cold: one payload per fresh process (as in Batch), against the anchor Task's CLI and
    against the papermill CLI glued into the same stactask steps (bench/papermill_task.py);
    the same pinned to one CPU (taskset -c 0); where nb2task's time goes (its log lines)
(b) warm: the Lambda handler called again and again (record uploaded to a moto S3
    server, that upload on its own line), against the anchor's ``handler`` in a warm
    process; ``run --payloads`` over
    50 payloads, against one cold run + 50 times 40 ms
(c) a 400-item, 1.3 MB payload, cold: against the anchor; the executed notebook's size
(d) import time of the Lambda handler module (with its init) against ``import stactask``
(e) peak memory of a cold run (the process tree's PSS) against the anchor's; private
    memory each warm payload adds
(f) asset download and upload throughput against plain boto3, on the same files
(g) what nb2task's runtime adds to stactask's installed dependencies (two venvs, sizes)
(h) ``run --payloads`` over 1 000 payloads (fork engine): the process's memory stays flat
(i) flood: a notebook that displays four 30 MB images, then raises: nb2task's own
    process's peak memory (VmHWM; not the kernel's or the child's) against the memory the
    generated Lambda definition asks for, and against the same process running the
    minimal notebook; the record's and the HTML's sizes
"""

from __future__ import annotations

import argparse
import compileall
import copy
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
NOTEBOOK = REPO / "notebooks" / "minimal.ipynb"
PAYLOAD = REPO / "notebooks" / "minimal.payload.json"
BIN = Path(sys.executable).parent
ENGINES = ("fork", "kernel")
BUCKET = "bench"
# Credentials shaped like real ones: nb2task redacts secret values from what it writes,
# and the cost of that is part of what is measured.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHBENCHBENCH0",
    "AWS_SECRET_ACCESS_KEY": "bench/Secret+Access/Key0123456789abcdefgh",
    "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEBenchSessionToken" + "x" * 300,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
MEASURES = (
    "cold", "warm", "payloads", "large", "import", "memory", "transfer", "size", "many", "flood",
)  # fmt: skip
TARGETS = {
    "cold_ratio": 1.2,
    "warm_extra_ms": 30,
    "payloads_per_payload_ms": 40,
    "large_ratio": 1.2,
    "large_notebook_kb": 100,
    "import_extra_ms": 150,
    "cold_memory_ratio": 1.5,
    "warm_private_mb": 20,
    "transfer_ratio": 0.9,
    "runtime_extra_mb": 40,
    "flood_lambda_ratio": 0.5,
}


def median(values: list[float]) -> float:
    return statistics.median(values)


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Seconds ``command`` takes; it must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd or REPO, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    return elapsed


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each variant, every round running each once (warm OS caches first)."""
    for measure in variants.values():
        measure()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for round_ in range(rounds):
        # A new order each round: no variant always runs first (cold caches, GC).
        random.Random(round_).shuffle(order)
        for name in order:
            samples[name].append(variants[name]())
    return {name: median(values) for name, values in samples.items()}


class MotoServer:
    """A moto S3 server in its own process (not in ours: it would compete for the GIL)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.env = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())
        self.s3.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": AWS_ENV["AWS_SESSION_TOKEN"],
        "region_name": AWS_ENV["AWS_REGION"],
    }


def sample_payload() -> dict[str, Any]:
    """The minimal example's payload, its asset hrefs made absolute (copies of it live in
    other folders, and a Lambda event has no folder to resolve them against)."""
    payload: dict[str, Any] = json.loads(PAYLOAD.read_text())
    for item in payload["features"]:
        for asset in item["assets"].values():
            asset["href"] = str((PAYLOAD.parent / asset["href"]).resolve())
    return payload


def payload_for_s3() -> dict[str, Any]:
    """The sample payload as Cirrus would send it: assets in S3 (the notebook only reads
    metadata, so none is fetched), outputs and so the record going to the moto bucket."""
    payload = sample_payload()
    payload["process"][0]["upload_options"]["path_template"] = f"s3://{BUCKET}/out/${{id}}/"
    for item in payload["features"]:
        for key, asset in item["assets"].items():
            asset["href"] = f"s3://{BUCKET}/input/{item['id']}/{key}.tif"
    return payload


def large_payload(count: int = 400) -> dict[str, Any]:
    """The sample payload with ``count`` items (about 1.3 MB)."""
    payload = sample_payload()
    item = payload["features"][0]
    payload["features"] = []
    for i in range(count):
        clone = copy.deepcopy(item)
        clone["id"] = f"{item['id']}-{i:04d}"
        clone["properties"]["description"] = "x" * 2500  # a realistic item's weight
        payload["features"].append(clone)
    return payload


# --- (a), (c) cold ------------------------------------------------------------------


def cold_commands(payload: Path, out: Path) -> dict[str, list[str]]:
    common = [str(payload), "--no-upload", "--output", str(out), "--logging", "WARNING"]
    commands = {
        "anchor": [sys.executable, str(BENCH / "anchor_task.py"), "run", *common],
        "papermill+stactask": [sys.executable, str(BENCH / "papermill_task.py"), "run", *common],
    }
    for engine in ENGINES:
        commands[f"nb2task {engine}"] = [
            str(BIN / "nb2task"), "run", str(NOTEBOOK), *common, "--engine", engine,
        ]  # fmt: skip
    return commands


def measure_cold(tmp: Path, rounds: int) -> dict[str, Any]:
    commands = cold_commands(PAYLOAD, tmp / "cold-out.json")
    medians = interleaved({k: (lambda c=c: run(c)) for k, c in commands.items()}, rounds)
    anchor = medians["anchor"]
    result: dict[str, Any] = {
        "seconds": medians,
        "ratio": {k: v / anchor for k, v in medians.items() if k != "anchor"},
    }
    # On one CPU (Lambda below 1 769 MB has less than one vCPU): the same, pinned.
    if shutil.which("taskset"):
        del commands["papermill+stactask"]
        pinned = {k: ["taskset", "-c", "0", *c] for k, c in commands.items()}
        medians = interleaved({k: (lambda c=c: run(c)) for k, c in pinned.items()}, rounds)
        result["pinned_seconds"] = medians
        result["pinned_ratio"] = {
            k: v / medians["anchor"] for k, v in medians.items() if k != "anchor"
        }
    result["timeline_ms"] = {engine: cold_timeline(engine, rounds) for engine in ENGINES}
    return result


def cold_timeline(engine: str, rounds: int) -> dict[str, float]:
    """Where a cold run's time goes, from nb2task's own log lines (medians, ms): from the
    start to its first check of the payload, from there to the output written ("done"),
    and from there to the process's exit."""
    samples: dict[str, list[float]] = {
        "to_first_check": [],
        "checks_to_done": [],
        "done_to_exit": [],
    }
    command = [str(BIN / "nb2task"), "run", str(NOTEBOOK), str(PAYLOAD), "--no-upload",
               "--output", os.devnull, "--logging", "INFO", "--engine", engine]  # fmt: skip
    for _ in range(max(3, rounds)):
        started = time.monotonic()
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
        marks: dict[str, float] = {}
        assert proc.stderr is not None
        for line in proc.stderr:
            for mark in ("check:", "done:"):
                if "nb2task.progress: " in line and mark in line and mark not in marks:
                    marks[mark] = time.monotonic() - started
        proc.wait()
        ended = time.monotonic() - started
        if proc.returncode or len(marks) < 2:
            raise SystemExit(f"cold timeline ({engine}): the run failed")
        samples["to_first_check"].append(marks["check:"] * 1000)
        samples["checks_to_done"].append((marks["done:"] - marks["check:"]) * 1000)
        samples["done_to_exit"].append((ended - marks["done:"]) * 1000)
    return {k: median(v) for k, v in samples.items()}


def measure_large(tmp: Path, rounds: int) -> dict[str, Any]:
    payload = tmp / "large.json"
    payload.write_text(json.dumps(large_payload()))
    commands = cold_commands(payload, tmp / "large-out.json")
    del commands["papermill+stactask"]
    medians = interleaved({k: (lambda c=c: run(c)) for k, c in commands.items()}, rounds)
    sizes = {}
    for engine in ENGINES:  # once more with the workdir kept, to weigh the record
        workdir = tmp / f"large-{engine}"
        run(commands[f"nb2task {engine}"] + ["--workdir", str(workdir)])
        sizes[engine] = (workdir / "minimal.executed.ipynb").stat().st_size / 1024
    anchor = medians["anchor"]
    return {
        "payload_kb": payload.stat().st_size / 1024,
        "seconds": medians,
        "ratio": {k: v / anchor for k, v in medians.items() if k != "anchor"},
        "executed_notebook_kb": sizes,
    }


# --- (b) warm -----------------------------------------------------------------------


def measure_warm(moto: MotoServer, tmp: Path, rounds: int, count: int) -> dict[str, Any]:
    payload = tmp / "warm-payload.json"
    payload.write_text(json.dumps(payload_for_s3()))
    results: dict[str, list[dict[str, Any]]] = {}

    def worker(kind: str, engine: str | None) -> Callable[[], float]:
        env = {**moto.env, "NB2TASK_NOTEBOOK": str(NOTEBOOK), "NB2TASK_LOG_LEVEL": "WARNING"}
        env["NB2TASK_MEMORY_STATS"] = "1"  # each run reports its private memory
        env["AWS_LAMBDA_FUNCTION_NAME"] = "bench"  # the handler sets up at import, as in Lambda
        if engine:
            env["NB2TASK_ENGINE"] = engine
        name = f"nb2task {engine}" if engine else "anchor"

        def measure() -> float:
            command = [sys.executable, str(BENCH / "warm_worker.py"), kind, str(payload), "3"]
            proc = subprocess.run(
                [*command, str(count)], capture_output=True, text=True, env=env, check=False
            )
            if proc.returncode:
                raise SystemExit(f"warm worker {name} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(name, []).append(result)
            return float(result["median_s"])

        return measure

    variants = {"anchor": worker("anchor", None)}
    for engine in ENGINES:
        variants[f"nb2task {engine}"] = worker("lambda", engine)
    medians = interleaved(variants, rounds)
    anchor = medians["anchor"]
    # The record's upload (the anchor uploads nothing), per payload, on its own line.
    record_put = {
        k: median([r["record_put_s"] for r in v]) * 1000
        for k, v in results.items()
        if all(r.get("record_put_s") is not None for r in v)
    }
    private = {
        k: median([r["private_kb_per_payload"] for r in v if r.get("private_kb_per_payload")])
        / 1024
        for k, v in results.items()
        if any(r.get("private_kb_per_payload") for r in v)
    }
    return {
        "per_payload_ms": {k: v * 1000 for k, v in medians.items()},
        "extra_ms": {k: (v - anchor) * 1000 for k, v in medians.items() if k != "anchor"},
        "record_put_ms": record_put,
        "extra_without_record_ms": {
            k: (v - anchor) * 1000 - record_put.get(k, 0.0)
            for k, v in medians.items()
            if k != "anchor"
        },
        "private_mb_per_payload": private,
    }


def measure_payloads(tmp: Path, rounds: int, results: dict[str, Any], n: int) -> dict[str, Any]:
    cold_s = results["cold"]["seconds"]
    folder = tmp / "many"
    folder.mkdir(exist_ok=True)
    source = sample_payload()
    paths = []
    for i in range(n):
        payload = copy.deepcopy(source)
        payload["id"] = f"{source['id']}-{i}"
        path = folder / f"p{i:03d}.json"
        path.write_text(json.dumps(payload))
        paths.append(str(path))

    def command(engine: str) -> Callable[[], float]:
        out = tmp / f"many-out-{engine}"

        def measure() -> float:
            shutil.rmtree(out, ignore_errors=True)
            return run(
                [str(BIN / "nb2task"), "run", str(NOTEBOOK), "--local", "--engine", engine,
                 "--logging", "WARNING", "--output-dir", str(out), "--payloads", *paths]
            )  # fmt: skip

        return measure

    medians = interleaved({f"nb2task {e}": command(e) for e in ENGINES}, rounds)
    budget = {k: cold_s[k] + n * TARGETS["payloads_per_payload_ms"] / 1000 for k in medians}
    return {
        "payloads": n,
        "jobs": os.cpu_count(),
        "seconds": medians,
        "budget_s": budget,
        "per_payload_ms_over_cold": {k: (v - cold_s[k]) / n * 1000 for k, v in medians.items()},
    }


# --- (d) import ---------------------------------------------------------------------


def measure_import(rounds: int) -> dict[str, Any]:
    env = {**os.environ, "NB2TASK_NOTEBOOK": str(NOTEBOOK), "AWS_LAMBDA_FUNCTION_NAME": "bench"}
    code = "import {}; import os; os._exit(0)"  # exit at once: no atexit clean-up counted
    variants = {
        "python": lambda: run([sys.executable, "-c", "pass"]),
        "import stactask": lambda: run([sys.executable, "-c", code.format("stactask")]),
        "import nb2task.lambda_function": lambda: run(
            [sys.executable, "-c", code.format("nb2task.lambda_function")], env=env
        ),
    }
    medians = interleaved(variants, rounds * 2)
    return {
        "seconds": medians,
        "extra_ms": (medians["import nb2task.lambda_function"] - medians["import stactask"]) * 1000,
    }


# --- (e) memory ---------------------------------------------------------------------


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kb(root: int) -> int:
    """Proportional set size of ``root`` and everything below it (shared pages counted
    once across the processes that share them, as forked processes do)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            total += pss_kb(pid)
        except OSError:
            continue  # it ended meanwhile
    return total


def peak_pss_mb(command: list[str]) -> float:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss_kb(proc.pid))
        time.sleep(0.01)
    return peak / 1024


def measure_memory(tmp: Path, rounds: int) -> dict[str, Any]:
    commands = cold_commands(PAYLOAD, tmp / "mem-out.json")
    del commands["papermill+stactask"]
    peaks = {
        k: median([peak_pss_mb(c) for _ in range(max(2, rounds // 2))]) for k, c in commands.items()
    }
    anchor = peaks["anchor"]
    return {
        "peak_pss_mb": peaks,
        "ratio": {k: v / anchor for k, v in peaks.items() if k != "anchor"},
    }


def measure_many(tmp: Path, n: int = 1000) -> dict[str, Any]:
    """``run --payloads`` over ``n`` payloads in one process: its memory early in the run
    (a tenth of the payloads done) and at the end, and the peak of its whole tree (the warm
    engine included). Flat means no payload leaves anything behind in the process."""
    folder = tmp / "many-1000"
    folder.mkdir(exist_ok=True)
    source = sample_payload()
    for i in range(n):
        payload = copy.deepcopy(source)
        payload["id"] = f"{source['id']}-{i}"
        (folder / f"p{i:04d}.json").write_text(json.dumps(payload))
    out = tmp / "many-1000-out"
    command = [
        str(BIN / "nb2task"), "run", str(NOTEBOOK), "--local", "--engine", "fork",
        "--logging", "WARNING", "--output-dir", str(out), "--payloads", str(folder),
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    samples: list[tuple[int, int, int]] = []  # payloads done, the process's PSS, its tree's
    while proc.poll() is None:
        done = len(list(out.glob("*/output-payload.json")))
        try:
            samples.append((done, pss_kb(proc.pid), tree_pss_kb(proc.pid)))
        except OSError:
            break
        time.sleep(0.25)
    seconds = time.monotonic() - started
    succeeded = len(list(out.glob("*/output-payload.json")))
    # Early: once a tenth of the payloads are done (the engine warm, imports over).
    early = [own for done, own, _ in samples if done >= n / 10][:4]
    late = [own for done, own, _ in samples if done >= n * 0.9]
    return {
        "payloads": n,
        "succeeded": succeeded,
        "seconds": seconds,
        "process_pss_mb_early": median([v / 1024 for v in early]) if early else None,
        "process_pss_mb_end": median([v / 1024 for v in late]) if late else None,
        "process_pss_mb_peak": max(own for _, own, _ in samples) / 1024,
        "tree_pss_mb_peak": max(tree for _, _, tree in samples) / 1024,
    }


# --- (f) transfer -------------------------------------------------------------------


# --- (i) flood -------------------------------------------------------------------------

FLOOD_IMAGE_MB = 30
FLOOD_CELLS = (
    'payload = "x.json"\nworkdir = "."\n',
    "import base64, os\nfrom IPython.display import display\n"
    "for i in range(4):\n"
    f"    png = base64.b64encode(os.urandom({FLOOD_IMAGE_MB} * 1024 * 1024 * 3 // 4)).decode()\n"
    "    display({'image/png': png, 'text/plain': f'image {i}'}, raw=True)\n"
    "    del png",
    "raise RuntimeError('after the flood')",
)


def own_peak_mb(command: list[str], cwd: Path) -> tuple[float, int]:
    """The peak resident memory of ``command``'s own process (VmHWM, which only grows:
    sampled to the end), not of what it starts; and its exit code."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    peak_kb = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except OSError:
            pass  # it ended meanwhile
        time.sleep(0.005)
    return peak_kb / 1024, proc.returncode


def measure_flood(tmp: Path, rounds: int) -> dict[str, Any]:
    import nbformat

    from nb2task.notebook import LambdaSettings

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in FLOOD_CELLS]
    nb.cells[0].metadata["tags"] = ["parameters"]
    flood = tmp / "flood" / "flood.ipynb"
    flood.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, flood)
    lambda_mb = LambdaSettings().memory_mb  # what `build` writes into the Lambda definition
    results: dict[str, Any] = {"lambda_memory_mb": lambda_mb}
    for engine in ENGINES:
        peaks, anchors, exits = [], [], set()
        for index in range(max(1, rounds // 2)):
            workdir = tmp / f"flood-{engine}-{index}"
            common = [str(PAYLOAD), "--no-upload", "--logging", "WARNING", "--engine", engine]
            minimal = [str(BIN / "nb2task"), "run", str(NOTEBOOK), *common,
                       "--output", str(tmp / "flood-anchor.json")]  # fmt: skip
            anchors.append(own_peak_mb(minimal, REPO)[0])
            out = tmp / "flood-out.json"
            command = [str(BIN / "nb2task"), "run", str(flood), *common,
                       "--workdir", str(workdir), "--output", str(out)]  # fmt: skip
            peak, code = own_peak_mb(command, REPO)
            peaks.append(peak)
            exits.add(code)
        record = workdir / "flood.executed.ipynb"
        html = workdir / "flood.executed.html"
        name = f"nb2task {engine}"
        peak, anchor = median(peaks), median(anchors)
        results[name] = {
            "own_peak_mb": peak,
            "minimal_own_peak_mb": anchor,
            "lambda_ratio": peak / lambda_mb,
            "minimal_ratio": peak / anchor,
            "exit_codes": sorted(exits),
            "record_mb": record.stat().st_size / 2**20 if record.exists() else None,
            "html_mb": html.stat().st_size / 2**20 if html.exists() else None,
        }
    return results


def measure_transfer(moto: MotoServer, tmp: Path, rounds: int, mb: int = 32) -> dict[str, Any]:
    """Three ``mb`` MB files up and down: nb2task's asset I/O against plain boto3."""
    import boto3

    os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=moto.endpoint)
    from stactask.payload import Payload

    from nb2task.assets import S3Client, download_assets, upload_local_assets

    files = []
    for i in range(3):
        path = tmp / f"asset-{i}.bin"
        path.write_bytes(os.urandom(mb * 1024 * 1024))
        files.append(path)
    client = boto3.client("s3", endpoint_url=moto.endpoint, **_boto_credentials())
    item = json.loads(PAYLOAD.read_text())["features"][0]
    item["assets"] = {f"a{i}": {"href": str(p), "roles": ["data"]} for i, p in enumerate(files)}
    payload = Payload(
        {"process": [{"upload_options": {"path_template": f"s3://{BUCKET}/up/${{id}}"}}]}
    )

    def ours_up() -> float:
        start = time.perf_counter()
        upload_local_assets(payload, [copy.deepcopy(item)], S3Client())
        return time.perf_counter() - start

    def boto_up() -> float:
        start = time.perf_counter()
        for i, p in enumerate(files):
            client.upload_file(str(p), BUCKET, f"boto/{i}.bin")
        return time.perf_counter() - start

    remote = copy.deepcopy(item)
    remote["assets"] = {
        f"a{i}": {"href": f"s3://{BUCKET}/boto/{i}.bin", "roles": ["data"]} for i in range(3)
    }
    boto_up()

    def ours_down() -> float:
        target = tmp / "down-ours"
        shutil.rmtree(target, ignore_errors=True)
        start = time.perf_counter()
        download_assets([copy.deepcopy(remote)], ["*"], target)
        return time.perf_counter() - start

    def boto_down() -> float:
        target = tmp / "down-boto"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        start = time.perf_counter()
        for i in range(3):
            client.download_file(BUCKET, f"boto/{i}.bin", str(target / f"{i}.bin"))
        return time.perf_counter() - start

    medians = interleaved(
        {"upload nb2task": ours_up, "upload boto3": boto_up,
         "download nb2task": ours_down, "download boto3": boto_down},
        rounds,
    )  # fmt: skip
    total = 3 * mb
    return {
        "mb": total,
        "mb_per_s": {k: total / v for k, v in medians.items()},
        "ratio": {
            "upload": medians["upload boto3"] / medians["upload nb2task"],
            "download": medians["download boto3"] / medians["download nb2task"],
        },
    }


# --- (g) size -----------------------------------------------------------------------


def measure_size(tmp: Path) -> dict[str, Any]:
    """site-packages of stactask alone, and of nb2task's runtime as the base image
    installs it (the runtime lock; debugpy and jedi removed)."""
    uv = shutil.which("uv") or str(BIN / "uv")
    lock = REPO / "requirements" / "runtime.lock"
    sizes = {}
    for name, requirement, remove in (
        ("stactask", ["stactask==0.7.0"], []),
        ("nb2task", [str(REPO)], ["debugpy", "jedi", "parso"]),
    ):
        venv = tmp / f"venv-{name}"
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "-p", str(venv), "-c", str(lock), *requirement],
            check=True,
        )
        if remove:
            subprocess.run([uv, "pip", "uninstall", "-q", "-p", str(venv), *remove], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        out = subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True, check=True)
        sizes[name] = int(out.stdout.split()[0]) / 1024
    return {"site_packages_mb": sizes, "extra_mb": sizes["nb2task"] - sizes["stactask"]}


# --- report -------------------------------------------------------------------------


def table(results: dict[str, Any]) -> list[str]:
    """The results against their targets, one row a measure."""
    t = TARGETS
    rows: list[tuple[str, str, str, str]] = [("measure", "fork", "kernel", "target")]

    def both(fmt: str, values: dict[str, float]) -> tuple[str, str]:
        fork, kernel = (fmt.format(values[f"nb2task {e}"]) for e in ENGINES)
        return fork, kernel

    def add(label: str, cells: tuple[str, str], target: str) -> None:
        rows.append((label, cells[0], cells[1], target))

    if "cold" in results:
        c = results["cold"]
        add("(a) cold, × anchor Task CLI", both("{:.2f}×", c["ratio"]), f"≤ {t['cold_ratio']}×")
        if "pinned_ratio" in c:
            add("(a) cold on one CPU, × anchor", both("{:.2f}×", c["pinned_ratio"]),
                f"≤ {t['cold_ratio']}×")  # fmt: skip
        papermill = c["seconds"]["papermill+stactask"]
        per_papermill = {k: v / papermill for k, v in c["seconds"].items()}
        add("(a) cold, × papermill+stactask", both("{:.2f}×", per_papermill), "—")
        timeline = c.get("timeline_ms") or {}
        if timeline:
            cells = tuple(
                "{to_first_check:.0f} | {checks_to_done:.0f} | {done_to_exit:.0f}".format(
                    **timeline[e]
                )
                for e in ENGINES
            )
            add("(a) cold ms: to first check | to done | to exit", cells, "—")  # type: ignore[arg-type]
    if "warm" in results:
        warm = results["warm"]
        add("(b) warm Lambda, ms over handler", both("+{:.0f} ms", warm["extra_ms"]), "—")
        if warm.get("record_put_ms"):
            add("(b)   of which the record's PUT", both("{:.0f} ms", warm["record_put_ms"]), "—")
            add(
                "(b)   the rest (nb2task's own)",
                both("+{:.0f} ms", warm["extra_without_record_ms"]),
                f"≤ +{t['warm_extra_ms']} ms",
            )
    if "payloads" in results:
        p = results["payloads"]
        cells = tuple(
            f"{p['seconds'][f'nb2task {e}']:.1f} ({p['budget_s'][f'nb2task {e}']:.1f})"
            for e in ENGINES
        )
        add(f"(b) --payloads ×{p['payloads']}, s (budget)", cells, "≤ cold + 40 ms each")  # type: ignore[arg-type]
    if "large" in results:
        lg = results["large"]
        add("(c) 400 items, × anchor", both("{:.2f}×", lg["ratio"]), f"≤ {t['large_ratio']}×")
        sizes = tuple(f"{lg['executed_notebook_kb'][e]:.0f}" for e in ENGINES)
        add("(c) executed notebook, KB", sizes, f"≤ {t['large_notebook_kb']}")  # type: ignore[arg-type]
    if "memory" in results:
        ratio = results["memory"]["ratio"]
        add("(e) cold peak PSS, × anchor", both("{:.2f}×", ratio), f"≤ {t['cold_memory_ratio']}×")
    private = results.get("warm", {}).get("private_mb_per_payload") or {}
    if private:
        fork = f"{private.get('nb2task fork', float('nan')):.1f}"
        add("(e) private MB per warm payload", (fork, "(a kernel)"), f"≤ {t['warm_private_mb']}")
    if "import" in results:
        extra_ms = f"+{results['import']['extra_ms']:.0f} ms"
        add("(d) handler import, over stactask", (extra_ms, ""), f"≤ +{t['import_extra_ms']} ms")
    if "transfer" in results:
        r = results["transfer"]["ratio"]
        updown = f"{r['upload']:.2f} / {r['download']:.2f}"
        add("(f) transfer, × boto3 (up / down)", (updown, ""), f"≥ {t['transfer_ratio']}×")
    if "size" in results:
        mb = f"+{results['size']['extra_mb']:.0f}"
        add("(g) runtime over stactask's deps, MB", (mb, ""), f"≤ +{t['runtime_extra_mb']}")
    if "many" in results:
        m = results["many"]
        label = f"(h) --payloads ×{m['payloads']}: process MB early → end (tree peak)"
        early, end = m["process_pss_mb_early"], m["process_pss_mb_end"]
        cells = f"{early:.0f} → {end:.0f} ({m['tree_pss_mb_peak']:.0f})"
        add(label, (cells, ""), "flat")
    if "flood" in results:
        f = results["flood"]

        def cell(engine: str) -> str:
            r = f[f"nb2task {engine}"]
            return (
                f"{r['own_peak_mb']:.0f} MB = {r['lambda_ratio']:.2f}× (minimal "
                f"{r['minimal_ratio']:.1f}×), record {r['record_mb'] or 0:.1f} MB, "
                f"HTML {r['html_mb'] or 0:.1f} MB, exit {r['exit_codes']}"
            )

        add(f"(i) flood 4×{FLOOD_IMAGE_MB} MB: own peak × Lambda's {f['lambda_memory_mb']} MB",
            (cell("fork"), cell("kernel")), f"≤ {t['flood_lambda_ratio']}×")  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measure (default 5)")
    parser.add_argument("--json", type=Path, default=BENCH / "results.json")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no venv sizes")
    parser.add_argument("--only", nargs="*", choices=MEASURES, help="the measures to run")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.repeat
    only = set(args.only or MEASURES)
    if args.quick:
        only -= {"size", "many"}
    # nb2task as it is deployed: pip (and the images) compile its bytecode at install; an
    # editable install under PYTHONDONTWRITEBYTECODE would compile every module per run.
    compileall.compile_dir(str(REPO / "nb2task"), quiet=1)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    results: dict[str, Any] = {"machine": machine}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nb2task-bench-") as name:
        tmp = Path(name)
        moto = MotoServer()
        try:
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("cold", lambda: measure_cold(tmp, rounds)),
                ("warm", lambda: measure_warm(moto, tmp, max(2, rounds // 2), 15)),
                ("payloads", lambda: measure_payloads(tmp, max(1, rounds // 3), results, 50)),
                ("large", lambda: measure_large(tmp, max(2, rounds // 2))),
                ("import", lambda: measure_import(rounds)),
                ("memory", lambda: measure_memory(tmp, rounds)),
                ("transfer", lambda: measure_transfer(moto, tmp, rounds)),
                ("size", lambda: measure_size(tmp)),
                ("many", lambda: measure_many(tmp)),
                ("flood", lambda: measure_flood(tmp, rounds)),
            ]
            for key, measure in steps:
                if key in only and (key != "payloads" or "cold" in results):
                    print(f"measuring {key} ...", file=sys.stderr, flush=True)
                    results[key] = measure()
        finally:
            moto.stop()
    results["targets"] = TARGETS
    results["seconds"] = round(time.perf_counter() - started, 1)
    print("\n".join(table(results)))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(written to {args.json}; {results['seconds']} s)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
