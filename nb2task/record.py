"""The run's record: the executed notebook and its HTML rendering.

Kept in the workdir always; with upload on, uploaded next to the outputs (the
payload's ``path_template`` for the first item) on success and on failure, and
linked from every output item as assets with the ``nb2task-record`` role. The HTML
rendering is made for failed runs, and for successful ones when asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stactask.payload import Payload

logger = logging.getLogger(__name__)

RECORD_ROLE = "nb2task-record"
NOTEBOOK_ASSET = "executed-notebook"
HTML_ASSET = "executed-notebook-html"
NOTEBOOK_MEDIA_TYPE = "application/x-ipynb+json"


def render_html(
    notebook_path: Path, html_path: Path | None = None, strict: bool = False
) -> Path | None:
    """Render the executed notebook as HTML (beside it unless ``html_path``); None if
    rendering fails (an error if ``strict``). Costs ~0.5 s, so a successful run renders
    only when asked."""
    from .errors import UsageError

    try:
        import nbformat
        from nbconvert import HTMLExporter

        node = nbformat.read(notebook_path, as_version=4)  # type: ignore[no-untyped-call]
        body, _ = HTMLExporter().from_notebook_node(node)  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - a record without HTML is still a record
        if strict:
            raise UsageError(f"cannot render {notebook_path}: {err}") from None
        logger.warning("could not render %s as HTML: %s", notebook_path, err)
        return None
    html_path = html_path or notebook_path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path


def record_prefix(payload: Payload, item: dict[str, Any] | None) -> str | None:
    """Where the record goes: the upload ``path_template`` filled in for ``item``."""
    if item is None:
        return None
    from pystac.layout import LayoutTemplate

    from . import stac_items

    options = payload.get_collection_upload_options(item.get("collection"))
    template = options.get("path_template")
    if not template:
        return None
    try:
        prefix: str = LayoutTemplate(template).substitute(
            stac_items.Item.read(item)  # as the outputs were placed: not migrated
        )
    except Exception as err:  # noqa: BLE001 - e.g. a template variable the item lacks
        logger.warning("cannot place the run record with %s: %s", template, err)
        return None
    return prefix.rstrip("/")


def upload_record(
    files: list[Path],
    prefix: str,
    client: Any,
    s3_urls: bool = False,
    headers: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Upload the record files under ``prefix`` with the payload's ``headers``;
    return file name -> URL."""
    urls = {}
    for path in files:
        media_type = "text/html" if path.suffix == ".html" else NOTEBOOK_MEDIA_TYPE
        urls[path.name] = client.upload(
            str(path),
            f"{prefix}/{path.name}",
            extra={**(headers or {}), "ContentType": media_type},
            http_url=not s3_urls,
        )
    return urls


def link_record(features: list[dict[str, Any]], notebook_url: str, html_url: str | None) -> None:
    """Add the record as assets of every output item."""
    for feature in features:
        assets = feature.setdefault("assets", {})
        assets[NOTEBOOK_ASSET] = {
            "href": notebook_url,
            "type": NOTEBOOK_MEDIA_TYPE,
            "title": "Executed notebook (the run's record)",
            "roles": ["metadata", RECORD_ROLE],
        }
        if html_url:
            assets[HTML_ASSET] = {
                "href": html_url,
                "type": "text/html",
                "title": "Executed notebook, rendered",
                "roles": ["metadata", RECORD_ROLE],
            }
