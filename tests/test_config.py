"""The config loader: precedence, inheritance, validation messages, migration, typed overrides, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT, run_python

from lib.common.config import (
    available_schemas,
    find_configs,
    load_schema,
    resolve_config,
    schema_keys,
    schema_node,
)
from lib.common.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- precedence and inheritance


def test_precedence_defaults_parent_file_flags_cli(tmp_path):
    write(tmp_path / "base.yaml", "seed: 1\ndevice:\n  precision: bf16\n  type: cuda\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ndevice:\n  type: cpu\n")
    cfg = resolve_config(child)
    assert cfg["seed"] == 1  # parent beats the schema default (42)
    assert cfg["device"]["precision"] == "bf16"  # kept from the parent: sections merge key by key
    assert cfg["device"]["type"] == "cpu"  # the file beats its parent
    assert cfg["device"]["unsloth"] == "auto"  # schema default fills what nobody set
    cfg = resolve_config(child, ["seed=7"], values={"seed": 5, "device.type": "mps"})
    assert cfg["seed"] == 7  # key=value beats the script's flags
    assert cfg["device"]["type"] == "mps"  # a script flag beats the file


def test_multiple_parents_merge_in_order(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\ndevice: {type: cuda}\n")
    write(tmp_path / "b.json", json.dumps({"seed": 2}))
    child = write(tmp_path / "c.yaml", "extends: [a.yaml, b.json]\n")
    cfg = resolve_config(child)
    assert (cfg["seed"], cfg["device"]["type"]) == (2, "cuda")


def test_extends_is_relative_to_the_file_and_profiles_are_usable(tmp_path):
    profile = ROOT / "configs" / "profiles" / "mps.yaml"
    child = write(tmp_path / "exp.yaml", f"extends: {profile}\nseed: 3\n")
    cfg = resolve_config(child)
    assert cfg["device"]["type"] == "mps" and cfg["device"]["mps_low_watermark_ratio"] == 0.0


def test_inheritance_cycle_is_reported_with_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    write(tmp_path / "c.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        resolve_config(tmp_path / "a.yaml")


def test_self_extension_is_a_cycle(tmp_path):
    with pytest.raises(ConfigError, match="cycle"):
        resolve_config(write(tmp_path / "a.yaml", "extends: a.yaml\n"))


def test_no_file_gives_the_schema_defaults():
    cfg = resolve_config(None)
    assert (cfg["model_type"], cfg["seed"], cfg["training_type"]) == ("control", 42, "sft")
    assert cfg["grpo"]["rewards"] == {"format": 1.0, "feasibility": 1.0, "optimality": 2.0, "terminal": 0.5}
    assert cfg["device"] == {
        "type": "auto",
        "force_cpu": False,
        "precision": "auto",
        "mps_high_watermark_ratio": 0.8,
        "mps_low_watermark_ratio": 0.0,
        "unsloth": "auto",
        "vllm": "auto",
    }


# ---------------------------------------------------------------- unknown keys and wrong types


def test_unknown_nested_key_names_path_and_closest(tmp_path):
    cfg = write(tmp_path / "x.yaml", "device:\n  precison: fp32\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(cfg)
    assert "unknown key 'device.precison'" in str(info.value)
    assert "did you mean 'device.precision'" in str(info.value)
    assert "precision" in info.value.fix  # lists the valid keys of that section


def test_unknown_key_in_the_wrong_section_points_to_the_right_one(tmp_path):
    cfg = write(tmp_path / "x.yaml", "force_cpu: true\n")
    with pytest.raises(ConfigError, match="did you mean 'device.force_cpu'"):
        resolve_config(cfg)


def test_unknown_override_key_fails_with_closest():
    with pytest.raises(ConfigError, match="unknown key 'sed'; did you mean 'seed'"):
        resolve_config(None, ["sed=3"])


def test_unknown_key_inherited_from_a_parent_still_fails(tmp_path):
    write(tmp_path / "p.yaml", "devise: {type: cpu}\n")
    with pytest.raises(ConfigError, match="did you mean 'device'"):
        resolve_config(write(tmp_path / "c.yaml", "extends: p.yaml\n"))


def test_wrong_type_in_file_names_key_expected_and_value(tmp_path):
    cfg = write(tmp_path / "x.yaml", "seed: fast\n")
    with pytest.raises(ConfigError, match=r"key 'seed' expects integer, got string 'fast'"):
        resolve_config(cfg)


def test_wrong_type_in_override_names_key_expected_and_value():
    with pytest.raises(ConfigError, match=r"key 'device.force_cpu' expects boolean, got 'maybe'"):
        resolve_config(None, ["device.force_cpu=maybe"])


def test_enum_and_range_violations_are_explained():
    with pytest.raises(
        ConfigError, match=r"'device.type' must be one of \"auto\", \"cuda\", \"mps\", \"cpu\""
    ):
        resolve_config(None, ["device.type=gpu"])
    with pytest.raises(ConfigError, match=r"device.mps_high_watermark_ratio.*2"):
        resolve_config(None, ["device.mps_high_watermark_ratio=3.5"])


def test_malformed_override_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        resolve_config(None, ["seed"])
    with pytest.raises(ConfigError, match="invalid YAML at line 2"):
        resolve_config(write(tmp_path / "bad.yaml", "seed: 1\n  device: [\n"))
    with pytest.raises(ConfigError, match="invalid JSON"):
        resolve_config(write(tmp_path / "bad.json", "{seed: 1"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        resolve_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="YAML or JSON"):
        resolve_config(write(tmp_path / "x.toml", "seed = 1\n"))


def test_unknown_model_type_lists_the_schemas(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_config(write(tmp_path / "x.yaml", "model_type: gpt\n"))
    assert "blt" in info.value.fix and "control" in info.value.fix


# ---------------------------------------------------------------- typed overrides


def test_overrides_are_typed_by_the_schema():
    cfg = resolve_config(
        None,
        ["seed=3", "device.force_cpu=yes", "device.mps_high_watermark_ratio=1", "device.precision=bf16"],
    )
    assert cfg["seed"] == 3 and isinstance(cfg["seed"], int)
    assert cfg["device"]["force_cpu"] is True
    assert cfg["device"]["mps_high_watermark_ratio"] == 1.0
    assert cfg["device"]["precision"] == "bf16"


def test_override_of_a_string_that_looks_like_a_number_stays_a_string(tmp_path):
    cfg = resolve_config(write(tmp_path / "b.json", '{"model_type": "blt"}'), ["output_dir=2024"])
    assert cfg["output_dir"] == "2024"


# ---------------------------------------------------------------- legacy keys


def test_legacy_keys_are_renamed_and_dropped_with_warnings(tmp_path, caplog):
    old = {
        "model_type": "blt",
        "byte_lm_hidden_size": 64,
        "byte_lm_num_layers": 3,
        "byte_lm_num_heads": 2,
        "byte_lm_dropout": 0.2,
        "memory_reserve_pct": 20,
    }
    with caplog.at_level(logging.WARNING):
        cfg = resolve_config(write(tmp_path / "old.json", json.dumps(old)))
    assert (cfg["hidden_size"], cfg["num_layers"], cfg["num_heads"], cfg["dropout"]) == (64, 3, 2, 0.2)
    assert "memory_reserve_pct" not in cfg and "byte_lm_hidden_size" not in cfg
    text = caplog.text
    assert "renamed legacy key 'byte_lm_hidden_size' to 'hidden_size'" in text
    assert "dropped legacy key 'memory_reserve_pct'" in text


def test_legacy_override_is_migrated_too(tmp_path, caplog):
    blt = write(tmp_path / "b.json", '{"model_type": "blt"}')
    with caplog.at_level(logging.WARNING):
        cfg = resolve_config(blt, ["byte_lm_num_heads=8", "memory_reserve_pct=10"])
    assert cfg["num_heads"] == 8
    assert "renamed legacy key 'byte_lm_num_heads'" in caplog.text


def test_legacy_and_new_name_together_is_an_error(tmp_path):
    both = write(tmp_path / "b.json", '{"model_type": "blt", "hidden_size": 1, "byte_lm_hidden_size": 2}')
    with pytest.raises(ConfigError, match="both the legacy key 'byte_lm_hidden_size' and its new name"):
        resolve_config(both)


def test_blt_schema_defaults_are_the_original_values():
    cfg = resolve_config(None, schema_name="blt")
    original = {
        "hidden_size": 128,
        "num_layers": 2,
        "num_heads": 4,
        "dropout": 0.1,
        "block_size": 128,
        "batch_size": 16,
        "max_steps": 5000,
        "eval_steps": 250,
        "save_steps": 500,
        "learning_rate": 5e-5,
        "warmup_steps": 250,
        "gradient_accumulation_steps": 2,
        "weight_decay": 0.01,
        "mixed_precision": False,
        "log_steps": 50,
        "entropy_threshold": 0.5,
        "force_cpu": False,
    }
    assert {k: cfg[k] for k in original} == original


def test_expected_schema_mismatch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model_type is 'blt' but this command expects 'control'"):
        resolve_config(write(tmp_path / "b.json", '{"model_type": "blt"}'), schema_name="control")


# ---------------------------------------------------------------- schemas and shipped configs


@pytest.mark.parametrize("name", available_schemas())
def test_schema_is_valid_strict_and_documented(name):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    for key in schema_keys(schema):
        node = schema_node(schema, key)
        assert node.get("description"), f"{name}: '{key}' has no description"
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{name}: '{key}' accepts unknown keys"
    assert schema.get("additionalProperties") is False


def test_every_shipped_config_validates():
    files = find_configs([ROOT / "configs"])
    assert len(files) >= 3
    for file in files:
        resolve_config(file)


# ---------------------------------------------------------------- command line


def test_cli_show_merges_an_override():
    result = run_python(["-m", "lib.common.config", "show", "configs/profiles/cpu.yaml", "seed=3"])
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["seed"] == 3 and cfg["device"]["type"] == "cpu"


def test_cli_misspelled_key_exits_2_with_the_closest_name_and_no_traceback():
    result = run_python(
        ["-m", "lib.common.config", "show", "configs/profiles/cpu.yaml", "device.precison=fp32"]
    )
    assert result.returncode == 2
    assert "did you mean 'device.precision'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_get_prints_plain_values_for_shell_scripts(capsys):
    from lib.common.config import main

    assert main(["get", "configs/profiles/mps.yaml", "device.type"]) == 0
    assert main(["get", "configs/profiles/mps.yaml", "device.force_cpu"]) == 0
    assert main(["get", "configs/profiles/mps.yaml", "device", "seed=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["mps", "false"]  # strings raw, the rest as JSON
    assert json.loads(lines[2])["mps_high_watermark_ratio"] == 0.8


def test_cli_legacy_key_warns_and_migrates(tmp_path):
    old = write(tmp_path / "old.json", '{"model_type": "blt", "byte_lm_hidden_size": 96}')
    result = run_python(["-m", "lib.common.config", "get", str(old), "hidden_size"])
    assert result.returncode == 0 and result.stdout.strip() == "96"
    assert "renamed legacy key 'byte_lm_hidden_size' to 'hidden_size'" in result.stderr


def test_cli_validate_counts_and_fails_on_a_bad_file(tmp_path):
    good = run_python(["-m", "lib.common.config", "validate", "configs"])
    assert good.returncode == 0
    count = len(find_configs([ROOT / "configs"]))
    assert f"validated {count} config(s): {count} ok, 0 failed" in good.stdout
    write(tmp_path / "ok.yaml", "seed: 1\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "bad.yaml", "sed: 1\n")  # found recursively
    bad = run_python(["-m", "lib.common.config", "validate", str(tmp_path)])
    assert bad.returncode == 2
    assert "validated 2 config(s): 1 ok, 1 failed" in bad.stdout
    assert "did you mean 'seed'" in bad.stdout
