"""A hand-written stactask task, as a typical Cirrus task is written: it refuses a payload
whose items lack the assets it needs, downloads the assets its parameters name, derives a
file from their bytes, adds it as an asset and uploads it. Written for nb2task's tests
(no upstream); ``asset-task.ipynb`` beside it is its port to a notebook."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3utils
from pystac import Asset, Item
from stactask import Task
from stactask.config import DownloadConfig
from stactask.exceptions import InvalidInput

DEFAULT_ASSETS = ["data"]
MODES = ("stats", "concat")
MAX_SCALE = 1000.0


def derive(mode: str, scale: float, contents: dict[str, bytes]) -> tuple[str, str, bytes]:
    """The derived file of one item: (file name, media type, bytes)."""
    if mode == "concat":
        return "derived.bin", "application/octet-stream", b"".join(contents.values())
    stats = {
        key: {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "scaled": len(data) * scale,
        }
        for key, data in contents.items()
    }
    return "derived.json", "application/json", json.dumps(stats, sort_keys=True).encode()


class AssetTask(Task):
    name = "asset-task"
    description = "derives a file from the assets its parameters name"
    version = "0.1.0"

    def validate(self) -> bool:
        # Refuse, before anything is downloaded, items that lack an asset to be read.
        assets = self.parameters.get("assets", DEFAULT_ASSETS)
        for item in self.payload.items_as_dicts:
            missing = [key for key in assets if key not in item.get("assets", {})]
            if missing:
                raise InvalidInput(f"item {item['id']} lacks asset(s) {missing}")
        return True

    def process(  # type: ignore[override]
        self,
        assets: list[str] = DEFAULT_ASSETS,
        scale: float = 1.0,
        mode: str = "stats",
        **kwargs: Any,  # options of the workflow's other tasks
    ) -> list[dict[str, Any]]:
        if not assets:
            raise InvalidInput("parameter 'assets' must name at least one asset")
        if not 0 < scale <= MAX_SCALE:
            raise InvalidInput(f"parameter 'scale' must be in (0, {MAX_SCALE}], got {scale}")
        if mode not in MODES:
            raise InvalidInput(f"parameter 'mode' must be one of {list(MODES)}, got {mode!r}")

        items = list(self.items)
        # stac-asset reads S3 anonymously unless told requester pays: signed requests, as a
        # task reading a private (or requester-pays) bucket must ask for.
        config = DownloadConfig(include=list(assets), s3_requester_pays=True)
        downloaded = self.download_items_assets(items, config=config)
        # stactask makes its global S3 client when it is imported; the tests point AWS at
        # moto only later, so this client is made here (a real task may pass none).
        client = boto3utils.s3()
        outputs = []
        for item, local in zip(items, downloaded, strict=True):
            contents = {
                key: Path(local.assets[key].get_absolute_href()).read_bytes() for key in assets
            }
            file_name, media_type, data = derive(mode, scale, contents)
            path = self._workdir / item.id / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out: Item = item.clone()
            out.add_asset("derived", Asset(str(path), media_type=media_type, roles=["derived"]))
            out.properties["asset_task:scale"] = scale
            out.properties["asset_task:mode"] = mode
            uploaded = self.upload_item_assets_to_s3(out, s3_client=client)
            outputs.append(
                self.add_software_version_to_item(uploaded.to_dict(transform_hrefs=False))
            )
        return outputs
