"""Reading one config file (YAML or JSON) safely, and the limits every config value obeys.

What a config may hold, wherever it comes from (a file, a parent, a `key=value` override), so that bad input
exits 2 with the key and the fix instead of reaching a script: UTF-8 text; string keys, each once per mapping
(YAML 1.1 reads unquoted `on`, `yes`, `1`, `~` as a boolean, number or null); at most MAX_DEPTH levels of
nesting; finite numbers only (no NaN or infinity); at most MAX_VALUES values (YAML aliases can make a small
file expand to billions).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lib.common.config.paths import CONFIG_SUFFIXES
from lib.common.errors import ConfigError

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


def type_name(value: Any) -> str:
    """The JSON name of a value's type ("integer", "object", ...), for messages."""
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


class Refused(Exception):
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
        raise Refused(where + message, fix, line=mark.line + 1, column=mark.column + 1)

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
                raise Refused(
                    f"the key '{text}' is not a name: YAML 1.1 reads it as the {type_name(key)} {key!r} "
                    "(unquoted on/off/yes/no/true/false are booleans, numbers are numbers, ~ is null)",
                    fix=f"quote the key ('{text}':) or use the key the schema names.",
                    **where,
                )
            if key in seen:
                raise Refused(
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
            raise Refused(
                f"the key '{key}' is given twice in one object (JSON would keep the last silently)",
                fix=f"keep one '{key}'.",
            )
        out[key] = value
    return out


def load_json(text: str) -> Any:
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
                raise Refused((f"key '{name}': " if name else "") + message, fix, line=line, column=column)
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
        data = load_json(text) if path.suffix == ".json" else yaml.load(text, Loader=_ConfigLoader)
    except Refused as exc:
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
            f"{path}: the top level must be a mapping of keys to values, not {type_name(data)}."
        )
    check_values(data, str(path))
    return data
