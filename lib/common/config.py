"""The one config loader every script uses (docs/ARCHITECTURE.md, "Configs").

A config is a YAML or JSON file. Resolution, lowest precedence first:

    schema defaults  <  `extends:` parents (in order)  <  the file  <  the command line

On the command line a script's flags are shorthands for schema keys (`main_eval.py --batch-size 4` is
`eval.batch_size=4`): `cli_overrides` turns them into `key=value` strings placed before the user's own, so
the scripts have no defaults of their own and `key=value` wins over a flag for the same key.

The schema is `schemas/<model_type>.schema.json` (JSON Schema draft 2020-12, `additionalProperties: false`
everywhere); `model_type` comes from the file or its parents and defaults to "control". A `{"$ref":
"shared/NAME.json"}` in a schema is replaced by that file when the schema is loaded, so a section both
schemas share (the `device` section) is defined once. Legacy key names are renamed (or dropped) with a
warning by one table, LEGACY_KEYS, before anything else sees them. Override values are typed by the
schema: `seed=3` is an integer because the schema says so.

What a config may hold, wherever it comes from (a file, a parent, a `key=value` override), so that bad input
exits 2 with the key and the fix instead of reaching a script: UTF-8 text; string keys, each once per mapping
(YAML 1.1 reads unquoted `on`, `yes`, `1`, `~` as a boolean, number or null); at most MAX_DEPTH levels of
nesting; finite numbers only (no NaN or infinity). A whole number written as a float (`200.0`, `2e3`) for an
integer key is that integer. A mapping merges key by key over what is below it, from a parent, a file or
an override alike: `model={"name": "x"}` changes model.name and keeps the rest of the section, so a section
can never lose the keys the scripts read (the schemas also mark every key with a default required).

Usage (for shell scripts, so nothing parses YAML in bash):
    make validate                                       # every config under configs/
    python -m lib.common.config show FILE [key=value ...]      # the resolved config as JSON
    python -m lib.common.config get FILE KEY [key=value ...]   # one value (strings raw, the rest as JSON)
    python -m lib.common.config validate [PATH ...]            # files or folders (recursive), default configs/
                                                        # (configs/accelerate/ is skipped: OTHER_TOOL_DIRS)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import functools
import itertools
import json
import logging
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lib.common.errors import ConfigError, UsageError, run_cli

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # lib/common/config.py -> the repository root
SCHEMA_DIR = ROOT / "schemas"
DEFAULT_SCHEMA = "control"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

# Folders that hold another tool's config files, not experiment configs: `find_configs` does not walk
# into a folder with one of these names (nor takes a file inside one), and `validate` lists what it
# skipped and why. The name is the rule, wherever the folder sits, so configs/accelerate/ and a copy of
# it elsewhere behave the same; each tool's own test checks its files (tests/test_accelerate.py).
OTHER_TOOL_DIRS: dict[str, str] = {
    "accelerate": "accelerate launch configs (accelerate's format; use with --config_file)",
}

# Old key -> new key (dotted paths), or None to drop it. Applied to every file and override, in this order
# (an entry may rename what an earlier one produced). A section renames with everything under it: the
# override `pipeline.eval.batch_size=4` becomes `eval.batch_size=4`. An old key whose new name lies under it
# (`device` -> `device.type`) is a scalar that became a section: a value that is already a mapping is the
# new shape and stays.
LEGACY_KEYS: dict[str, str | None] = {
    # The original BLT entropy-model config (configs/blt/entropy_mps.json as first written): flat keys, and
    # the device as a string. Its device keys now form the `device` section that control configs and the
    # device profiles (configs/profiles/) use, so a BLT config can `extends:` a profile.
    "byte_lm_hidden_size": "hidden_size",
    "byte_lm_num_layers": "num_layers",
    "byte_lm_num_heads": "num_heads",
    "byte_lm_dropout": "dropout",
    "memory_reserve_pct": None,  # MPS memory is set by watermarks now (lib.common.device), never a percentage
    "device": "device.type",
    "force_cpu": "device.force_cpu",
    "mps_high_watermark_ratio": "device.mps_high_watermark_ratio",
    "mps_low_watermark_ratio": "device.mps_low_watermark_ratio",
    # Pipeline configs before the `generate` and `eval` sections, which the scripts and the pipeline share.
    "pipeline.eval.include_base": "pipeline.include_base",
    "pipeline.eval.save_plots": "pipeline.save_plots",
    "pipeline.eval": "eval",
    "eval.eval_mode": "eval.mode",
    "pipeline.data": "generate",
}

# Nesting levels a config file or an override value may have (the schemas use 4): deeper input is refused
# before a parser or a merge runs out of Python's stack.
MAX_DEPTH = 32
# Values (mappings, lists and scalars) one file or override may expand to: YAML aliases can make a small file
# expand to billions, which would hang the checks and the validator instead of failing.
MAX_VALUES = 100_000

JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


# ---------------------------------------------------------------- schemas


@functools.cache
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.is_file():
        valid = ", ".join(sorted(available_schemas()))
        raise ConfigError(
            f"no schema for model_type '{name}' (looked for {path.relative_to(ROOT)}).",
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


# ---------------------------------------------------------------- reading files


class _Refused(Exception):
    """A file or override value that parses but is not a config (see the module docstring); `line` when known."""

    def __init__(self, message: str, fix: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.fix, self.line, self.column = fix, line, column

    def where(self) -> str:
        return f" (line {self.line}, column {self.column})" if self.line else ""


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing what YAML would accept silently: a key given twice (the last one would win), a
    key that is not a string, and nesting deeper than MAX_DEPTH (which would exhaust Python's stack)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []  # the keys (and [i] list positions) above the node being composed

    def compose_node(self, parent, index):
        # the composer passes a mapping value's key node, a list item's position, or None (a key, the root)
        if isinstance(index, yaml.ScalarNode):
            self._path.append("." + str(index.value))
        elif isinstance(index, int) and not isinstance(index, bool):
            self._path.append(f"[{index}]")
        else:
            self._path.append("")
        try:
            if len(self._path) > MAX_DEPTH + 1:  # the document itself is one level
                self._too_deep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def fetch_flow_collection_start(self, TokenClass):
        # The scanner reads a flow collection (`[[[...`) to its end before the composer sees it, in time
        # quadratic in its depth: refuse it here, at the key the composer is at.
        if self.flow_level >= MAX_DEPTH:
            self._too_deep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def _too_deep(self, mark) -> None:
        message, fix = _too_deep()
        parts = "".join(self._path).split("[")[0].lstrip(".").split(".")
        key = ".".join(parts[:6]) + (".…" if len(parts) > 6 else "")
        where = f"key '{key}': " if key else ""
        raise _Refused(where + message, fix, line=mark.line + 1, column=mark.column + 1)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            where = {"line": mark.line + 1, "column": mark.column + 1}
            text = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key)
            if not isinstance(key, str):
                raise _Refused(
                    f"the key '{text}' is not a name: YAML 1.1 reads it as the {_type_name(key)} {key!r} "
                    "(unquoted on/off/yes/no/true/false are booleans, numbers are numbers, ~ is null)",
                    fix=f"quote the key ('{text}':) or use the key the schema names.",
                    **where,
                )
            if key in seen:
                raise _Refused(
                    f"the key '{key}' is given twice in one mapping (YAML would keep the last silently)",
                    fix=f"keep one '{key}'.",
                    **where,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _too_deep() -> tuple[str, str]:
    return (
        f"nested more than {MAX_DEPTH} levels deep",
        "no config key nests like that: give the key the value its schema describes.",
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads' object_pairs_hook: a key given twice is refused (JSON would keep the last silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(
                f"the key '{key}' is given twice in one object (JSON would keep the last silently)",
                fix=f"keep one '{key}'.",
            )
        out[key] = value
    return out


def _load_json(text: str) -> Any:
    """json.loads with duplicate keys refused and nesting limited to MAX_DEPTH (checked before parsing, as
    the parser recurses once per level; the keys on the way are kept to name the one that nests)."""
    keys: list[
        str | None
    ] = []  # per open [ or {: the key being given a value in it (None: a list, or none yet)
    start, last, in_string, escaped = 0, "", False, False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string, last = False, text[start : i + 1]
        elif char == '"':
            in_string, start = True, i
        elif char == ":" and keys:
            with contextlib.suppress(ValueError):
                keys[-1] = json.loads(last)
        elif char in "[{":
            keys.append(None)
            if len(keys) > MAX_DEPTH:
                line = text.count("\n", 0, i) + 1
                column = i - text.rfind("\n", 0, i)
                path = list(itertools.takewhile(lambda k: k is not None, keys))
                name = ".".join(map(str, path[:6])) + (".…" if len(path) > 6 else "")
                message, fix = _too_deep()
                raise _Refused((f"key '{name}': " if name else "") + message, fix, line=line, column=column)
        elif char in "]}" and keys:
            keys.pop()
    return json.loads(text, object_pairs_hook=_unique_keys)


def check_values(data: Any, source: str, prefix: str = "") -> None:
    """Refuse non-finite numbers (NaN, infinity) anywhere in `data`, naming the dotted key; and data that
    expands to more than MAX_VALUES values (YAML aliases). Iterative, so any depth is safe."""
    stack: list[tuple[str, Any]] = [(prefix, data)]
    count = 0
    while stack:
        key, value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{source}: more than {MAX_VALUES} values (YAML aliases * repeating anchors & expand to all of them).",
                fix="write the config without anchors and aliases.",
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{source}: key '{key or '(top level)'}' is {value}, not a finite number.",
                fix=f"give '{key}' a finite number (NaN and infinity are never valid config values).",
            )
        if isinstance(value, Mapping):
            stack += [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]


def read_config_file(path: Path) -> dict:
    if path.suffix not in CONFIG_SUFFIXES:
        raise ConfigError(
            f"{path}: a config must be a YAML or JSON file ({', '.join(CONFIG_SUFFIXES)}).",
            fix="rename the file or pass the right one with --config.",
        )
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}", fix="check the path (configs/ holds the shipped ones)."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc.strerror or exc}).", fix="check its permissions."
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, byte offset {exc.start}).",
            fix="save the file as UTF-8 (configs are UTF-8 YAML or JSON).",
        ) from None
    try:
        data = _load_json(text) if path.suffix == ".json" else yaml.load(text, Loader=_ConfigLoader)
    except _Refused as exc:
        raise ConfigError(f"{path}{exc.where()}: {exc}.", fix=exc.fix) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys to values, not {_type_name(data)}."
        )
    check_values(data, str(path))
    return data


def migrate_legacy_keys(raw: dict, source: str) -> dict:
    """Rename or drop the keys in LEGACY_KEYS (top-level or dotted), warning once for each."""
    out = copy.deepcopy(raw)
    for old, new in LEGACY_KEYS.items():
        parent_path, _, leaf = old.rpartition(".")
        parent = _get_dotted(out, parent_path) if parent_path else out
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        if new is not None and new.startswith(old + ".") and isinstance(parent[leaf], Mapping):
            continue  # a scalar that became a section, already written as the section
        value = parent.pop(leaf)
        if new is None:
            log.warning("%s: dropped legacy key '%s' (no longer used)", source, old)
            continue
        if _get_dotted(out, new) is not None:
            raise ConfigError(
                f"{source}: both the legacy key '{old}' and its new name '{new}' are set.",
                fix=f"keep only '{new}'.",
            )
        _set_dotted(out, new, value)
        log.warning("%s: renamed legacy key '%s' to '%s'; please update the file", source, old, new)
    return out


def _read_chain(path: Path, stack: tuple[Path, ...] = ()) -> dict:
    """The file merged over its `extends:` parents (in order), with cycles reported."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(_display(p) for p in (*stack, path))
        raise ConfigError(f"config inheritance cycle: {cycle}", fix="remove one of the `extends:` links.")
    raw = migrate_legacy_keys(read_config_file(path), _display(path))
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{_display(path)}: `extends` must be a file path or a list of file paths.")
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, _read_chain(path.parent / parent, (*stack, path)))
    return deep_merge(merged, raw)


