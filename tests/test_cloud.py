"""S3 payloads and assets, upload options, the run record, the Lambda handler.

Everything goes over HTTP to a real moto S3 server on 127.0.0.1 (the ``s3_endpoint``
fixture); nb2task runs as a real subprocess, under each engine (the ``engine`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import (
    NB2TASK_TASK,
    NDVI_ID,
    NOTEBOOKS,
    FaultProxy,
    get_bytes,
    get_json,
    keys,
    local_hrefs,
    make_payload,
    ndvi_payload,
    put_json,
    run_cli,
    sample_item,
    write_notebook,
)

pytestmark = pytest.mark.usefixtures("engine")

WRITES_ASSETS = """
import pathlib, pystac, nb2task
items = nb2task.read_items(payload)
out = []
for item in items:
    path = pathlib.Path(workdir) / f"{item.id}-result.txt"
    path.write_text(f"made from {item.id}")
    item.add_asset("result", pystac.Asset(href=str(path), media_type="text/plain", roles=["data"]))
    item.add_asset("remote", pystac.Asset(href="https://example.com/remote.tif"))
    out.append(item)
nb2task.emit(out)
"""


@pytest.fixture
def writer(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "writer.ipynb", 'payload = "x.json"\nworkdir = "."', WRITES_ASSETS
    )


def test_s3_input_and_output_with_upload(s3: Any, bucket: str, writer: Path) -> None:
    payload = make_payload(
        features=[sample_item("a", platform="sentinel-2b"), sample_item("b", platform="landsat")],
        upload_options={
            "path_template": f"s3://{bucket}/data/${{collection}}/${{platform}}/${{year}}/${{id}}/",
            "s3_urls": True,
            "headers": {"CacheControl": "max-age=60"},
            "public_assets": ["result"],
        },
    )
    url_in = put_json(s3, bucket, "payloads/in.json", payload)
    result = run_cli("run", writer, url_in, "--output", f"s3://{bucket}/payloads/out.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    out = get_json(s3, f"s3://{bucket}/payloads/out.json")
    hrefs = {f["id"]: f["assets"]["result"]["href"] for f in out["features"]}
    assert hrefs == {
        "a": f"s3://{bucket}/data/test-collection/sentinel-2b/2024/a/a-result.txt",
        "b": f"s3://{bucket}/data/test-collection/landsat/2024/b/b-result.txt",
    }
    obj = s3.get_object(Bucket=bucket, Key="data/test-collection/sentinel-2b/2024/a/a-result.txt")
    assert obj["Body"].read() == b"made from a"
    assert obj["CacheControl"] == "max-age=60" and obj["ContentType"] == "text/plain"
    acl = s3.get_object_acl(
        Bucket=bucket, Key="data/test-collection/sentinel-2b/2024/a/a-result.txt"
    )
    assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in acl["Grants"])
    # Remote hrefs are untouched; nothing points at local disk.
    assert out["features"][0]["assets"]["remote"]["href"] == "https://example.com/remote.tif"
    assert local_hrefs([f["assets"] for f in out["features"]]) == []


def test_http_urls_when_s3_urls_is_false(s3: Any, bucket: str, writer: Path, write_json) -> None:
    payload = make_payload(upload_options={"path_template": f"s3://{bucket}/${{id}}"})
    result = run_cli("run", writer, write_json("in.json", payload))
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)["features"]
    assert item["assets"]["result"]["href"] == (
        f"https://{bucket}.s3.us-east-1.amazonaws.com/item-1/item-1-result.txt"
    )
    assert item["assets"]["executed-notebook"]["href"].startswith(f"https://{bucket}.s3.")


def test_per_collection_upload_options(s3: Any, bucket: str, writer: Path, write_json) -> None:
    """As in stactask, an item's upload options are those of the collection it has when
    the task uploads (the input's, here), not the one collection_matchers assign after;
    tests/test_notebook_api.py checks the rule against a stactask Task."""
    s3.create_bucket(Bucket=f"{bucket}-special")
    s2, landsat = sample_item("s2-x"), sample_item("ls-y")
    s2["collection"], landsat["collection"] = "s2-in", "ls-in"
    payload = make_payload(
        features=[s2, landsat],
        upload_options={"path_template": f"s3://{bucket}/${{collection}}/${{id}}", "s3_urls": True},
        collection_matchers=[
            {"type": "jsonpath", "pattern": "$[?(@.id =~ 's2-.*')]", "collection_name": "s2"},
            {"type": "catch_all", "collection_name": "other"},
        ],
        collection_options={
            "s2-in": {
                "upload_options": {
                    "path_template": f"s3://{bucket}-special/cogs/${{collection}}/${{id}}",
                    "s3_urls": True,
                }
            },
            "s2": {"upload_options": {"path_template": f"s3://{bucket}/not-this/${{id}}"}},
        },
    )
    result = run_cli("run", writer, write_json("in.json", payload))
    assert result.returncode == 0, result.stderr
    out = {f["id"]: f for f in json.loads(result.stdout)["features"]}
    assert out["s2-x"]["collection"] == "s2" and out["ls-y"]["collection"] == "other"
    assert out["s2-x"]["assets"]["result"]["href"] == (
        f"s3://{bucket}-special/cogs/s2-in/s2-x/s2-x-result.txt"
    )
    assert out["ls-y"]["assets"]["result"]["href"] == f"s3://{bucket}/ls-in/ls-y/ls-y-result.txt"


def test_run_record_uploaded_and_linked_on_success(s3: Any, bucket: str, writer: Path, write_json):
    payload = make_payload(
        upload_options={"path_template": f"s3://{bucket}/${{collection}}/${{id}}", "s3_urls": True}
    )
    result = run_cli("run", writer, write_json("in.json", payload), "--html")
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)["features"]
    record = item["assets"]["executed-notebook"]
    assert record["href"] == f"s3://{bucket}/test-collection/item-1/writer.executed.ipynb"
    assert record["roles"] == ["metadata", "nb2task-record"]
    html = item["assets"]["executed-notebook-html"]
    assert html["type"] == "text/html"
    executed = get_json(s3, f"s3://{bucket}/test-collection/item-1/writer.executed.ipynb")
    assert executed["metadata"]["papermill"]["parameters"]["payload"].endswith("input-payload.json")
    page = s3.get_object(Bucket=bucket, Key="test-collection/item-1/writer.executed.html")
    assert page["ContentType"] == "text/html" and b"<html" in page["Body"].read()


def test_run_record_uploaded_on_failure(s3: Any, bucket: str, tmp_path: Path, write_json) -> None:
    nb = write_notebook(tmp_path / "broken.ipynb", 'payload = "x.json"', "raise ValueError('bad')")
    payload = make_payload(
        upload_options={"path_template": f"s3://{bucket}/${{collection}}/${{id}}"},
        collection_matchers=[{"type": "catch_all", "collection_name": "failed-runs"}],
    )
    output = tmp_path / "out.json"
    result = run_cli("run", nb, write_json("in.json", payload), "--output", output)
    assert result.returncode == 1
    assert result.last_stderr_line.startswith("ValueError: bad (notebook cell In [")
    assert "run record uploaded: " in result.stderr
    # Where the first item's outputs would have gone: under its own collection, as the
    # task uploads them (stactask's rule), not the one the matchers assign after.
    assert keys(s3, bucket) == {
        "test-collection/item-1/broken.executed.ipynb",
        "test-collection/item-1/broken.executed.html",
    }
    executed = get_json(s3, f"s3://{bucket}/test-collection/item-1/broken.executed.ipynb")
    assert any(
        o.get("ename") == "ValueError" for c in executed["cells"] for o in c.get("outputs", [])
    )
    assert not output.exists()


def test_partial_upload_is_undone(s3: Any, bucket: str, writer: Path, write_json) -> None:
    """The second item's upload fails (no such bucket): the first item's file is deleted."""
    first, second = sample_item("first"), sample_item("second")
    second["collection"] = "lost"
    payload = make_payload(
        features=[first, second],
        upload_options={"path_template": f"s3://{bucket}/out/${{id}}"},
        collection_matchers=[{"type": "catch_all", "collection_name": "kept"}],
        collection_options={
            "lost": {"upload_options": {"path_template": "s3://no-such-bucket-here/${id}"}}
        },
    )
    result = run_cli("run", writer, write_json("in.json", payload))
    assert result.returncode == 1
    assert result.last_stderr_line.startswith("nb2task.errors.AssetError: asset upload failed:")
    assert "NoSuchBucket" in result.last_stderr_line
    # The first item's file is gone again; only the run's record stays, for debugging.
    assert keys(s3, bucket) == {"out/first/writer.executed.ipynb", "out/first/writer.executed.html"}


def test_output_write_failure_undoes_the_uploads(
    s3: Any, bucket: str, writer: Path, write_json, s3_endpoint: str
) -> None:
    """Writing the output payload fails (S3 breaks for that one key, past every retry):
    the outputs already uploaded are deleted again."""
    payload = make_payload(upload_options={"path_template": f"s3://{bucket}/out/${{id}}"})
    proxy = FaultProxy(s3_endpoint)
    proxy.fail(20, 500, "InternalError", "PUT", path="/o.json")
    try:
        result = run_cli(
            "run", writer, write_json("in.json", payload), "--output", f"s3://{bucket}/o.json",
            env={"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "1"},
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 1
    assert result.last_stderr_line.startswith(
        f"nb2task.errors.OutputError: cannot write the output payload to s3://{bucket}/o.json"
    )
    # The assets are gone again; only the run's record stays, for debugging.
    assert keys(s3, bucket) == {
        "out/item-1/writer.executed.ipynb",
        "out/item-1/writer.executed.html",
    }


@pytest.fixture
def remote_bands(s3: Any, bucket: str) -> dict[str, Any]:
    """The NDVI sample scene on S3: an item whose red and nir assets are there."""
    item: dict[str, Any] = ndvi_payload(s3, bucket, download_assets=None)["features"][0]
    return item


# What the notebook sees of each asset: a local file (absolute path) or still remote.
DOWNLOAD_CHECK = """
import os, nb2task
[item] = nb2task.read_items(payload)
item.properties["seen"] = {
    k: [os.path.isabs(a.href) and os.path.isfile(a.href), a.href.startswith("s3://")]
    for k, a in item.assets.items()
}
nb2task.emit(item)
"""


@pytest.mark.parametrize(
    ("metadata", "task_options", "cli_args", "expected_local"),
    [
        ({"download_assets": ["red"]}, {}, [], {"red"}),
        ({"download_assets": ["red"]}, {"download_assets": ["nir"]}, [], {"nir"}),
        (
            {"download_assets": ["red"]},
            {"download_assets": ["nir"]},
            ["--download-assets", "*"],
            {"red", "nir"},
        ),
        ({}, {}, [], set()),
    ],
)
def test_asset_download(
    remote_bands, tmp_path: Path, write_json, metadata, task_options, cli_args, expected_local
) -> None:
    nb = write_notebook(
        tmp_path / "dl.ipynb", 'payload = "x.json"', DOWNLOAD_CHECK, metadata=metadata
    )
    payload = make_payload(features=[remote_bands], tasks={"dl": task_options})
    workdir = tmp_path / "work"  # kept: upload is off
    result = run_cli(
        "run", nb, write_json("in.json", payload), "--no-upload", "--workdir", workdir, *cli_args
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)["features"][0]["properties"]["seen"]
    assert {k for k, (local, _) in seen.items() if local} == expected_local
    # What was not downloaded is left where it was.
    assert {k for k, (_, remote) in seen.items() if remote} == {"red", "nir"} - expected_local


def test_ndvi_from_s3_assets_to_s3(s3: Any, bucket: str, tmp_path: Path) -> None:
    """The main example, cloud style: bands downloaded from S3, the COG uploaded."""
    payload = ndvi_payload(s3, bucket, download_assets=None)  # --download-assets says
    url_in = put_json(s3, bucket, "payloads/ndvi-in.json", payload)
    notebook = tmp_path / "ndvi.ipynb"
    notebook.write_bytes((NOTEBOOKS / "ndvi.ipynb").read_bytes())
    result = run_cli(
        "run",
        notebook,
        url_in,
        "--output",
        f"s3://{bucket}/payloads/ndvi-out.json",
        "--download-assets",
        "red,nir",
    )
    assert result.returncode == 0, result.stderr
    [item] = get_json(s3, f"s3://{bucket}/payloads/ndvi-out.json")["features"]
    assert item["id"] == f"{NDVI_ID}_ndvi"
    href = item["assets"]["ndvi"]["href"]
    assert href == f"s3://{bucket}/ndvi/{NDVI_ID}_ndvi/{NDVI_ID}_ndvi.tif"
    assert get_bytes(s3, href)[:2] in (b"II", b"MM")  # a TIFF
    assert local_hrefs(item["assets"]) == []


def test_missing_asset_to_download_is_invalid_input(remote_bands, tmp_path: Path, write_json):
    nb = write_notebook(tmp_path / "dl.ipynb", 'payload = "x.json"', DOWNLOAD_CHECK)
    payload = make_payload(features=[remote_bands])
    result = run_cli("run", nb, write_json("in.json", payload), "--download-assets", "swir")
    assert result.returncode == 3
    assert result.last_stderr_line == (
        "stactask.exceptions.InvalidInput: assets to download are missing: "
        "S2B_33TUG_20240704_0_L2A-sample:swir"
    )


# --- Lambda -----------------------------------------------------------------------

LAMBDA_CALL = """
import json, os, sys
import nb2task

class Context:
    aws_request_id = "req-1234"

    def get_remaining_time_in_millis(self):
        return int(os.environ.get("TEST_REMAINING_MS", "900000"))

event = json.load(sys.stdin)
try:
    print(json.dumps(nb2task.lambda_handler(event, Context())))
except Exception as err:
    print(json.dumps({"errorType": type(err).__name__, "errorMessage": str(err)}))
"""


def invoke_lambda(notebook: Path, event: Any, **env: str) -> tuple[Any, str]:
    """Call nb2task.lambda_handler in a fresh Python, as Lambda's runtime would; its
    result (or error) and its logs. NB2TASK_ENGINE passes through the environment."""
    proc = subprocess.run(
        [sys.executable, "-c", LAMBDA_CALL],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NB2TASK_NOTEBOOK": str(notebook), **env},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_lambda_payload_and_url_events(s3: Any, bucket: str, writer: Path, engine: str) -> None:
    payload = make_payload(
        upload_options={"path_template": f"s3://{bucket}/${{id}}", "s3_urls": True}
    )
    out, logs = invoke_lambda(writer, payload)
    assert out["id"] == payload["id"]
    assert (
        out["features"][0]["assets"]["result"]["href"] == f"s3://{bucket}/item-1/item-1-result.txt"
    )
    assert f"({engine} engine)" in logs  # the handler read NB2TASK_ENGINE
    lines = [line for line in logs.splitlines() if "nb2task" in line or "writer" in line]
    assert lines and all("req-1234" in line for line in lines)
    assert any(payload["id"] in line for line in lines)

    out2, _ = invoke_lambda(writer, {"url": put_json(s3, bucket, "in.json", payload)})
    assert out2["features"][0]["id"] == "item-1"


def test_lambda_offloads_oversized_output(s3: Any, bucket: str, tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "big.ipynb",
        'payload = "x.json"\nsize: int = 10',
        "import nb2task\nitems = nb2task.read_items(payload)\n"
        "items[0].properties['padding'] = 'é' * size\nnb2task.emit(items)",
    )
    # 50 000 'é' are 50 000 characters but 300 000 once JSON-escaped (\\u00e9).
    payload = make_payload(tasks={"big": {"size": 50_000}})
    out, _ = invoke_lambda(nb, payload, CIRRUS_PAYLOAD_BUCKET=bucket)
    assert list(out) == ["url"]
    assert out["url"].startswith(f"s3://{bucket}/tmp/oversized/") and out["url"].endswith(".json")
    stored = get_json(s3, out["url"])
    assert stored["features"][0]["properties"]["padding"] == "é" * 50_000

    small, _ = invoke_lambda(
        nb, make_payload(tasks={"big": {"size": 10}}), CIRRUS_PAYLOAD_BUCKET=bucket
    )
    assert "features" in small


def test_lambda_errors_keep_their_type(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "rejects.ipynb",
        'payload = "x.json"',
        "from stactask.exceptions import InvalidInput\nraise InvalidInput('cloudy')",
    )
    out, logs = invoke_lambda(nb, make_payload())
    assert out["errorType"] == "stactask.exceptions.InvalidInput"  # what Cirrus marks INVALID
    assert out["errorMessage"].startswith("cloudy (notebook cell In [")
    assert "stactask.exceptions.InvalidInput: cloudy" in logs


def test_in_image_cli_takes_the_notebook_from_the_environment(
    s3: Any, bucket: str, writer: Path
) -> None:
    """Batch runs the image as `nb2task-task run URL --output URL_OUT`."""
    payload = make_payload(upload_options={"path_template": f"s3://{bucket}/${{id}}"})
    url_in = put_json(s3, bucket, "in.json", payload)
    result = run_cli(
        "run",
        url_in,
        "--output",
        f"s3://{bucket}/out.json",
        program=NB2TASK_TASK,
        env={"NB2TASK_NOTEBOOK": str(writer)},
    )
    assert result.returncode == 0, result.stderr
    assert get_json(s3, f"s3://{bucket}/out.json")["features"][0]["id"] == "item-1"

    missing = run_cli(
        "run", url_in, program=NB2TASK_TASK, env={"NB2TASK_NOTEBOOK": None}, timeout=60
    )
    assert missing.returncode == 2
    assert missing.last_stderr_line == (
        "nb2task.errors.UsageError: NB2TASK_NOTEBOOK is not set: the image must name its notebook"
    )


def test_lambda_stops_the_notebook_before_lambda_would(tmp_path: Path) -> None:
    nb = write_notebook(
        tmp_path / "slow.ipynb", 'payload = "x.json"', "import time\ntime.sleep(120)"
    )
    # 23 s left: nb2task keeps 20 s to report, so the notebook gets 3 s.
    out, _ = invoke_lambda(nb, make_payload(), TEST_REMAINING_MS="23000")
    assert out == {
        "errorType": "nb2task.errors.RunTimeoutError",
        "errorMessage": "the notebook ran longer than 3 s",
    }


def test_local_assets_without_a_path_template_are_invalid_input(writer: Path, write_json) -> None:
    result = run_cli("run", writer, write_json("in.json", make_payload(upload_options={})))
    assert result.returncode == 3
    assert result.last_stderr_line == (
        "stactask.exceptions.InvalidInput: item item-1 has local assets to upload but the "
        "payload's upload_options has no path_template (or run with --no-upload)"
    )
