"""What a run puts into the world, all or nothing: uploaded outputs, the run's record,
the output payload.

``Publication`` uploads the local assets of the output items and the executed
notebook, and undoes the asset uploads (``rollback``) if anything later fails; the
record of a failed run is still published, for debugging. An ``Output`` is where the
output payload goes: stdout, a path or URL, or a Lambda return value.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from stactask.payload import Payload

from . import settings
from .assets import S3Client, upload_local_assets
from .errors import Nb2TaskError, OutputError
from .payload import check_output_url, write_json
from .record import link_record, record_prefix, render_html, upload_record

logger = logging.getLogger(__name__)

# Cirrus' MAX_PAYLOAD_LENGTH: Step Functions' state limit, counted on escaped JSON.
MAX_PAYLOAD_LENGTH = 120_000


class Publication:
    """One run's uploads: outputs, then the record; undone on failure but the record."""

    def __init__(
        self, payload: dict[str, Any], upload: bool, html: bool, fallback_prefix: str | None
    ) -> None:
        self.payload = Payload(payload)
        self.upload = upload
        self.html = html
        self.fallback_prefix = fallback_prefix  # beside --output, if nothing else places it
        self.uploads = S3Client() if upload else None
        self.record_uploaded = False
        # The first output item as its assets were uploaded (its collection then, before
        # collection_matchers assign the output's): the record goes beside its outputs.
        self.placed_by: dict[str, Any] | None = None

    def upload_outputs(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upload the items' local assets (with the payload's upload options); the items
        with their new hrefs. Without upload, the items as they are."""
        if self.uploads is None:
            return features
        uploaded = upload_local_assets(self.payload, features, self.uploads)
        self.placed_by = copy.deepcopy(uploaded[0]) if uploaded else None
        return uploaded

    def publish_record(self, notebook: Path, features: list[dict[str, Any]]) -> None:
        """The executed notebook (and its HTML, when asked) beside the outputs of a
        successful run, linked from every output item."""
        html = render_html(notebook) if self.html else None
        if self.uploads is not None:
            placed_by = self.placed_by or (features[0] if features else None)
            self._upload_record(notebook, html, placed_by, features)

    def publish_failure_record(self, notebook: Path) -> None:
        """A failed run's record: always rendered as HTML, uploaded where the first
        input item's outputs would have gone. Never raises: the run's error matters."""
        if not notebook.exists():
            return
        logger.error("executed notebook kept at %s", notebook)
        html = render_html(notebook)
        if self.uploads is None:
            return
        try:
            self._upload_record(notebook, html, self._first_input_item(), [])
        except Exception as err:  # noqa: BLE001 - the run's own error is what matters
            logger.warning("could not upload the run record: %s", err)

    def rollback(self) -> None:
        """Delete the outputs uploaded so far (the record stays)."""
        if self.uploads is not None:
            self.uploads.delete_uploaded()

    def _upload_record(
        self,
        notebook: Path,
        html: Path | None,
        placed_by: dict[str, Any] | None,
        features: list[dict[str, Any]],
    ) -> None:
        prefix = record_prefix(self.payload, placed_by) or self.fallback_prefix
        if prefix is None or "://" not in prefix:
            logger.warning("no upload location for the run record; kept at %s", notebook)
            return
        options = self.payload.get_collection_upload_options(
            placed_by.get("collection") if placed_by else None
        )
        client = S3Client()
        template = options.get("path_template")
        client.template = template if prefix != self.fallback_prefix else None
        urls = upload_record(
            [p for p in (notebook, html) if p],
            prefix,
            client,
            s3_urls=bool(options.get("s3_urls")),
            headers=options.get("headers") or {},
        )
        self.record_uploaded = True
        logger.info("run record uploaded: %s", ", ".join(urls.values()))
        link_record(features, urls[notebook.name], urls.get(html.name) if html else None)

    def _first_input_item(self) -> dict[str, Any] | None:
        """The first input item: its outputs would have been uploaded with its own
        collection's options, as stactask uploads them (before matchers assign any)."""
        items = self.payload.items_as_dicts
        return dict(items[0]) if items else None


class Output(ABC):
    """Where the output payload goes."""

    def check(self) -> None:  # noqa: B027 - most outputs cannot be checked ahead
        """Fail now, before the run, if the output could not be written."""

    @property
    def record_prefix(self) -> str | None:
        """Where a record goes when the payload's upload options do not say."""
        return None

    @abstractmethod
    def write(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Write the output payload; return what the run returns."""


class StreamOutput(Output):
    """The output payload on stdout."""

    def write(self, payload: dict[str, Any]) -> dict[str, Any]:
        write_json(payload, None)
        return payload


class UrlOutput(Output):
    """The output payload at a path or URL (``s3://...``)."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)

    def check(self) -> None:
        check_output_url(self.url)

    @property
    def record_prefix(self) -> str | None:
        return self.url.rsplit("/", 1)[0] if "://" in self.url else None

    def write(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            write_json(payload, self.url)
        except Exception as err:
            raise OutputError(f"cannot write the output payload to {self.url}: {err}") from err
        return payload


class ReturnOutput(Output):
    """A Lambda's return value: the payload, or ``{"url": ...}`` of a copy on S3 when its
    JSON is over Cirrus' limit (bucket from ``NB2TASK_PAYLOAD_BUCKET`` or
    ``CIRRUS_PAYLOAD_BUCKET``, prefix from ``NB2TASK_OVERSIZED_PREFIX``)."""

    def write(self, payload: dict[str, Any]) -> dict[str, Any]:
        length = len(json.dumps(payload))
        if length <= MAX_PAYLOAD_LENGTH:
            return payload
        current = settings.current()
        bucket = current.payload_bucket
        if not bucket:
            raise Nb2TaskError(
                f"the output payload is {length} characters, over Cirrus' "
                f"{MAX_PAYLOAD_LENGTH}, and neither NB2TASK_PAYLOAD_BUCKET nor "
                "CIRRUS_PAYLOAD_BUCKET says where to put it"
            )
        prefix = current.oversized_prefix
        url = f"s3://{bucket}/{prefix}/{uuid.uuid4()}.json"
        UrlOutput(url).write(payload)
        logger.info("output payload of %d characters written to %s", length, url)
        return {"url": url}
