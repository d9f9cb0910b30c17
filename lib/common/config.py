"""The one config loader every script uses (DESIGN.md section 7).

A config is a YAML or JSON file. Resolution, lowest precedence first:

    schema defaults  <  `extends:` parents (in order)  <  the file  <  script flags  <  `key.sub=value`

The schema is `schemas/<model_type>.schema.json` (JSON Schema draft 2020-12, `additionalProperties: false`
everywhere); `model_type` comes from the file or its parents and defaults to "control". Legacy key names
are renamed (or dropped) with a warning by one table, LEGACY_KEYS, before anything else sees them.
Override values are typed by the schema: `seed=3` is an integer because the schema says so.

Usage (for shell scripts, so nothing parses YAML in bash):
    make validate                                       # every config under configs/
    python -m lib.common.config show FILE [key=value ...]      # the resolved config as JSON
    python -m lib.common.config get FILE KEY [key=value ...]   # one value (strings raw, the rest as JSON)
    python -m lib.common.config validate [PATH ...]            # files or folders (recursive), default configs/
                                                        # (configs/accelerate/ is skipped: OTHER_TOOL_DIRS)
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lib.common.errors import ConfigError, run_cli

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

# Old key -> new key (dotted paths), or None to drop it. Applied to every file and override.
# The byte_lm_* names and memory_reserve_pct come from the original BLT entropy-model config.
LEGACY_KEYS: dict[str, str | None] = {
    "byte_lm_hidden_size": "hidden_size",
    "byte_lm_num_layers": "num_layers",
    "byte_lm_num_heads": "num_heads",
    "byte_lm_dropout": "dropout",
    "memory_reserve_pct": None,  # MPS memory is set by watermarks now (lib.common.device), never a percentage
}

JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
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
    return json.loads(path.read_text())


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
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
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
    return data


def migrate_legacy_keys(raw: dict, source: str) -> dict:
    """Rename or drop the keys in LEGACY_KEYS (top-level or dotted), warning once for each."""
    out = copy.deepcopy(raw)
    for old, new in LEGACY_KEYS.items():
        parent_path, _, leaf = old.rpartition(".")
        parent = _get_dotted(out, parent_path) if parent_path else out
        if not isinstance(parent, dict) or leaf not in parent:
            continue
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
        except (ValueError, TypeError):
            continue
    raise ConfigError(
        f"key '{key}' expects {' or '.join(types)}, got '{text}' from the command line.",
        fix=f"give '{key}' a value of type {' or '.join(types)} ({node.get('description', '')}).",
    )


def _coerce_one(text: str, kind: str, node: Mapping, key: str) -> Any:
    if kind == "string":
        return text
    if kind == "integer":
        return int(text)
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
        items = (
            json.loads(text) if text.startswith("[") else [t.strip() for t in text.split(",") if t.strip()]
        )
        if not isinstance(items, list):
            raise ValueError(text)
        item_node = node.get("items", {})
        return [coerce_value(str(i), item_node, f"{key}[]") if isinstance(i, str) else i for i in items]
    if kind == "object":
        value = json.loads(text)
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
        key = _migrate_override_key(key, source)
        if key is None:
            continue
        node = schema_node(schema, key)
        if node is None:
            raise _unknown_key_error(key, schema, source)
        _set_dotted(out, key, coerce_value(raw, node, key))
    return out


def _migrate_override_key(key: str, source: str) -> str | None:
    if key not in LEGACY_KEYS:
        return key
    new = LEGACY_KEYS[key]
    if new is None:
        log.warning("%s: dropped legacy key '%s' (no longer used)", source, key)
    else:
        log.warning("%s: renamed legacy key '%s' to '%s'", source, key, new)
    return new


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


def validate_config(cfg: Mapping, schema: Mapping, source: str) -> None:
    """Validate a merged config; the first problem becomes a ConfigError that names key and fix."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if not errors:
        return
    error = errors[0]
    path = ".".join(str(p) for p in error.absolute_path)
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
    if schema_name and file_type and file_type != schema_name:
        raise ConfigError(
            f"{source}: model_type is '{file_type}' but this command expects '{schema_name}'.",
            fix=f"pass a {schema_name} config.",
        )
    name = schema_name or file_type or DEFAULT_SCHEMA
    if not isinstance(name, str):
        raise ConfigError(f"{source}: model_type must be a string, got {name!r}.")
    schema = load_schema(name)
    cfg = deep_merge(schema_defaults(schema), raw)
    for key, value in (values or {}).items():
        if value is not None:
            if schema_node(schema, key) is None:
                raise _unknown_key_error(key, schema, "script flag")
            _set_dotted(cfg, key, value)
    cfg = apply_overrides(cfg, overrides, schema)
    validate_config(cfg, schema, source)
    return cfg


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
        except ConfigError as exc:
            failed += 1
            print(f"FAILED  {_display(file)}: {exc} {exc.fix}".rstrip())
    note = f"; skipped {len(skipped)} other tools' config(s)" if skipped else ""
    print(f"validated {len(files)} config(s): {len(files) - failed} ok, {failed} failed{note}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
