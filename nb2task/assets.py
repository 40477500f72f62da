"""Asset I/O around the notebook: download inputs before, upload outputs after.

Downloads go through stactask's ``asset_io`` (stac-asset), concurrently, in an event
loop of our own: stactask's sync helpers call the deprecated ``get_event_loop`` and
fail when a loop already runs (as inside Jupyter or an async Lambda runtime).
Uploads go through stactask's ``upload_item_assets_to_s3`` with the payload's
(per-collection) ``upload_options``; if one fails, what was uploaded is deleted.
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
    import pystac
    from stactask.asset_io import download_items_assets
    from stactask.config import DownloadConfig

    config = DownloadConfig(
        include=[] if ALL_ASSETS in keys else list(keys),
        s3_requester_pays=True,  # signs requests; unsigned ones fail on private buckets
        s3_endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        s3_region_name=os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION", "us-west-2"),
        fail_fast=True,
        overwrite=True,  # a rerun in the same workdir replaces what an earlier run left
    )
    items = [pystac.Item.from_dict(f, preserve_dict=True) for f in features]
    for index, item in enumerate(items):
        # Each item's folder is named by us: an id or collection from the payload (say
        # "../../etc") must not choose where files go.
        item.id = f"{index:04d}-{safe_name(item.id)}"
        item.collection_id = None
    missing = [
        f"{feature['id']}:{key}"
        for feature, item in zip(features, items, strict=True)
        for key in keys
        if key != ALL_ASSETS and key not in item.assets
    ]
    if missing:
        raise InvalidInput(f"assets to download are missing: {', '.join(missing)}")
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
    for feature, item in zip(features, downloaded, strict=True):
        item.make_asset_hrefs_absolute()
        local = item.to_dict(transform_hrefs=False)
        local["id"], local["collection"] = feature["id"], feature.get("collection")
        if local["collection"] is None:
            local.pop("collection")
        # stac-asset points the self link at the item.json it wrote in the workdir: the
        # notebook sees the item's own links (no local path leaks into derived_from).
        local["links"] = copy.deepcopy(feature.get("links", []))
        for key, asset in local.get("assets", {}).items():
            href = str(asset.get("href", ""))
            if "://" not in href or href.startswith("file://"):
                inside(directory, Path(href.removeprefix("file://")), f"asset '{key}'")
        result.append(local)
    logger.info("downloaded assets %s of %d item(s) into %s", list(keys), len(result), directory)
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
    import pystac
    from stactask.asset_io import upload_item_assets_to_s3

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
            item = pystac.Item.from_dict(feature, preserve_dict=True)
            new = upload_item_assets_to_s3(item, assets=keys, s3_client=client, **options)
            uploaded.append(new.to_dict(transform_hrefs=False))
    except Exception as err:
        client.delete_uploaded()
        if isinstance(err, AssetError | InvalidInput):
            raise
        raise AssetError(f"asset upload failed: {err}") from err
    return uploaded


class S3Client(BotoS3):  # type: ignore[misc]
    """boto3utils' S3 client that remembers what it uploaded, to undo a partial upload."""

    def __init__(self) -> None:
        super().__init__()
        self.uploaded: list[tuple[str, str]] = []
        self.template: str | None = None  # every upload must stay under its fixed prefix

    def upload(
        self,
        filename: str,
        url: str,
        public: bool = False,
        extra: Any = None,
        http_url: bool = False,
    ) -> str:
        if self.template:
            check_url(url, self.template, f"upload of {Path(filename).name}")
        out: str = super().upload(
            filename, url, public=public, extra=dict(extra or {}), http_url=http_url
        )
        parts = self.urlparse(url)
        self.uploaded.append((parts["bucket"], parts["key"]))
        return out

    def delete_uploaded(self) -> None:
        for bucket, key in self.uploaded:
            try:
                self.s3.delete_object(Bucket=bucket, Key=key)
            except Exception as err:  # noqa: BLE001 - best effort; the original error matters
                logger.warning("could not delete partial upload s3://%s/%s: %s", bucket, key, err)
        self.uploaded.clear()