# ---------------------------------------------------------------- merging and overrides


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A new dict: mappings merge key by key; anything else (lists included) is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get_dotted(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(cfg: dict, dotted: str, value: Any) -> None:
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
        except _Refused as exc:
            raise ConfigError(f"command line: key '{key}'{exc.where()}: {exc}.", fix=exc.fix) from None
        except (ValueError, TypeError, RecursionError):
            continue
    raise ConfigError(
        f"key '{key}' expects {' or '.join(types)}, got '{text}' from the command line.",
        fix=f"give '{key}' a value of type {' or '.join(types)} ({node.get('description', '')}).",
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
        items = _load_json(text) if json_like else [t.strip() for t in text.split(",") if t.strip()]
        if not isinstance(items, list):
            raise ValueError(text)
        item_node = node.get("items", {})
        return [coerce_value(str(i), item_node, f"{key}[]") if isinstance(i, str) else i for i in items]
    if kind == "object":
        value = _load_json(text)
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
        key = _migrate_override_key(key, source, raw)
        if key is None:
            continue
        node = schema_node(schema, key)
        if node is None:
            raise _unknown_key_error(key, schema, source)
        value = coerce_value(raw, node, key)
        check_values(value, source, key)
        parts = key.split(".")
        for i in range(1, len(parts)):  # a section the file gave as a scalar or list cannot take a sub-key
            parent = _get_dotted(out, ".".join(parts[:i]))
            if parent is not None and not isinstance(parent, Mapping):
                section = ".".join(parts[:i])
                raise ConfigError(
                    f"{source}: cannot set '{key}': '{section}' is {_type_name(parent)} {parent!r} in the "
                    "config, not a section.",
                    fix=f"make '{section}' a mapping in the config file (see the schema), then override '{key}'.",
                )
        current = _get_dotted(out, key)
        if isinstance(value, dict) and isinstance(current, Mapping):
            value = deep_merge(current, value)  # a section merges, as in a file: `model={}` keeps model.*
        _set_dotted(out, key, value)
    return out


def _override_key(text: str) -> str | None:
    """The (current) key an override sets, or None when it sets none."""
    with contextlib.suppress(ConfigError):
        key, raw = parse_override(text)
        return _migrate_override_key(key, "", raw, warn=False)  # warned when it was applied
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


def _migrate_override_key(key: str, source: str, raw: str = "", warn: bool = True) -> str | None:
    """The current name of an override's key (LEGACY_KEYS in order), None to drop it."""
    original = key
    for old, new in LEGACY_KEYS.items():
        if key == old:
            if new is None:
                if warn:
                    log.warning("%s: dropped legacy key '%s' (no longer used)", source, original)
                return None
            if new.startswith(old + ".") and raw.lstrip().startswith("{"):
                continue  # the whole section as a JSON object: already the new shape
            key = new
        elif key.startswith(old + ".") and new is not None and not new.startswith(old + "."):
            key = new + key[len(old) :]
    if key != original and warn:
        log.warning("%s: renamed legacy key '%s' to '%s'", source, original, key)
    return key


# ---------------------------------------------------------------- validation and messages


def _type_name(value: Any) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def closest_key(key: str, schema: Mapping) -> str | None:
    """The valid dotted key nearest to `key`: a sibling first, then the same name elsewhere."""
    parent, _, leaf = key.rpartition(".")
    parent_node = schema_node(schema, parent) if parent else schema
    siblings = list((parent_node or {}).get("properties", {}))
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{parent}.{match[0]}" if parent else match[0]
    every = list(schema_keys(schema))
    by_leaf = {k: k.rpartition(".")[2] for k in every}
    leaf_match = difflib.get_close_matches(leaf, list(set(by_leaf.values())), n=1, cutoff=0.75)
    if leaf_match:
        return next(k for k, v in by_leaf.items() if v == leaf_match[0])
    match = difflib.get_close_matches(key, every, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_key_error(key: str, schema: Mapping, source: str) -> ConfigError:
    suggestion = closest_key(key, schema)
    parent = key.rpartition(".")[0]
    parent_node = schema_node(schema, parent) if parent else schema
    valid = ", ".join(parent_node.get("properties", {})) if parent_node else ""
    hint = f"did you mean '{suggestion}'?" if suggestion else "check the spelling."
    where = f" under '{parent}'" if parent else ""
    return ConfigError(
        f"{source}: unknown key '{key}'; {hint}",
        fix=f"valid keys{where}: {valid}. The schema ({schema.get('title', '')}) documents each one.",
    )


def validate_config(
    cfg: Mapping, schema: Mapping, source: str, cli_keys: Sequence[str] = (), cli: str = "command line"
) -> None:
    """Validate a merged config; the first problem becomes a ConfigError that names key and fix (and the
    command line as its source when one of `cli_keys`, the keys overrides set, is or holds that key)."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if not errors:
        return
    error = errors[0]
    path = ".".join(str(p) for p in error.absolute_path)
    if any(path == k or path.startswith(k + ".") for k in cli_keys):
        source = cli
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        raise _unknown_key_error(f"{path}.{extra[0]}" if path else extra[0], schema, source)
    node = schema_node(schema, path) if path else schema
    description = (node or {}).get("description", "")
    if error.validator == "type":
        expected = (
            error.validator_value
            if isinstance(error.validator_value, str)
            else " or ".join(error.validator_value)
        )
        message = (
            f"{source}: key '{path}' expects {expected}, got {_type_name(error.instance)} {error.instance!r}."
        )
    elif error.validator == "enum":
        choices = ", ".join(map(json.dumps, error.validator_value))
        message = f"{source}: key '{path}' must be one of {choices}; got {error.instance!r}."
    elif error.validator == "required":
        message = f"{source}: {error.message} (at '{path or 'top level'}')."
    elif error.validator == "pattern":
        message = f"{source}: key '{path}' must match {error.validator_value}; got {error.instance!r}."
    else:
        message = f"{source}: key '{path}': {error.message}."
    more = f" ({len(errors) - 1} more problem(s) after this one.)" if len(errors) > 1 else ""
    raise ConfigError(message + more, fix=f"'{path}': {description}" if description else "")


# ---------------------------------------------------------------- the loader


def resolve_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    schema_name: str | None = None,
) -> dict:
    """Load, merge, migrate, override and validate a config (precedence in the module docstring).

    path: the config file, or None for the schema's defaults alone.
    overrides: `key.sub=value` strings from the command line (highest precedence).
    values: already-typed values from a script's own flags, by dotted key (just below `overrides`).
    schema_name: the expected schema; by default the `model_type` of the file, else "control".
    """
    source = _display(Path(path).resolve()) if path else "defaults"
    raw = _read_chain(Path(path)) if path else {}
    file_type = raw.get("model_type")
    if "model_type" in raw and not isinstance(file_type, str):
        raise ConfigError(
            f"{source}: key 'model_type' must be a string, got {_type_name(file_type)} {file_type!r}.",
            fix=f"set model_type to one of: {', '.join(available_schemas())}.",
        )
    if schema_name and file_type and file_type != schema_name:
        raise ConfigError(
            f"{source}: model_type is '{file_type}' but this command expects '{schema_name}'.",
            fix=f"pass a {schema_name} config.",
        )
    name = schema_name or (file_type if "model_type" in raw else DEFAULT_SCHEMA)
    schema = load_schema(name)
    cfg = deep_merge(schema_defaults(schema), raw)
    for key, value in (values or {}).items():
        if value is not None:
            if schema_node(schema, key) is None:
                raise _unknown_key_error(key, schema, "script flag")
            check_values(value, "script flag", key)
            _set_dotted(cfg, key, value)
    cfg = apply_overrides(cfg, overrides, schema)
    cfg = whole_numbers_to_int(cfg, schema)
    cli_keys = [k for k in (_override_key(text) for text in overrides) if k]
    validate_config(cfg, schema, source, [*cli_keys, *(values or {})])
    return cfg


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


def resolve_cli(
    path: str | Path | None,
    flags: Mapping[str, tuple[str, Any]],
    overrides: Sequence[str] = (),
    schema_name: str | None = None,
) -> dict:
    """resolve_config for a script's command line: its flags (cli_overrides) then the user's `key=value`
    overrides. A problem with a value a flag set names the flag as well as the key."""
    try:
        return resolve_config(path, [*cli_overrides(flags), *overrides], schema_name=schema_name)
    except ConfigError as exc:
        for key, (flag, value) in flags.items():
            if value is not None and f"'{key}'" in str(exc):
                raise ConfigError(f"{flag} {override_text(value)}: {exc}", fix=exc.fix) from None
        raise


def repo_path(path: str | Path) -> Path:
    """A path from a config: absolute as given, relative ones from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def other_tool_config(file: Path, searched: Path | None = None) -> str | None:
    """Why `file` is another tool's config (OTHER_TOOL_DIRS), or None for an experiment config.

    Only folders from `searched` (the folder being walked; default: the file's own folder) down count,
    so a checkout that happens to live under a folder named `accelerate` still validates its configs.
    """
    folders = [searched.name, *file.relative_to(searched).parts[:-1]] if searched else [file.parent.name]
    return next((OTHER_TOOL_DIRS[name] for name in folders if name in OTHER_TOOL_DIRS), None)


def find_configs(paths: Sequence[str | Path]) -> list[Path]:
    """The experiment config files among `paths` (folders recursively), other tools' configs left out."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(
                f
                for f in p.rglob("*")
                if f.suffix in CONFIG_SUFFIXES and f.is_file() and not other_tool_config(f, p)
            )
        elif not other_tool_config(p):
            found.append(p)
    return found


def skipped_configs(paths: Sequence[str | Path]) -> dict[Path, str]:
    """The config files among `paths` that find_configs leaves out, each with the reason."""
    skipped: dict[Path, str] = {}
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.suffix in CONFIG_SUFFIXES) if p.is_dir() else [p]
        for f in files:
            reason = other_tool_config(f, p if p.is_dir() else None)
            if reason and f.is_file():
                skipped[f] = reason
    return skipped


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.common.config", description="Resolve and validate configs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the resolved config as JSON")
    show.add_argument("file")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    get = sub.add_parser("get", help="print one value of the resolved config")
    get.add_argument("file")
    get.add_argument("key")
    get.add_argument("overrides", nargs="*", metavar="key=value")
    check = sub.add_parser("validate", help="validate every config under the given files or folders")
    check.add_argument("paths", nargs="*", default=[str(ROOT / "configs")])
    args = parser.parse_args(argv)

    if args.command == "show":
        print(json.dumps(resolve_config(args.file, args.overrides), indent=2))
    elif args.command == "get":
        value = get_value(resolve_config(args.file, args.overrides), args.key)
        print(value if isinstance(value, str) else json.dumps(value))
    else:
        return _validate_paths(args.paths)
    return 0


def _validate_paths(paths: Sequence[str]) -> int:
    files = find_configs(paths)
    skipped = skipped_configs(paths)
    for file, reason in skipped.items():
        print(f"skipped {_display(file)}: {reason}")
    if not files:
        raise ConfigError(
            f"no experiment config files (*.yaml, *.yml, *.json) under {', '.join(paths)}"
            + (f" ({len(skipped)} skipped: other tools' configs)." if skipped else "."),
            fix="pass a config file or a folder that holds some (configs/ by default).",
        )
    failed = 0
    for file in files:
        try:
            cfg = resolve_config(file)
            print(f"ok      {_display(file)}  ({cfg['model_type']})")
        except UsageError as exc:  # one bad file is reported, and the others are still checked
            failed += 1
            print(f"FAILED  {_display(file)}: {exc} {exc.fix}".rstrip())
    note = f"; skipped {len(skipped)} other tools' config(s)" if skipped else ""
    print(f"validated {len(files)} config(s): {len(files) - failed} ok, {failed} failed{note}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
