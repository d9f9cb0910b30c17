"""Legacy key names: one table, LEGACY_KEYS, renames (or drops) them with a warning before anything else sees
them, in files and in `key=value` overrides alike.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

from lib.common.config.merge import get_dotted, set_dotted
from lib.common.errors import ConfigError

# the package's name, so the warnings name `lib.common.config` wherever in it they are raised
log = logging.getLogger(__package__)

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


def migrate_legacy_keys(raw: dict, source: str) -> dict:
    """Rename or drop the keys in LEGACY_KEYS (top-level or dotted), warning once for each."""
    out = copy.deepcopy(raw)
    for old, new in LEGACY_KEYS.items():
        parent_path, _, leaf = old.rpartition(".")
        parent = get_dotted(out, parent_path) if parent_path else out
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        if new is not None and new.startswith(old + ".") and isinstance(parent[leaf], Mapping):
            continue  # a scalar that became a section, already written as the section
        value = parent.pop(leaf)
        if new is None:
            log.warning("%s: dropped legacy key '%s' (no longer used)", source, old)
            continue
        if get_dotted(out, new) is not None:
            raise ConfigError(
                f"{source}: both the legacy key '{old}' and its new name '{new}' are set.",
                fix=f"keep only '{new}'.",
            )
        set_dotted(out, new, value)
        log.warning("%s: renamed legacy key '%s' to '%s'; please update the file", source, old, new)
    return out


def migrate_override_key(key: str, source: str, raw: str = "", warn: bool = True) -> str | None:
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
