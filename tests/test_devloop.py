"""The developer loop as a newcomer walks it, with the commands of docs/loop.md: new,
test (green), break it, test (red, readable), a failing run on S3, replay of that run's
record from S3 (the failure reproduces here), build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import get_json, keys, put_json, run_cli


def break_the_mean(notebook: Path) -> None:
    """A 'refactor' that rounds the mean differently and loses the empty-case guard."""
    node = json.loads(notebook.read_text())
    for cell in node["cells"]:
        source = "".join(cell["source"])
        if "def summarise" in source:
            source = source.replace(
                '    if not kept:\n        return {"count": 0, "mean": None, "min": None, "max": None}\n',
                "",
            ).replace("round(mean, 3)", "round(mean, 1)")
            cell["source"] = source
    notebook.write_text(json.dumps(node))


def test_new_test_break_run_replay_build(tmp_path: Path, s3: Any, bucket: str) -> None:
    # 1. A new task passes its golden cases at once.
    made = run_cli("new", "demo", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    green = run_cli("test", "demo/demo.ipynb", cwd=tmp_path)
    assert green.returncode == 0, green.stdout + green.stderr
    assert green.stdout.splitlines()[-1] == "3 case(s) passed"

    # 2-3. Broken, the test says what changed, and where.
    break_the_mean(tmp_path / "demo" / "demo.ipynb")
    red = run_cli("test", "demo/demo.ipynb", cwd=tmp_path)
    assert red.returncode == 1
    assert "  FAIL    success/sample  (" in red.stdout
    assert "the output payload differs from out.json (1 difference(s)):" in red.stdout
    assert "features[0].properties.demo:mean: expected 16.75, got 16.8" in red.stdout
    assert red.last_stderr_line == (
        "nb2task.errors.GoldenMismatch: 1 of 3 case(s) failed: success/sample"
    )

    # 4. As Batch runs it: payload and data on S3; a threshold that leaves nothing kept.
    sample = json.loads((tmp_path / "demo" / "demo.payload.json").read_text())
    s3.upload_file(str(tmp_path / "demo" / "data" / "sample-observations.csv"), bucket, "obs.csv")
    sample["features"][0]["assets"]["observations"]["href"] = f"s3://{bucket}/obs.csv"
    process = sample["process"][0]
    process["upload_options"]["path_template"] = f"s3://{bucket}/demo/${{id}}/"
    process["tasks"]["demo"]["threshold"] = 100
    url_in = put_json(s3, bucket, "payloads/in.json", sample)
    run = run_cli(
        "run", "demo/demo.ipynb", url_in, "--output", f"s3://{bucket}/payloads/out.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.last_stderr_line == (
        "ZeroDivisionError: division by zero (notebook cell In [5], line 3: "
        'stats = summarise(item.assets["observations"].href))'
    )
    assert "the notebook failed in cell In [5], line 3" in run.stderr
    record = f"s3://{bucket}/demo/sample-1/demo.executed.ipynb"
    assert {"demo/sample-1/demo.executed.ipynb", "demo/sample-1/demo.executed.html"} <= keys(
        s3, bucket
    )
    assert get_json(s3, record)["metadata"]["nb2task_run"]["payload"]["url"] == url_in

    # 5. Replayed here from its record: the same failure.
    replayed = run_cli("replay", record, cwd=tmp_path)
    assert replayed.returncode == 1
    lines = replayed.stderr.splitlines()
    assert lines[-1] == run.last_stderr_line
    assert "replay: the failure reproduces" in lines
    assert (tmp_path / "local-output" / "replay" / "demo.executed.ipynb").exists()

    # 6. The build context.
    built = run_cli("build", "demo/demo.ipynb", "-o", "build/demo", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    context = tmp_path / "build" / "demo"
    assert (context / "notebook" / "demo.ipynb").exists()
    assert 'NB2TASK_TASK_NAME="demo"' in (context / "Dockerfile").read_text()
