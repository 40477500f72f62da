"""Asset I/O around the notebook: download inputs before, upload outputs after.

Downloads of ``s3://`` assets go through boto3 (s3transfer: concurrent ranged GETs),
several files at a time; stac-asset's S3 path reads 1 KB chunks, about 30 times slower.
Other hrefs (https, ...) go through stactask's ``asset_io`` (stac-asset), in an event
loop of our own: stactask's sync helpers call the deprecated ``get_event_loop`` and fail
when a loop already runs (as inside Jupyter or an async Lambda runtime). Uploads go
through stactask's ``upload_item_assets_to_s3`` with the payload's (per-collection)
``upload_options``; if one fails, what was uploaded is deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from boto3utils import s3 as BotoS3
from stactask.exceptions import InvalidInput
from stactask.payload import Payload

from .errors import AssetError
from .paths import check_url, inside, safe_name

logger = logging.getLogger(__name__)

T = TypeVar("T")
ALL_ASSETS = "*"


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion, whether or not an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop runs in this thread: run ours in a worker thread instead of nesting.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def download_assets(
    features: list[dict[str, Any]], keys: Sequence[str], directory: Path
) -> list[dict[str, Any]]:
    """Download the ``keys`` assets (``*``: all) of each item under ``directory``;
    return the items with those assets' hrefs pointing at the local files."""
    if not keys or not features:
        return features
    missing = [
        f"{feature['id']}:{key}"
        for feature in features
        for key in keys
        if key != ALL_ASSETS and key not in feature.get("assets", {})
    ]
    if missing:
        raise InvalidInput(f"assets to download are missing: {', '.join(missing)}")
    result = copy.deepcopy(features)
    s3_jobs, other = [], False
    for index, feature in enumerate(result):
        for key, asset in feature.get("assets", {}).items():
            if ALL_ASSETS not in keys and key not in keys:
                continue
            if str(asset["href"]).startswith("s3://"):
                s3_jobs.append((index, key, asset))
            elif "://" in str(asset["href"]):
                other = True
    _download_from_s3(result, s3_jobs, directory)
    if other:
        result = _download_with_stac_asset(result, keys, directory)
    if s3_jobs or other:
        logger.info(
            "downloaded assets %s of %d item(s) into %s", list(keys), len(result), directory
        )
    return result


def download_payload_assets(payload: str, keys: Sequence[str], directory: str) -> None:
    """Download the ``keys`` assets of the payload file's items under ``directory`` and
    rewrite the file with their local hrefs: what a task run does before the notebook,
    done in the notebook after its validate cells (the cell a run adds calls this)."""
    import json

    from .paths import write_text_atomically

    path = Path(payload)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["features"] = download_assets(document.get("features", []), keys, Path(directory))
    write_text_atomically(path, json.dumps(document))


S3_DOWNLOADS_AT_ONCE = 8


