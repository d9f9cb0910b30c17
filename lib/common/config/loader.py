"""The loader every script uses: a config file with its `extends:` parents, merged, migrated, overridden and
validated (the precedence is in the package docstring, lib/common/config/__init__.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.common.config.files import check_values, read_config_file, type_name
from lib.common.config.legacy import migrate_legacy_keys
from lib.common.config.merge import deep_merge, set_dotted
from lib.common.config.overrides import (
    apply_overrides,
    cli_overrides,
    override_key,
    override_text,
    whole_numbers_to_int,
)
from lib.common.config.paths import display_path
from lib.common.config.schema import (
    DEFAULT_SCHEMA,
    available_schemas,
    load_schema,
    schema_defaults,
    schema_node,
)
from lib.common.config.validation import check_relations, unknown_key_error, validate_config
from lib.common.errors import ConfigError

# the configs here chain at most 2 files (a recipe extends one profile); 1,500 files would overflow Python's
# stack, so the loader stops long before, with a message
MAX_EXTENDS_DEPTH = 32


def _read_chain(path: Path, stack: tuple[Path, ...] = ()) -> dict:
    """The file merged over its `extends:` parents (in order), with cycles and overlong chains reported."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(display_path(p) for p in (*stack, path))
        raise ConfigError(f"config inheritance cycle: {cycle}", fix="remove one of the `extends:` links.")
    if len(stack) >= MAX_EXTENDS_DEPTH:
        raise ConfigError(
            f"{display_path(stack[0])}: its `extends:` chain is more than {MAX_EXTENDS_DEPTH} files deep (it "
            f"reaches {display_path(path)}).",
            fix="merge the chain into fewer files: a config normally extends one device profile "
            "(configs/profiles/), docs/configs.md.",
        )
    raw = migrate_legacy_keys(read_config_file(path), display_path(path))
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{display_path(path)}: `extends` must be a file path or a list of file paths.")
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, _read_chain(path.parent / parent, (*stack, path)))
    return deep_merge(merged, raw)


def resolve_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    schema_name: str | None = None,
) -> dict:
    """Load, merge, migrate, override and validate a config (precedence in the package docstring).

    path: the config file, or None for the schema's defaults alone.
    overrides: `key.sub=value` strings from the command line (highest precedence).
    values: already-typed values from a script's own flags, by dotted key (just below `overrides`).
    schema_name: the expected schema; by default the `model_type` of the file, else "control".
    """
    source = display_path(Path(path).resolve()) if path else "defaults"
    raw = _read_chain(Path(path)) if path else {}
    file_type = raw.get("model_type")
    if "model_type" in raw and not isinstance(file_type, str):
        raise ConfigError(
            f"{source}: key 'model_type' must be a string, got {type_name(file_type)} {file_type!r}.",
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
                raise unknown_key_error(key, schema, "script flag")
            check_values(value, "script flag", key)
            set_dotted(cfg, key, value)
    cfg = apply_overrides(cfg, overrides, schema)
    cfg = whole_numbers_to_int(cfg, schema)
    cli_keys = [k for k in (override_key(text) for text in overrides) if k]
    validate_config(cfg, schema, source, [*cli_keys, *(values or {})])
    check_relations(cfg, name, source)
    return cfg


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
