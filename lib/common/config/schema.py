"""The schemas: `schemas/<model_type>.schema.json`, the only place config defaults live.

JSON Schema draft 2020-12, `additionalProperties: false` everywhere. A `{"$ref": "shared/NAME.json"}` in a
schema is replaced by that file when the schema is loaded, so a section both schemas share (the `device`
section) is defined once; every key with a default (and every section) is marked required, so validation
says so if a resolved config ever lacks one. `model_type` picks the schema and defaults to "control".
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from lib.common.config.paths import ROOT
from lib.common.errors import ConfigError

SCHEMA_DIR = ROOT / "schemas"
DEFAULT_SCHEMA = "control"


@functools.cache
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    if name not in available_schemas():  # a name, never a path: `../../x` must not read a file elsewhere
        valid = ", ".join(sorted(available_schemas()))
        raise ConfigError(
            f"no schema for model_type {name!r}: the known ones are {valid} (schemas/<model_type>.schema.json).",
            fix=f"set model_type to one of: {valid}.",
        )
    return _require_defaults(_inline_refs(json.loads(path.read_text())))


def _require_defaults(node: Any) -> Any:
    """Mark each object's keys that have a default (or are sections) `required`: the resolved config always
    holds them (defaults are merged first and mappings merge), and validation says so if that ever breaks."""
    if isinstance(node, list):
        return [_require_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _require_defaults(value) for key, value in node.items()}
    props = node.get("properties")
    if isinstance(props, dict):
        needed = [k for k, p in props.items() if "default" in p or "properties" in p]
        node["required"] = sorted(set(node.get("required", [])) | set(needed), key=list(props).index)
    return node


@functools.cache
def shared_schema(name: str) -> dict:
    """schemas/shared/<name>.json: a rule (a plain name, ...) that code outside the loader applies too."""
    return json.loads((SCHEMA_DIR / "shared" / f"{name}.json").read_text())


def _inline_refs(node: Any) -> Any:
    """The schema with each `{"$ref": "shared/x.json", ...}` replaced by that file (its own keys, such as a
    description, win over the file's)."""
    if isinstance(node, list):
        return [_inline_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and not str(node["$ref"]).startswith("#"):
        shared = json.loads((SCHEMA_DIR / node["$ref"]).read_text())
        shared = {k: v for k, v in shared.items() if k not in ("$schema", "$id")}
        node = {**shared, **{k: v for k, v in node.items() if k != "$ref"}}
    return {key: _inline_refs(value) for key, value in node.items()}


def available_schemas() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


def schema_defaults(node: Mapping) -> dict:
    """The defaults the schema declares, nested like the config (objects without a default recurse)."""
    out = {}
    for key, prop in node.get("properties", {}).items():
        if "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        elif "properties" in prop:
            out[key] = schema_defaults(prop)
    return out


def schema_node(schema: Mapping, dotted: str) -> Mapping | None:
    """The schema of `a.b.c`, or None when no such key exists."""
    node: Mapping | None = schema
    for part in dotted.split("."):
        node = (node or {}).get("properties", {}).get(part)
        if node is None:
            return None
    return node


def schema_keys(node: Mapping, prefix: str = "") -> Iterator[str]:
    """Every dotted key the schema defines, parents before children."""
    for key, prop in node.get("properties", {}).items():
        yield prefix + key
        yield from schema_keys(prop, prefix + key + ".")
