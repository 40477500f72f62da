"""Items as they came: a pystac ``Item`` that writes back what it read.

pystac, left to itself, changes an item on its way through a task: ``from_dict``
migrates it to pystac's STAC version (``proj:epsg`` becomes ``proj:code``, extension
URLs are rewritten), ``to_dict`` writes pystac's ``stac_version``, an empty
``stac_extensions`` and its own spelling of ``datetime``, and ``to_dict()``,
``get_href()`` and ``link.href`` fetch the item's root catalog over the network to
decide whether hrefs should be made relative. A hand-written stactask task that
passes dicts through changes none of that; neither does this ``Item``:

- it is read without migration;
- an unresolved root link is never fetched: such an item has no root object (as if
  read without one), so hrefs are never made relative to it;
- ``to_dict`` writes back the ``stac_version`` the item was read with, leaves out
  ``stac_extensions`` if it was absent and is still empty, and keeps the original
  ``datetime`` text while it still means the same instant.

Imported only when ``read_items`` is first called (it imports pystac).
"""

from __future__ import annotations

from typing import Any

import pystac
from pystac.utils import str_to_datetime


class Item(pystac.Item):
    """A pystac Item that is never migrated, never fetches, and writes back what it read."""

    _read_version: str | None = None
    _read_without_extensions = False
    _read_datetime: str | None = None

    @classmethod
    def read(cls, feature: dict[str, Any], migrate: bool = False) -> Item:
        """The item of a feature dict, exactly as it came (the dict is not kept); with
        ``migrate``, migrated to pystac's STAC version, as stactask's ``Task.items``."""
        item = cls.from_dict(feature, migrate=migrate, preserve_dict=True)
        if not migrate:
            item._remember(feature)
        return item

    def _remember(self, feature: dict[str, Any]) -> None:
        version = feature.get("stac_version")
        self._read_version = version if isinstance(version, str) else None
        self._read_without_extensions = "stac_extensions" not in feature
        properties = feature.get("properties")
        text = properties.get("datetime") if isinstance(properties, dict) else None
        self._read_datetime = text if isinstance(text, str) else None

    def get_root(self) -> pystac.Catalog | None:
        # pystac resolves (fetches) an unresolved root link here, from to_dict, get_href
        # and link.href alike. An item read from a payload has no root object.
        link = self.get_root_link()
        if link is not None and not link.is_resolved():
            return None
        return super().get_root()

    def to_dict(
        self, include_self_link: bool = True, transform_hrefs: bool = False
    ) -> dict[str, Any]:
        """The item as a dict, as it was read but for what the notebook changed."""
        document = super().to_dict(include_self_link, transform_hrefs)
        if self._read_version is not None:
            document["stac_version"] = self._read_version
        if self._read_without_extensions and not document.get("stac_extensions"):
            document.pop("stac_extensions", None)
        if self._read_datetime is not None and self.datetime is not None:
            try:
                same = str_to_datetime(self._read_datetime) == self.datetime
            except ValueError:
                same = False
            if same:
                document["properties"]["datetime"] = self._read_datetime
                self.properties["datetime"] = self._read_datetime
        return document

    def clone(self) -> Item:
        clone = super().clone()
        assert isinstance(clone, Item)
        clone._read_version = self._read_version
        clone._read_without_extensions = self._read_without_extensions
        clone._read_datetime = self._read_datetime
        return clone


def read(features: list[dict[str, Any]], migrate: bool = False) -> list[Item]:
    """Items of feature dicts, exactly as they came (or migrated, if ``migrate``)."""
    return [Item.read(feature, migrate) for feature in features]
