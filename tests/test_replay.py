"""What a run's record carries, and ``nb2task replay``: the same payload, parameters, task
and engine again here; whether the failure reproduces; a folder for JupyterLab; and no
credential in any record."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from support import (
    get_bytes,
    get_json,
    make_payload,
    put_json,
    run_cli,
    run_task,
    sample_item,
    write_notebook,
)

from nb2task import __version__
from nb2task.errors import NotebookCellError, UsageError
from nb2task.payload import load
from nb2task.provenance import payload_digest, public_url
from nb2task.replay import Replay, prepare_jupyter, read_record, replay

FAILS_WHEN = 'payload = "x.json"\nworkdir = "."\nn: int = 1\nlabel: str = "x"'
CELLS = (
    "import nb2task\nitems = nb2task.read_items(payload)",
    "for item in items:\n    item.properties['ratio'] = 1 / (n - 2)\n    item.properties['label'] = label",
    "nb2task.emit(items)",
)
# Credentials as a real run has them in its environment (moto accepts any).
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAREPLAYTESTKEY0001",
    "AWS_SECRET_ACCESS_KEY": "replay-secret-0f9e8d7c6b5a4",
    "AWS_SESSION_TOKEN": "replay-session-token-1a2b3c4d",
}


def failing_on_s3(s3: Any, bucket: str) -> tuple[str, dict[str, Any]]:
    payload = make_payload(
        tasks={"fails": {"label": "from-payload"}},
        upload_options={"path_template": f"s3://{bucket}/${{collection}}/${{id}}"},
        # The record goes where the item's outputs would: under its own collection.
        features=[{**sample_item(), "collection": "runs"}],
    )
    return put_json(s3, bucket, "payloads/in.json", payload), payload


def test_public_urls_carry_no_credentials() -> None:
    assert public_url(
        "https://user:pw@bucket.s3.amazonaws.com/in.json?X-Amz-Credential=AKIA%2F1"
        "&X-Amz-Signature=abc&versionId=7&X-Amz-Security-Token=tok"
    ) == (
        "https://bucket.s3.amazonaws.com/in.json?X-Amz-Credential=REDACTED"
        "&X-Amz-Signature=REDACTED&versionId=7&X-Amz-Security-Token=REDACTED"
    )
    assert public_url("s3://bucket/in.json") == "s3://bucket/in.json"


@pytest.mark.usefixtures("engine")
def test_the_record_says_what_the_run_was(
    s3: Any, bucket: str, tmp_path: Path, engine: str
) -> None:
    nb = write_notebook(tmp_path / "fails.ipynb", FAILS_WHEN, *CELLS, metadata={"version": "2.1.0"})
    url, payload = failing_on_s3(s3, bucket)
    result = run_cli(
        "run", nb, url, "-p", "n", "2", "--output", f"s3://{bucket}/out.json", env=SECRETS
    )
    assert result.returncode == 1
    record_url = f"s3://{bucket}/runs/item-1/fails.executed.ipynb"
    node = get_json(s3, record_url)
    run = node["metadata"]["nb2task_run"]
    assert run == {
        "nb2task_version": __version__,
        "task": {"name": "fails", "version": "2.1.0"},
        "engine": engine,
        "payload": {"url": url, "digest": payload_digest(payload), "id": payload["id"]},
        "parameters": {"n": 2},
        "download_assets": [],
        "error": {"line": result.last_stderr_line, "exit_code": 1},
    }
    assert node["metadata"]["papermill"]["parameters"]["label"] == "from-payload"
    # Nothing of the credentials the run had, in the record or its rendering.
    for key in (record_url, record_url.replace(".ipynb", ".html")):
        text = get_bytes(s3, key).decode()
        assert not [name for name, value in SECRETS.items() if value in text], key


def test_a_record_never_holds_the_environments_credentials(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    nb = write_notebook(
        tmp_path / "leaky.ipynb",
        'payload = "x.json"',
        "import os\nprint(os.environ['AWS_SECRET_ACCESS_KEY'])\n"
        "raise RuntimeError('token ' + os.environ['AWS_SESSION_TOKEN'])",
    )
    url, _ = failing_on_s3(s3, bucket)
    result = run_cli("run", nb, url, "--output", f"s3://{bucket}/out.json", env=SECRETS)
    assert result.returncode == 1
    record_url = f"s3://{bucket}/runs/item-1/leaky.executed.ipynb"
    for key in (record_url, record_url.replace(".ipynb", ".html")):
        text = get_bytes(s3, key).decode()
        assert not [name for name, value in SECRETS.items() if value in text], key
    assert not [name for name, value in SECRETS.items() if value in result.stderr]


@pytest.fixture
def failed_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run that failed (``-p n 2``) on a payload given as a document (no URL: the
    record keeps it); its notebook and record."""
    nb = write_notebook(tmp_path / "task" / "fails.ipynb", FAILS_WHEN, *CELLS)
    _, error = run_task(nb, make_payload(), tmp_path / "run", parameters=(("n", "2"),))
    assert error is not None
    return nb, tmp_path / "run" / "fails.executed.ipynb"


