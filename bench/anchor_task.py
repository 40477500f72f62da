"""The anchor: a hand-written stactask Task doing what notebooks/minimal.ipynb does."""

from __future__ import annotations

from typing import Any

from stactask import Task


class MinimalTask(Task):
    name = "minimal"
    description = "Tags each input item with a note"
    version = "0.1.0"

    def process(self, note: str = "checked by nb2task", **_: Any) -> list[dict[str, Any]]:
        items = []
        for item in self.items:
            item.properties["nb2task:note"] = note
            items.append(item.to_dict(transform_hrefs=False))
        return items


if __name__ == "__main__":
    MinimalTask.cli()
