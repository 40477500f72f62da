"""``read_payload``'s answer: the payload as a notebook sees it, read-only.

stactask's ``Payload`` gives a task its id, ``process[0]`` and this task's options;
this gives a notebook the same, by the same rules (``process`` as a list or a legacy
dict, ``tasks`` as a dict or a legacy list), without importing stactask (a second
or so in a fresh kernel). Every accessor returns a copy: a notebook cannot change
the payload its task publishes by changing what it read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import stactask.payload

    from .stac_items import Item


class PayloadView:
    """A Cirrus process payload, read-only: its id, ``process[0]`` and this task's options."""

    def __init__(
        self,
        document: Mapping[str, Any],
        task_name: str | None = None,
        task_version: str | None = None,
    ) -> None:
        self._document = copy.deepcopy(dict(document))
        self._task_name = task_name
        self.task_version = task_version  # the running task's version (None in Jupyter)

    def __repr__(self) -> str:
        return f"<PayloadView id={self.id!r} task={self.task_name!r} items={len(self._features)}>"

    @property
    def id(self) -> str | None:
        """The payload's ``id`` (Cirrus names a payload by it), or None."""
        value = self._document.get("id")
        return value if isinstance(value, str) else None

    @property
    def process(self) -> dict[str, Any]:
        """``process[0]``: the process definition this task reads (a legacy dict too)."""
        return copy.deepcopy(self._definition)

    @property
    def _definition(self) -> dict[str, Any]:
        """``process[0]`` itself (not a copy: for this class's accessors only)."""
        process = self._document.get("process", [])
        if isinstance(process, dict):
            return process
        if isinstance(process, list) and process and isinstance(process[0], dict):
            return dict(process[0])
        return {}

    @property
    def workflow(self) -> str | None:
        value = self._definition.get("workflow")
        return value if isinstance(value, str) else None

    @property
    def upload_options(self) -> dict[str, Any]:
        return _mapping(self._definition.get("upload_options"))

    @property
    def workflow_options(self) -> dict[str, Any]:
        return _mapping(self._definition.get("workflow_options"))

    @property
    def collection_options(self) -> dict[str, Any]:
        return _mapping(self._definition.get("collection_options"))

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task's options: ``process[0].tasks`` (a legacy list of
        ``{"name", "parameters"}`` read as stactask reads it)."""
        tasks = self._definition.get("tasks", {})
        if isinstance(tasks, list):
            return {
                entry["name"]: _mapping(entry.get("parameters"))
                for entry in tasks
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)
            }
        if isinstance(tasks, dict):
            return {name: _mapping(options) for name, options in tasks.items()}
        return {}

    @property
    def task_name(self) -> str | None:
        """This task's name: given, or the run's, or the payload's only task."""
        if self._task_name is not None:
            return self._task_name
        tasks = self.tasks
        return next(iter(tasks)) if len(tasks) == 1 else None

    @property
    def task_options(self) -> dict[str, Any]:
        """This task's own options, ``process[0].tasks.<task name>`` (empty if none)."""
        name = self.task_name
        return self.tasks.get(name, {}) if name is not None else {}

    @property
    def _features(self) -> list[Any]:
        features = self._document.get("features", [])
        return features if isinstance(features, list) else []

    @property
    def items_as_dicts(self) -> list[dict[str, Any]]:
        """The payload's items as dicts (copies)."""
        return copy.deepcopy(self._features)

    @property
    def items(self) -> list[Item]:
        """The payload's items as pystac Items, exactly as they came (``read_items``)."""
        from . import stac_items

        return stac_items.read(self._features)

    def to_dict(self) -> dict[str, Any]:
        """The whole payload document (a copy)."""
        return copy.deepcopy(self._document)

    @property
    def stactask_payload(self) -> stactask.payload.Payload:
        """The payload as stactask's ``Payload`` (a copy; imports stactask)."""
        from stactask.payload import Payload

        return Payload(self.to_dict())


def _mapping(value: Any) -> dict[str, Any]:
    """A copy of ``value`` if it is a mapping, else an empty one."""
    return copy.deepcopy(value) if isinstance(value, dict) else {}
