"""What a run puts into the world, in process against the moto S3 server: asset uploads
and their rollback (``nb2task.assets``, ``nb2task.publish.Publication``), the run's
record, the output payload's destinations, and asset downloads. No notebook runs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from stactask.exceptions import InvalidInput
from stactask.payload import Payload
from support import get_bytes, get_json, keys, make_payload, sample_item, write_notebook

from nb2task.assets import S3Client, upload_local_assets
from nb2task.errors import AssetError, Nb2TaskError, OutputError, UsageError
from nb2task.publish import MAX_PAYLOAD_LENGTH, Publication, ReturnOutput, UrlOutput

# A bucket no test creates (one per session: see test_writing_to_a_missing_bucket...).
LOST = f"nb2task-no-such-bucket-{uuid.uuid4().hex[:8]}"


def output_item(tmp_path: Path, item_id: str, collection: str = "kept") -> dict[str, Any]:
    """An item as the notebook emits it: a local file asset (and a remote one)."""
    path = tmp_path / f"{item_id}.txt"
    path.write_text(f"made from {item_id}")
    item = sample_item(item_id)
    item["collection"] = collection
    item["assets"] = {
        "result": {"href": str(path), "type": "text/plain", "roles": ["data"]},
        "remote": {"href": "https://example.com/remote.tif"},
    }
    return item


def upload_payload(bucket: str, **process: Any) -> dict[str, Any]:
    """Items of collection "kept" go to ``bucket``, of collection "lost" to no bucket."""
    return make_payload(
        upload_options={"path_template": f"s3://{bucket}/out/${{id}}", "s3_urls": True},
        collection_options={"lost": {"upload_options": {"path_template": f"s3://{LOST}/${{id}}"}}},
        **process,
    )


# --- upload_local_assets and S3Client -----------------------------------------------------------


def test_uploads_rewrite_local_hrefs(s3: Any, bucket: str, tmp_path: Path) -> None:
    client = S3Client()
    features = [output_item(tmp_path, "first"), output_item(tmp_path, "second")]
    out = upload_local_assets(Payload(upload_payload(bucket)), features, client)
    assert [f["assets"]["result"]["href"] for f in out] == [
        f"s3://{bucket}/out/first/first.txt",
        f"s3://{bucket}/out/second/second.txt",
    ]
    assert out[0]["assets"]["remote"]["href"] == "https://example.com/remote.tif"
    assert get_bytes(s3, f"s3://{bucket}/out/first/first.txt") == b"made from first"
    assert client.uploaded == [(bucket, "out/first/first.txt"), (bucket, "out/second/second.txt")]


def test_a_failed_second_upload_deletes_the_first(s3: Any, bucket: str, tmp_path: Path) -> None:
    client = S3Client()
    features = [output_item(tmp_path, "first"), output_item(tmp_path, "second", "lost")]
    with pytest.raises(AssetError, match=r"^asset upload failed: .*NoSuchBucket"):
        upload_local_assets(Payload(upload_payload(bucket)), features, client)
    assert keys(s3, bucket) == set()
    assert client.uploaded == []


def test_no_path_template_is_invalid_input_and_uploads_nothing(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    payload = make_payload(
        upload_options={"path_template": f"s3://{bucket}/out/${{id}}"},
        collection_options={"bare": {"upload_options": {"path_template": ""}}},
    )
    payload["process"][0]["upload_options"].pop("path_template")
    client = S3Client()
    features = [output_item(tmp_path, "first")]
    with pytest.raises(InvalidInput, match="item first has local assets to upload but"):
        upload_local_assets(Payload(payload), features, client)
    assert keys(s3, bucket) == set() and client.uploaded == []


def test_items_without_local_assets_upload_nothing(s3: Any, bucket: str) -> None:
    item = sample_item("remote-only")
    item["assets"] = {"data": {"href": "s3://elsewhere/k.tif"}}
    client = S3Client()
    assert upload_local_assets(Payload(upload_payload(bucket)), [item], client) == [item]
    assert client.uploaded == [] and keys(s3, bucket) == set()


def test_delete_uploaded_keeps_going_past_a_failed_delete(
    s3: Any, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = S3Client()
    upload_local_assets(Payload(upload_payload(bucket)), [output_item(tmp_path, "a")], client)
    client.uploaded.insert(0, (LOST, "x"))  # deleting this one fails
    client.delete_uploaded()
    assert keys(s3, bucket) == set()
    assert f"could not delete partial upload s3://{LOST}/x" in caplog.text


# --- Publication: outputs, record, rollback ---------------------------------------------------


def executed_notebook(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "work" / "task.executed.ipynb", 'payload = "x.json"', "1 + 1")


def test_rollback_deletes_the_outputs_but_not_the_record(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    publication = Publication(upload_payload(bucket), upload=True, html=False, fallback_prefix=None)
    features = publication.upload_outputs([output_item(tmp_path, "a"), output_item(tmp_path, "b")])
    publication.publish_record(executed_notebook(tmp_path), features)
    assert publication.record_uploaded
    record = f"s3://{bucket}/out/a/task.executed.ipynb"  # beside the first item's outputs
    assert [f["assets"]["executed-notebook"]["href"] for f in features] == [record, record]
    assert keys(s3, bucket) == {"out/a/a.txt", "out/b/b.txt", "out/a/task.executed.ipynb"}

    publication.rollback()  # e.g. the output payload could not be written
    assert keys(s3, bucket) == {"out/a/task.executed.ipynb"}
    assert nbformat.reads(get_bytes(s3, record).decode(), as_version=4).cells[1].source == "1 + 1"


def test_html_record_on_success_when_asked(s3: Any, bucket: str, tmp_path: Path) -> None:
    publication = Publication(upload_payload(bucket), upload=True, html=True, fallback_prefix=None)
    features = publication.upload_outputs([output_item(tmp_path, "a")])
    publication.publish_record(executed_notebook(tmp_path), features)
    html = features[0]["assets"]["executed-notebook-html"]
    assert html["href"] == f"s3://{bucket}/out/a/task.executed.html"
    page = s3.get_object(Bucket=bucket, Key="out/a/task.executed.html")
    assert page["ContentType"] == "text/html" and b"<html" in page["Body"].read()


def test_failure_record_goes_where_the_first_input_item_would(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    payload = upload_payload(
        bucket,
        features=[sample_item("in-1"), sample_item("in-2")],
        collection_matchers=[{"type": "catch_all", "collection_name": "failed"}],
    )
    payload["process"][0]["upload_options"]["path_template"] = (
        f"s3://{bucket}/${{collection}}/${{id}}"
    )
    publication = Publication(payload, upload=True, html=False, fallback_prefix=None)
    publication.publish_failure_record(executed_notebook(tmp_path))
    assert publication.record_uploaded
    # Under the first item's own collection, where its outputs would have been uploaded
    # (stactask's rule), not the one the matchers assign; always rendered as HTML too.
    assert keys(s3, bucket) == {
        "test-collection/in-1/task.executed.ipynb",
        "test-collection/in-1/task.executed.html",
    }


def test_failure_record_upload_failing_does_not_raise(tmp_path: Path, s3: Any) -> None:
    payload = make_payload(upload_options={"path_template": f"s3://{LOST}/${{id}}"})
    publication = Publication(payload, upload=True, html=False, fallback_prefix=None)
    publication.publish_failure_record(executed_notebook(tmp_path))  # the run's error matters
    assert not publication.record_uploaded
    publication.publish_failure_record(tmp_path / "never-written.ipynb")  # nothing to publish


def test_record_falls_back_beside_the_output_payload(s3: Any, bucket: str, tmp_path: Path) -> None:
    """No upload location in the payload: the record goes beside --output, if on S3."""
    output = UrlOutput(f"s3://{bucket}/payloads/out.json")
    publication = Publication(
        make_payload(), upload=True, html=False, fallback_prefix=output.record_prefix
    )
    features = publication.upload_outputs([sample_item("a")])
    publication.publish_record(executed_notebook(tmp_path), features)
    assert keys(s3, bucket) == {"payloads/task.executed.ipynb"}
    assert features[0]["assets"]["executed-notebook"]["href"].startswith("https://")


def test_without_upload_nothing_is_uploaded(s3: Any, bucket: str, tmp_path: Path) -> None:
    publication = Publication(
        upload_payload(bucket), upload=False, html=False, fallback_prefix=None
    )
    features = [output_item(tmp_path, "a")]
    assert publication.upload_outputs(features) is features
    publication.publish_record(executed_notebook(tmp_path), features)
    publication.publish_failure_record(executed_notebook(tmp_path))
    publication.rollback()
    assert keys(s3, bucket) == set() and not publication.record_uploaded
    assert "executed-notebook" not in features[0]["assets"]


# --- Where the output payload goes ---------------------------------------------------------------


def test_url_output_to_s3_and_its_failures(s3: Any, bucket: str, tmp_path: Path) -> None:
    payload = make_payload()
    assert UrlOutput(f"s3://{bucket}/o/out.json").write(payload) == payload
    assert get_json(s3, f"s3://{bucket}/o/out.json") == payload
    with pytest.raises(OutputError, match=r"^cannot write the output payload to http://"):
        UrlOutput("http://127.0.0.1:9/o.json").write(payload)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot create a file there"):
        UrlOutput(tmp_path / "file" / "out.json").check()
    with pytest.raises(UsageError, match="is a directory"):
        UrlOutput(tmp_path).check()


def test_writing_to_a_missing_bucket_fails_and_creates_no_bucket(s3: Any) -> None:
    """(fsspec's s3fs, used before, created the bucket: auto_mkdir.)"""
    missing = f"nb2task-missing-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(OutputError, match=r"^cannot write the output payload to s3://"):
            UrlOutput(f"s3://{missing}/out.json").write(make_payload())
    finally:
        created = missing in {b["Name"] for b in s3.list_buckets()["Buckets"]}
        for key in keys(s3, missing) if created else ():
            s3.delete_object(Bucket=missing, Key=key)
        if created:
            s3.delete_bucket(Bucket=missing)
    assert not created


def test_return_output_offloads_what_cirrus_cannot_carry(
    s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NB2TASK_PAYLOAD_BUCKET", raising=False)
    monkeypatch.delenv("NB2TASK_OVERSIZED_PREFIX", raising=False)
    monkeypatch.setenv("CIRRUS_PAYLOAD_BUCKET", bucket)
    small = make_payload()
    assert ReturnOutput().write(small) is small
    big = make_payload(features=[sample_item(padding="x" * MAX_PAYLOAD_LENGTH)])
    returned = ReturnOutput().write(big)
    assert list(returned) == ["url"]
    assert returned["url"].startswith(f"s3://{bucket}/tmp/oversized/")
    assert get_json(s3, returned["url"]) == json.loads(json.dumps(big))

    monkeypatch.delenv("CIRRUS_PAYLOAD_BUCKET")
    with pytest.raises(Nb2TaskError, match="neither NB2TASK_PAYLOAD_BUCKET nor"):
        ReturnOutput().write(big)


# --- Downloads -------------------------------------------------------------------------------


def test_download_inside_a_running_event_loop(s3: Any, bucket: str, tmp_path: Path) -> None:
    """As in Jupyter or an async runtime, where stactask's own sync helpers fail."""
    import asyncio
    import warnings

    from support import ndvi_payload

    from nb2task.assets import download_assets

    [remote] = ndvi_payload(s3, bucket, download_assets=None)["features"]

    async def in_a_loop() -> list[dict[str, Any]]:
        assert asyncio.get_running_loop().is_running()
        return download_assets([remote], ["red"], tmp_path / "dl")

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no get_event_loop warning
        [item] = asyncio.run(in_a_loop())
    red = Path(item["assets"]["red"]["href"])
    assert red.is_absolute() and red.is_relative_to(tmp_path / "dl")
    assert red.read_bytes() == get_bytes(s3, f"s3://{bucket}/src/red.tif")
    assert item["assets"]["nir"]["href"] == f"s3://{bucket}/src/nir.tif"  # not asked for
    assert item["links"] == remote["links"]  # no local self link leaks in


def test_download_of_a_missing_object_is_invalid_input(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The payload names an asset that does not exist: bad input, never retried."""
    from nb2task.assets import download_assets

    item = sample_item("a")
    item["assets"] = {"data": {"href": f"s3://{bucket}/nothing-here.tif"}}
    with pytest.raises(InvalidInput, match=r"^asset not found: s3://"):
        download_assets([item], ["data"], tmp_path / "dl")
    assert not list((tmp_path / "dl").rglob("*.tif"))
