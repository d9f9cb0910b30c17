"""The shipped configs (docs/configs.md, "Shipped configs"): each complete within one hop (at most one parent,
a device profile that extends nothing), each opening with the command that runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from lib.common.config import OTHER_TOOL_DIRS

PROFILES = ROOT / "configs" / "profiles"
CONFIGS = sorted(
    path
    for path in (ROOT / "configs").rglob("*")
    if path.suffix in (".yaml", ".yml", ".json") and path.parent.name not in OTHER_TOOL_DIRS
)
COMMAND = re.compile(r"^#\s+(make |python |sbatch )", re.MULTILINE)


def raw(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 10 and any(p.parent == PROFILES for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_config_extends_at_most_one_device_profile(path):
    parent = raw(path).get("extends")
    if path.parent == PROFILES:
        assert parent is None, "a device profile extends nothing"
        return
    if parent is None:
        return
    assert isinstance(parent, str), f"{path.name}: extends a list; state the other parent's keys instead"
    assert (path.parent / parent).resolve().parent == PROFILES, f"{path.name} extends {parent}, not a profile"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.suffix != ".json"], ids=lambda p: p.name)
def test_a_config_opens_with_the_command_that_runs_it(path):
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("#") and COMMAND.search(header), path
