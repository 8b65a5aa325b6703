"""YAML reading for config files and ``key=value`` overrides, safe against hostile text.

Why not plain ``yaml.safe_load``:

- **Booleans.** YAML 1.1 (PyYAML) reads ``on``/``off``/``yes``/``no`` as booleans, so
  ``transport.curve=on`` arrived as ``True`` where the field expects the string ``"on"``. Here only
  ``true``/``false`` (any case) are booleans, as in YAML 1.2; every other word stays a string, and a
  boolean field given ``yes`` fails validation naming the key.
- **Alias bombs.** Anchors and aliases share nodes, so a few lines ("billion laughs") expand to 10**9
  nodes; walking or validating that tree hung `stgrl config` for minutes at 2 GB. The composed node
  graph is measured before anything is built from it: a document whose *expanded* size exceeds
  `MAX_EXPANDED_NODES` (or whose aliases form a cycle) is refused.

Pure functions; no torch or Ray.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["MAX_EXPANDED_NODES", "YamlLimitError", "load_yaml"]

MAX_EXPANDED_NODES = 100_000
"""Most nodes a config document may hold once every alias is expanded (our configs have ~200)."""

_BOOL_TAG = "tag:yaml.org,2002:bool"


class YamlLimitError(yaml.YAMLError):
    """The document is well-formed YAML but too large once aliases are expanded, or cyclic."""


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and a bound on alias expansion."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _check_expanded_size(root: yaml.Node) -> None:
    """Raise `YamlLimitError` when ``root`` expands to more than `MAX_EXPANDED_NODES` nodes.

    Linear in the number of *distinct* nodes (sizes are memoised per node), so measuring a bomb is
    as cheap as parsing it. Iterative: a deeply nested document cannot overflow the stack here.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = _children(node)
        if not children_done:
            if key in on_path:
                raise YamlLimitError("YAML aliases form a cycle (an anchor used inside itself)")
            on_path.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in on_path:
                    raise YamlLimitError("YAML aliases form a cycle (an anchor used inside itself)")
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        on_path.discard(key)
        total = 1 + sum(sizes[id(c)] for c in children)
        if total > MAX_EXPANDED_NODES:
            raise YamlLimitError(f"the document expands to more than {MAX_EXPANDED_NODES} nodes through "
                                 f"its aliases (*name); refusing it before building anything")
        sizes[key] = total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str) -> Any:
    """One YAML document as plain Python data; `yaml.YAMLError` (incl. `YamlLimitError`) if refused."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
