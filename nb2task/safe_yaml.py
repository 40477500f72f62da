"""YAML from files a user or a fixture tree gives (``-f``, ``params.yaml``,
``definition.yaml``), loaded with a bound on size and on alias expansion.

PyYAML's safe loader shares one object per alias, but whatever walks the result (a
parameter check, ``json.dumps``) walks every alias again: 450 bytes of nested aliases
(a "billion laughs") expand to 10**9 nodes. So the composed node graph is counted as
it would expand, before any Python object is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import UsageError

MAX_BYTES = 16 * 1024**2
MAX_NODES = 1_000_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str, where: str) -> Any:
    """The document in ``text``; UsageError naming ``where`` if it is not YAML, is over
    ``MAX_BYTES``, or expands to more than ``MAX_NODES`` nodes."""
    if len(text) > MAX_BYTES:
        raise UsageError(f"{where}: over {MAX_BYTES // 1024**2} MB of YAML")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise UsageError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise UsageError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Count the nodes ``root`` expands to, each alias as often as it is used; a
    recursive alias (a node inside itself) counts once per visit on its path, so it is
    refused too rather than looped over."""
    sizes: dict[int, int] = {}  # id(node) -> its expanded size, once known
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise UsageError(f"{where}: a YAML alias refers to a node that contains it")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > MAX_NODES:
                    break
        on_path.discard(key)
        if total > MAX_NODES:
            raise UsageError(
                f"{where}: expands to more than {MAX_NODES} nodes (a YAML alias bomb?)"
            )
        sizes[key] = total
        return total

    size(root)