def test_replay_says_whether_the_failure_reproduces(
    failed_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, record_path = failed_run
    record = read_record(record_path)
    assert "inline" in record.run["payload"]  # no URL: the payload is kept

    same = replay(record, workdir=tmp_path / "again")
    assert same.verdict() == "replay: the failure reproduces"
    assert same.exit_code == 1
    executed = json.loads((tmp_path / "again" / "fails.executed.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["n"] == 2  # the recorded -p

    fixed = write_notebook(tmp_path / "fixed.ipynb", FAILS_WHEN, *CELLS[:1], CELLS[2])
    assert replay(record, notebook=fixed, workdir=tmp_path / "fixed").verdict() == (
        "replay: the failure did not reproduce (this run succeeded); it was: "
        "ZeroDivisionError: division by zero (notebook cell In [4], line 2: "
        "item.properties['ratio'] = 1 / (n - 2))"
    )
    different = Replay(record, NotebookCellError("KeyError", "'x'", 2, 3, "d['x']"), same.workdir)
    assert different.verdict().startswith("replay: this run failed differently; the recorded")
    assert different.exit_code == 1


def test_replay_runs_the_recorded_code_when_the_notebook_changed(
    failed_run: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nb, record_path = failed_run
    write_notebook(nb, FAILS_WHEN, CELLS[0], CELLS[2])  # "fixed" since the run
    caplog.set_level(logging.WARNING)
    result = replay(read_record(record_path), workdir=tmp_path / "again")
    assert result.verdict() == "replay: the failure reproduces"
    assert f"{nb} changed since the recorded run: replaying the recorded code" in caplog.text
    assert (tmp_path / "again" / "fails.recorded.ipynb").exists()


def test_replay_warns_when_the_payload_changed(
    failed_run: tuple[Path, Path], tmp_path: Path, write_json, caplog: pytest.LogCaptureFixture
) -> None:
    _, record_path = failed_run
    other = write_json("other.json", make_payload(workflow="another-workflow"))
    caplog.set_level(logging.WARNING)
    result = replay(read_record(record_path), payload=str(other), workdir=tmp_path / "again")
    assert "the payload differs from the recorded run's" in caplog.text
    assert result.verdict() == "replay: the failure reproduces"

    # A recorded payload that cannot be read here (a path of the machine that ran it).
    node = json.loads(record_path.read_text())
    node["metadata"]["nb2task_run"]["payload"] = {"url": "/nowhere/in.json", "digest": "x"}
    record_path.write_text(json.dumps(node))
    with pytest.raises(
        UsageError,
        match=r"cannot be read here \(payload not found: /nowhere/in.json\): pass it with --payload",
    ):
        replay(read_record(record_path), workdir=tmp_path / "again")


def test_replay_prepares_a_folder_for_jupyter(
    failed_run: tuple[Path, Path], tmp_path: Path, s3: Any, bucket: str
) -> None:
    _, record_path = failed_run
    record = read_record(record_path)
    # Its payload, with an asset on S3 this time.
    payload = load(tmp_path / "run" / "input-payload.json")
    payload["features"][0]["assets"] = {"data": {"href": f"s3://{bucket}/data.txt"}}
    s3.put_object(Bucket=bucket, Key="data.txt", Body=b"tiny")
    source = put_json(s3, bucket, "in.json", payload)

    notebook = prepare_jupyter(record, tmp_path / "lab", payload=source, assets="")
    assert notebook == tmp_path / "lab" / "fails.ipynb"
    local = json.loads((tmp_path / "lab" / "payload.json").read_text())
    href = local["features"][0]["assets"]["data"]["href"]
    assert Path(href).read_text() == "tiny" and href.startswith(
        str(tmp_path / "lab" / "input-assets")
    )
    node = json.loads(notebook.read_text())
    first = node["cells"][0]
    assert first["metadata"]["tags"] == ["nb2task-skip"]
    assert "The recorded run failed in cell In [4], line 2" in first["source"]
    [injected] = [
        c for c in node["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
    ]
    assert "payload = 'payload.json'\n" in "".join(injected["source"])
    assert "n = 2\n" in "".join(injected["source"])
    assert "workdir = 'work'\n" in "".join(injected["source"])
    # The recorded outputs stay: the traceback is there at the failing cell.
    assert any(o.get("output_type") == "error" for c in node["cells"] for o in c.get("outputs", []))