def _download_from_s3(
    features: list[dict[str, Any]], jobs: list[tuple[int, str, dict[str, Any]]], root: Path
) -> None:
    """Download the s3:// assets of ``jobs`` into ``root``/<item>/, rewriting their hrefs."""
    if not jobs:
        return
    client = _download_client()
    targets: list[tuple[dict[str, Any], str, Path]] = []
    for index, key, asset in jobs:
        folder = root / f"{index:04d}-{safe_name(features[index]['id'])}"
        name = safe_name(str(asset["href"]).rsplit("/", 1)[-1], "asset")
        if any(path.parent == folder and path.name == name for _, _, path in targets):
            name = f"{safe_name(key)}-{name}"  # two assets of one item with the same name
        targets.append((asset, str(asset["href"]), inside(root, folder / name, f"asset '{key}'")))

    def fetch(target: tuple[dict[str, Any], str, Path]) -> None:
        asset, href, path = target
        bucket, _, key = href.removeprefix("s3://").partition("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # RequestPayer: requester-pays buckets (public archives) need it; others ignore it.
            client.download_file(bucket, key, str(path), ExtraArgs={"RequestPayer": "requester"})
        except Exception as err:
            raise _download_error(href, err) from err
        asset["href"] = str(path)

    with concurrent.futures.ThreadPoolExecutor(S3_DOWNLOADS_AT_ONCE) as pool:
        for future in [pool.submit(fetch, target) for target in targets]:
            future.result()


_unsigned: Any = None


def _download_client() -> Any:
    """The S3 client downloads go through: nb2task's own (signed), or, where there are
    no credentials at all (a laptop reading a public archive), an unsigned one, as
    stac-asset reads without them."""
    global _unsigned
    from .payload import s3_client

    client = s3_client()
    # botocore resolved the credentials when it made the client (None: none found).
    if getattr(getattr(client, "_request_signer", None), "_credentials", True) is not None:
        return client
    if _unsigned is None:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        _unsigned = boto3.client("s3", config=Config(signature_version=UNSIGNED))
    return _unsigned


def _download_error(href: str, err: Exception) -> Exception:
    """A missing object is bad input; anything else (5xx, refused, denied) a failure."""
    response = getattr(err, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
        return InvalidInput(f"asset not found: {href}")
    return AssetError(f"asset download failed: {href}: {err}")


def _download_with_stac_asset(
    features: list[dict[str, Any]], keys: Sequence[str], directory: Path
) -> list[dict[str, Any]]:
    """Download the assets that are not on S3 (https and others) with stac-asset."""
    from stactask.asset_io import download_items_assets
    from stactask.config import DownloadConfig

    from . import stac_items

    remote = {
        k
        for f in features
        for k, a in f.get("assets", {}).items()
        if "://" in str(a["href"]) and not str(a["href"]).startswith("s3://")
        and (ALL_ASSETS in keys or k in keys)
    }  # fmt: skip
    config = DownloadConfig(include=sorted(remote), fail_fast=True, overwrite=True)
    items = stac_items.read(features)  # never migrated: they come back as they went
    for index, item in enumerate(items):
        # Each item's folder is named by us: an id or collection from the payload (say
        # "../../etc") must not choose where files go.
        item.id = f"{index:04d}-{safe_name(item.id)}"
        item.collection_id = None
    try:
        downloaded = run_coroutine(
            download_items_assets(
                items,
                path_template=str(directory / "${id}"),
                config=config,
                keep_non_downloaded=True,
            )
        )
    except Exception as err:  # stac-asset raises a variety of types
        raise AssetError(f"asset download failed: {err}") from err
    result = []
    for feature, done in zip(features, downloaded, strict=True):
        done.make_asset_hrefs_absolute()
        local = done.to_dict(transform_hrefs=False)
        local["id"] = feature["id"]
        if "collection" in feature:
            local["collection"] = feature["collection"]
        else:
            local.pop("collection", None)
        # stac-asset points the self link at the item.json it wrote in the workdir: the
        # notebook sees the item's own links (no local path leaks into derived_from).
        local["links"] = copy.deepcopy(feature.get("links", []))
        for key, asset in local.get("assets", {}).items():
            href = str(asset.get("href", ""))
            if "://" not in href or href.startswith("file://"):
                inside(directory, Path(href.removeprefix("file://")), f"asset '{key}'")
        result.append(local)
    return result


def local_asset_keys(item: dict[str, Any]) -> list[str]:
    """Keys of the item's assets whose hrefs are local files."""
    keys = []
    for key, asset in item.get("assets", {}).items():
        href = asset.get("href", "")
        if href.startswith("file://") or "://" not in href:
            keys.append(key)
    return keys


def upload_local_assets(
    payload: Payload, features: list[dict[str, Any]], client: S3Client
) -> list[dict[str, Any]]:
    """Upload every local asset of ``features`` with the payload's upload options
    (per collection), rewrite their hrefs, and return the new items. ``client``
    remembers the uploads; they are deleted again if one fails."""
    from stactask.asset_io import upload_item_assets_to_s3

    from . import stac_items

    uploaded: list[dict[str, Any]] = []
    try:
        for feature in features:
            keys = local_asset_keys(feature)
            for key in keys:  # harvest already checked that each file exists
                asset = feature["assets"][key]
                asset["href"] = asset["href"].removeprefix("file://")
            if not keys:
                uploaded.append(feature)
                continue
            options = payload.get_collection_upload_options(feature.get("collection"))
            client.template = options.get("path_template")
            if "path_template" not in options:
                # The payload gives the task's outputs nowhere to go: bad input, not a bug.
                raise InvalidInput(
                    f"item {feature['id']} has local assets to upload but the payload's "
                    "upload_options has no path_template (or run with --no-upload)"
                )
            item = stac_items.Item.read(feature)
            new = upload_item_assets_to_s3(item, assets=keys, s3_client=client, **options)
            # stactask gives back a migrated copy (Item.from_dict): take only the new
            # hrefs from it, so that the item comes out as the notebook emitted it.
            result = copy.deepcopy(feature)
            for key in keys:
                result["assets"][key]["href"] = new.assets[key].href
            uploaded.append(result)
    except Exception as err:
        client.delete_uploaded()
        if isinstance(err, AssetError | InvalidInput):
            raise
        raise AssetError(f"asset upload failed: {err}") from err
    return uploaded


SMALL_UPLOAD_BYTES = 8 * 1024 * 1024  # s3transfer's own multipart threshold


class S3Client(BotoS3):  # type: ignore[misc]
    """boto3utils' S3 client that remembers what it uploaded, to undo a partial upload."""

    def __init__(self) -> None:
        # Not boto3utils' __init__: making a boto3 client costs ~50 ms; one per process
        # (thread-safe) is shared instead of one per run.
        from .payload import s3_client

        self.s3 = s3_client()
        self.requester_pays = False
        self.uploaded: list[tuple[str, str]] = []
        self.template: str | None = None  # every upload must stay under its fixed prefix
        self._regions: dict[str, str] = {}

    def upload(
        self,
        filename: str,
        url: str,
        public: bool = False,
        extra: Any = None,
        http_url: bool = False,
    ) -> str:
        # boto3utils' own upload, but with upload_file: from a file name, s3transfer reads
        # the parts in parallel (upload_fileobj reads one stream: ~25% slower).
        if self.template:
            check_url(url, self.template, f"upload of {Path(filename).name}")
        parts = self.urlparse(url)
        bucket, key = parts["bucket"], parts["key"]
        extra = dict(extra or {})
        if public:
            extra["ACL"] = "public-read"
        if os.path.getsize(filename) < SMALL_UPLOAD_BYTES:
            # One request: upload_file would start a transfer manager and its threads.
            with open(filename, "rb") as body:
                self.s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        else:
            self.s3.upload_file(filename, bucket, key, ExtraArgs=extra)
        self.uploaded.append((bucket, key))
        url_out = f"s3://{bucket}/{key}"
        if not http_url:
            return url_out
        if bucket not in self._regions:  # one lookup per bucket, not per file
            self._regions[bucket] = self.get_bucket_region(bucket)
        https: str = self.s3_to_https(url_out, self._regions[bucket])
        return https

    def delete_uploaded(self) -> None:
        for bucket, key in self.uploaded:
            try:
                self.s3.delete_object(Bucket=bucket, Key=key)
            except Exception as err:  # noqa: BLE001 - best effort; the original error matters
                logger.warning("could not delete partial upload s3://%s/%s: %s", bucket, key, err)
        self.uploaded.clear()
