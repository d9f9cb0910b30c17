"""`key=value` overrides from the command line, and a script's flags written as such overrides.

An override's value is typed by the schema (`seed=3` is an integer because the schema says so); lists and
mappings are given as JSON (a list also comma-separated). A script's flags are shorthands for schema keys
(`main_eval.py --batch-size 4` is `eval.batch_size=4`): `cli_overrides` turns them into `key=value` strings
placed before the user's own, so the scripts have no defaults of their own and `key=value` wins over a flag
for the same key. A whole number written as a float (`200.0`, `2e3`) for an integer key is that integer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lib.common.config.files import Refused, check_values, load_json, type_name
from lib.common.config.legacy import migrate_override_key
from lib.common.config.merge import deep_merge, get_dotted, set_dotted
from lib.common.config.schema import schema_node
from lib.common.config.validation import unknown_key_error
from lib.common.errors import ConfigError


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith(".") or key.endswith("."):
        raise ConfigError(
            f"override '{text}' is not of the form key.sub=value.",
            fix="write overrides after the config file, e.g. `seed=3 device.type=cpu`.",
        )
    return key, value.strip()


def _allowed_types(node: Mapping) -> list[str]:
    kind = node.get("type")
    if kind is None:
        return ["string"]
    return list(kind) if isinstance(kind, list) else [kind]


def coerce_value(text: str, node: Mapping, key: str) -> Any:
    """Turn the text of a `key=value` override into the type the schema gives for `key`."""
    types = _allowed_types(node)
    if "null" in types and text.lower() in ("null", "none", "~"):
        return None
    if "enum" in node and all(isinstance(v, str) for v in node["enum"]) and "string" in types:
        return text
    for kind in types:
        try:
            return _coerce_one(text, kind, node, key)
        except Refused as exc:
            raise ConfigError(f"command line: key '{key}'{exc.where()}: {exc}.", fix=exc.fix) from None
        except (ValueError, TypeError, RecursionError):
            continue
    # a list or a mapping is read as JSON: [data, sft] (YAML's flow style) is not JSON, ["data", "sft"] is
    form = {"array": f'\'{key}=["a", "b"]\'', "object": f"'{key}={{\"k\": 1}}'"}
    example = next((f" as JSON, quoted for the shell, e.g. {form[t]}" for t in types if t in form), "")
    raise ConfigError(
        f"key '{key}' expects {' or '.join(types)}, got '{text}' from the command line.",
        fix=f"give '{key}' a value of type {' or '.join(types)}{example} ({node.get('description', '')}).",
    )


def _coerce_one(text: str, kind: str, node: Mapping, key: str) -> Any:
    if kind == "string":
        return text
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return whole_number(float(text))
    if kind == "number":
        return float(text)
    if kind == "boolean":
        words = {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }
        if text.lower() not in words:
            raise ValueError(text)
        return words[text.lower()]
    if kind == "array":
        # a JSON list, or comma-separated items; JSON of another shape ({...}, "...") is not a list
        json_like = text[:1] in ("[", "{", '"')
        items = load_json(text) if json_like else [t.strip() for t in text.split(",") if t.strip()]
        if not isinstance(items, list):
            raise ValueError(text)
        item_node = node.get("items", {})
        return [coerce_value(str(i), item_node, f"{key}[]") if isinstance(i, str) else i for i in items]
    if kind == "object":
        value = load_json(text)
        if not isinstance(value, dict):
            raise ValueError(text)
        return value
    raise ValueError(kind)


def apply_overrides(
    cfg: dict, overrides: Sequence[str], schema: Mapping, source: str = "command line"
) -> dict:
    """Apply `key.sub=value` strings, each typed by the schema; unknown keys fail with the closest name."""
    out = copy.deepcopy(cfg)
    for text in overrides:
        key, raw = parse_override(text)
        key = migrate_override_key(key, source, raw)
        if key is None:
            continue
        node = schema_node(schema, key)
        if node is None:
            raise unknown_key_error(key, schema, source)
        value = coerce_value(raw, node, key)
        check_values(value, source, key)
        parts = key.split(".")
        for i in range(1, len(parts)):  # a section the file gave as a scalar or list cannot take a sub-key
            parent = get_dotted(out, ".".join(parts[:i]))
            if parent is not None and not isinstance(parent, Mapping):
                section = ".".join(parts[:i])
                raise ConfigError(
                    f"{source}: cannot set '{key}': '{section}' is {type_name(parent)} {parent!r} in the "
                    "config, not a section.",
                    fix=f"make '{section}' a mapping in the config file (see the schema), then override '{key}'.",
                )
        current = get_dotted(out, key)
        if isinstance(value, dict) and isinstance(current, Mapping):
            value = deep_merge(current, value)  # a section merges, as in a file: `model={}` keeps model.*
        set_dotted(out, key, value)
    return out


def override_key(text: str) -> str | None:
    """The (current) key an override sets, or None when it sets none."""
    with contextlib.suppress(ConfigError):
        key, raw = parse_override(text)
        return migrate_override_key(key, "", raw, warn=False)  # warned when it was applied
    return None


def whole_number(value: float) -> int:
    """The int a whole, finite float stands for (200.0 -> 200); ValueError for anything else."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ValueError(value)


def whole_numbers_to_int(value: Any, node: Mapping) -> Any:
    """`value` with each whole float at an integer-only key of the schema `node` made an int (what JSON
    Schema counts as an integer already reaches the scripts as one); anything else unchanged."""
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: whole_numbers_to_int(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers_to_int(v, node.get("items", {})) for v in value]
    types = _allowed_types(node) if "type" in node else []
    if isinstance(value, float) and "integer" in types and "number" not in types:
        try:
            return whole_number(value)
        except ValueError:
            return value  # not whole: validation names it
    return value


def override_text(value: Any) -> str:
    """A typed value as the text of a `key=value` override (lists and mappings as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


OVERRIDE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def split_overrides(values: Sequence[str] | None) -> tuple[list[str] | None, list[str]]:
    """(values, overrides): the `key.sub=value` items a flag with several values swallowed (`--systems a b
    seed=3`) are overrides, not values. A path such as models/a=b is not (its `/` comes before the `=`)."""
    if values is None:
        return None, []
    kept = [v for v in values if not OVERRIDE_PATTERN.match(v)]
    return kept, [v for v in values if OVERRIDE_PATTERN.match(v)]


def cli_overrides(flags: Mapping[str, tuple[str, Any]]) -> list[str]:
    """`key=value` strings for a script's flags, given as {dotted key: (flag, value)}; a value of None is a
    flag that was not given (the scripts' flags have no defaults: those are the schema's)."""
    return [f"{key}={override_text(value)}" for key, (_, value) in flags.items() if value is not None]
