"""Where configs live: the repository root, paths from a config, and which files are experiment configs.

A relative path in a config is taken from the repository root (`repo_path`). `find_configs` walks folders for
config files, leaving out other tools' configs (OTHER_TOOL_DIRS); `skipped_configs` says which and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # lib/common/config/paths.py -> the repository root
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

# Folders that hold another tool's config files, not experiment configs: `find_configs` does not walk
# into a folder with one of these names (nor takes a file inside one), and `validate` lists what it
# skipped and why. The name is the rule, wherever the folder sits, so configs/accelerate/ and a copy of
# it elsewhere behave the same; each tool's own test checks its files (tests/llm/test_accelerate.py).
OTHER_TOOL_DIRS: dict[str, str] = {
    "accelerate": "accelerate launch configs (accelerate's format; use with --config_file)",
}


def user_cache_dir() -> Path:
    """What the toolkit caches outside the repository (converted models, from-scratch initial weights,
    fitted baselines): $CONTROL_LLM_CACHE, else ~/.cache/control-llm."""
    return Path(os.environ.get("CONTROL_LLM_CACHE", Path.home() / ".cache" / "control-llm"))


def repo_path(path: str | Path) -> Path:
    """A path from a config: absolute as given, relative ones from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def display_path(path: Path) -> str:
    """`path` relative to the repository root for messages, or as given when it lies outside."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


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
