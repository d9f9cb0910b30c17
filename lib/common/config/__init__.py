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

One module per concept; the names the rest of the code uses are re-exported here:
    paths       the repository root, paths from a config, which files are experiment configs
    schema      loading a schema, its defaults and keys
    files       reading one YAML or JSON file safely; the limits every value obeys
    merge       deep_merge and dotted-key access
    legacy      LEGACY_KEYS and the migration of old key names
    validation  validating against the schema; unknown-key and wrong-type messages
    overrides   typed `key=value` overrides, and script flags written as overrides
    loader      the `extends:` chain and resolve_config / resolve_cli
    cli         the command line below (`__main__` runs it)

Usage (for shell scripts, so nothing parses YAML in bash):
    make validate                                       # every config under configs/
    python -m lib.common.config show FILE [key=value ...]      # the resolved config as JSON
    python -m lib.common.config get FILE KEY [key=value ...]   # one value (strings raw, the rest as JSON)
    python -m lib.common.config validate [PATH ...]            # files or folders (recursive), default configs/
                                                        # (configs/accelerate/ is skipped: OTHER_TOOL_DIRS)
"""

from __future__ import annotations

from lib.common.config.cli import main
from lib.common.config.files import JSON_TYPE_NAMES, MAX_DEPTH, MAX_VALUES, check_values, read_config_file
from lib.common.config.legacy import LEGACY_KEYS, migrate_legacy_keys
from lib.common.config.loader import resolve_cli, resolve_config
from lib.common.config.merge import deep_merge, get_value
from lib.common.config.overrides import (
    OVERRIDE_PATTERN,
    apply_overrides,
    cli_overrides,
    coerce_value,
    override_text,
    parse_override,
    split_overrides,
    whole_number,
    whole_numbers_to_int,
)
from lib.common.config.paths import (
    CONFIG_SUFFIXES,
    OTHER_TOOL_DIRS,
    ROOT,
    find_configs,
    other_tool_config,
    repo_path,
    skipped_configs,
    user_cache_dir,
)
from lib.common.config.schema import (
    DEFAULT_SCHEMA,
    SCHEMA_DIR,
    available_schemas,
    load_schema,
    schema_defaults,
    schema_keys,
    schema_node,
)
from lib.common.config.validation import closest_key, validate_config

__all__ = [
    "CONFIG_SUFFIXES",
    "DEFAULT_SCHEMA",
    "JSON_TYPE_NAMES",
    "LEGACY_KEYS",
    "MAX_DEPTH",
    "MAX_VALUES",
    "OTHER_TOOL_DIRS",
    "OVERRIDE_PATTERN",
    "ROOT",
    "SCHEMA_DIR",
    "apply_overrides",
    "available_schemas",
    "check_values",
    "cli_overrides",
    "closest_key",
    "coerce_value",
    "deep_merge",
    "find_configs",
    "get_value",
    "load_schema",
    "main",
    "migrate_legacy_keys",
    "other_tool_config",
    "override_text",
    "parse_override",
    "read_config_file",
    "repo_path",
    "user_cache_dir",
    "resolve_cli",
    "resolve_config",
    "schema_defaults",
    "schema_keys",
    "schema_node",
    "skipped_configs",
    "split_overrides",
    "validate_config",
    "whole_number",
    "whole_numbers_to_int",
]
