"""Nested mappings: merging one over another, and reading or setting a value by its dotted key.

A mapping merges key by key over what is below it, from a parent, a file or an override alike:
`model={"name": "x"}` changes model.name and keeps the rest of the section, so a section can never lose the
keys the scripts read. Anything else, lists included, is replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lib.common.errors import ConfigError


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A new dict: mappings merge key by key; anything else (lists included) is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_dotted(cfg: Mapping, dotted: str) -> Any:
    """The value at `a.b.c`, or None when there is none."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in place, making (or replacing non-mapping) sections on the way."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def get_value(cfg: Mapping, dotted: str) -> Any:
    """One value of a resolved config by its dotted key."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"the config has no key '{dotted}'.")
        node = node[part]
    return node
