"""The config loader: precedence, inheritance, validation messages, migration, typed overrides, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import pytest
from helpers import ROOT, run_python

from lib.common.config import (
    available_schemas,
    find_configs,
    get_value,
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
    assert cfg["grpo"]["rewards"] == {
        "format": 1.0,
        "feasibility": 1.0,
        "optimality": 2.0,
        "terminal": 0.5,
        "log_gap": 0.0,
    }
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
    cfg = write(tmp_path / "x.yaml", "precision: fp32\n")
    with pytest.raises(ConfigError, match="did you mean 'device.precision'"):
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


def test_a_list_override_in_yaml_flow_style_is_told_the_json_form():
    with pytest.raises(ConfigError) as caught:
        resolve_config(None, ["pipeline.phases=[data, sft]"])
    assert """'pipeline.phases=["a", "b"]'""" in caught.value.fix
    assert resolve_config(None, ['pipeline.phases=["data", "sft"]'])["pipeline"]["phases"] == ["data", "sft"]


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


# ---------------------------------------------------------------- what a config may hold (exit 2, never a traceback)


def show(capsys, *argv: str) -> tuple[int, str]:
    """`python -m lib.common.config show ...` in this process: (exit code, stderr)."""
    from lib.common.config import main
    from lib.common.errors import run_cli

    code = run_cli(main, ["show", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def test_a_file_that_is_not_utf8_exits_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 3  # café\n".encode("latin-1"))
    code, err = show(capsys, str(bad))
    assert (
        code == 2 and f"{bad}: not UTF-8 text (byte 0xe9 at line 1" in err and "save the file as UTF-8" in err
    )
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"seed": 4}')  # a UTF-8 byte-order mark is still UTF-8
    assert resolve_config(bom)["seed"] == 4


@pytest.mark.parametrize("key", ["on", "yes", "off", "1", "~", "null", "true", "3.5"])
def test_yaml_keys_that_are_not_strings_exit_2_saying_to_quote_them(tmp_path, capsys, key):
    code, err = show(capsys, str(write(tmp_path / "k.yaml", f"seed: 1\ndevice:\n  {key}: cpu\n")))
    assert code == 2 and f"(line 3, column 3): the key '{key}' is not a name" in err
    assert f"quote the key ('{key}':)" in err


def test_quoted_yaml_keys_are_plain_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'device.on'"):
        resolve_config(write(tmp_path / "q.yaml", "device:\n  'on': cpu\n"))


@pytest.mark.parametrize("depth", [33, 5000])
def test_deep_nesting_exits_2_naming_the_key_or_place(tmp_path, capsys, depth):
    deep = "[" * depth + "]" * depth
    code, err = show(
        capsys, str(write(tmp_path / "d.yaml", f"model:\n  lora:\n    target_modules: {deep}\n"))
    )
    assert code == 2 and "key 'model.lora.target_modules': nested more than 32 levels deep" in err
    block = (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(depth if depth < 100 else 100)) + "  " * 100 + "x: 1\n"
    )
    code, err = show(capsys, str(write(tmp_path / "b.yaml", block)))
    assert code == 2 and "key 'k0.k1.k2.k3.k4.k5.…': nested more than 32 levels deep" in err
    code, err = show(capsys, str(write(tmp_path / "d.json", f'{{"seed": {deep}}}')))
    assert code == 2 and f"{tmp_path / 'd.json'} (line 1, column " in err and "key 'seed': nested" in err
    for override in (f"model.lora.target_modules={deep}", f"model={'{' * depth}"):
        code, err = show(capsys, "configs/smollm2/cpu.yaml", override)
        assert code == 2 and f"key '{override.partition('=')[0]}'" in err and "nested more than 32" in err


def test_nan_and_infinity_are_refused_everywhere(tmp_path, capsys):
    for text, key in (
        ("sft:\n  learning_rate: .nan\n", "sft.learning_rate"),
        ("device:\n  mps_high_watermark_ratio: -.inf\n", "device.mps_high_watermark_ratio"),
    ):
        code, err = show(capsys, str(write(tmp_path / "n.yaml", text)))
        assert code == 2 and f"key '{key}' is " in err and "not a finite number" in err
    blt = write(tmp_path / "n.json", '{"model_type": "blt", "analysis_thresholds": [1, Infinity]}')
    code, err = show(capsys, str(blt))
    assert code == 2 and "key 'analysis_thresholds[1]' is inf, not a finite number" in err
    for override in ("sft.learning_rate=nan", "sft.learning_rate=inf", "grpo.beta=-inf", "grpo.beta=1e999"):
        code, err = show(capsys, "configs/smollm2/cpu.yaml", override)
        assert code == 2 and f"command line: key '{override.partition('=')[0]}' is " in err
    code, err = show(capsys, "configs/blt/entropy_cpu.json", "analysis_thresholds=[1, NaN]")
    assert code == 2 and "key 'analysis_thresholds[1]' is nan" in err


def test_a_whole_float_for_an_integer_key_is_that_integer_from_files_and_overrides(tmp_path, capsys):
    file = write(tmp_path / "f.yaml", "generate:\n  train_samples: 200.0\nseed: 3.0\n")
    cfg = resolve_config(file)
    assert cfg["generate"]["train_samples"] == 200 and type(cfg["generate"]["train_samples"]) is int
    assert type(cfg["seed"]) is int
    cfg = resolve_config(None, ["generate.train_samples=200.0", "seed=2e3"])
    assert (cfg["generate"]["train_samples"], cfg["seed"]) == (200, 2000) and type(cfg["seed"]) is int
    assert type(resolve_config(None, ["sft.learning_rate=1"])["sft"]["learning_rate"]) in (int, float)
    code, err = show(capsys, str(write(tmp_path / "h.yaml", "generate:\n  train_samples: 200.5\n")))
    assert code == 2 and "key 'generate.train_samples' expects integer or null, got number 200.5" in err
    code, err = show(capsys, "configs/smollm2/cpu.yaml", "generate.train_samples=200.5")
    assert code == 2 and "key 'generate.train_samples' expects integer or null, got '200.5'" in err
    out = json.loads(run_python(["-m", "lib.common.config", "show", str(file)]).stdout)
    assert out["generate"]["train_samples"] == 200  # what a script reads: 200, not 200.0


def test_a_section_given_as_a_mapping_merges_into_what_is_below_it(tmp_path, capsys):
    """`model={}` (or a part of the section) keeps the other keys: the trainer once got a model without
    `name`. Files have always merged a section key by key; overrides now do too."""
    defaults = resolve_config(None)
    assert resolve_config(None, ["model={}"])["model"] == defaults["model"]
    cfg = resolve_config(None, ['model={"name": "x", "lora": {"rank": 4}}'])
    assert cfg["model"]["name"] == "x" and cfg["model"]["lora"]["rank"] == 4
    assert cfg["model"]["lora"]["target_modules"] == defaults["model"]["lora"]["target_modules"]
    assert resolve_config(None, ['grpo.rewards={"format": 2}'])["grpo"]["rewards"] == {
        **defaults["grpo"]["rewards"],
        "format": 2,
    }
    assert resolve_config(write(tmp_path / "e.yaml", "model: {}\n"))["model"] == defaults["model"]
    code, err = show(capsys, "configs/smollm2/cpu.yaml", 'model={"nme": "x"}')
    assert code == 2 and "unknown key 'model.nme'; did you mean 'model.name'?" in err
    scalar = write(tmp_path / "s.yaml", "model: small\n")  # a section the file gave as a scalar
    code, err = show(capsys, str(scalar), "model.name=x")
    assert code == 2 and "cannot set 'model.name': 'model' is string 'small'" in err
    required = schema_node(load_schema("control"), "model")["required"]
    assert {"name", "lora"} <= set(required)  # a missing key would be named, not a KeyError in a trainer


def test_run_ids_are_plain_names_defined_once(capsys):
    shared = json.loads((ROOT / "schemas/shared/run_id.json").read_text())
    control, blt = (
        schema_node(load_schema("control"), "run.run_id"),
        schema_node(load_schema("blt"), "run_id"),
    )
    assert control["pattern"] == blt["pattern"] == shared["pattern"]
    raw = (ROOT / "schemas/control.schema.json").read_text() + (ROOT / "schemas/blt.schema.json").read_text()
    assert shared["pattern"] not in raw  # defined in schemas/shared/run_id.json only
    for config, key in (
        ("configs/smollm2/cpu.yaml", "run.run_id"),
        ("configs/blt/entropy_cpu.json", "run_id"),
    ):
        for bad in ("..", ".", "/abs/folder", "a/b", "-x", ".hidden", "x" * 129, ""):
            code, err = show(capsys, config, f"{key}={bad}")
            rule = "is too long" if len(bad) > 128 else "must match"
            assert code == 2 and f"command line: key '{key}'" in err and rule in err, bad
            assert "never a path" in err
        assert get_value(resolve_config(config, [f"{key}=ok-1.2_b"]), key) == "ok-1.2_b"


def test_a_key_given_twice_exits_2_naming_it(tmp_path, capsys):
    code, err = show(
        capsys, str(write(tmp_path / "d.yaml", "seed: 1\nsft:\n  max_steps: 1\n  max_steps: 2\n"))
    )
    assert code == 2 and "(line 4, column 3): the key 'max_steps' is given twice" in err and "keep one" in err
    code, err = show(capsys, str(write(tmp_path / "d.json", '{"model_type": "blt", "seed": 1, "seed": 2}')))
    assert code == 2 and "the key 'seed' is given twice" in err
    code, err = show(capsys, "configs/smollm2/cpu.yaml", 'model={"name": "a", "name": "b"}')
    assert code == 2 and "key 'model': the key 'name' is given twice" in err
    anchors = "base: &b\n  rank: 4\n"  # a YAML merge key (<<) is not a duplicate
    with pytest.raises(ConfigError, match="unknown key 'base'"):
        resolve_config(write(tmp_path / "m.yaml", anchors + "model:\n  lora:\n    <<: *b\n    rank: 8\n"))


def test_yaml_aliases_that_expand_to_millions_of_values_are_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="more than 100000 values"):
        resolve_config(write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n"))


def test_a_list_key_given_another_shape_is_refused(tmp_path, capsys):
    for value in ("{}", '{"q_proj": 1}', '"q_proj"', "[[1]]"):
        code, err = show(capsys, "configs/smollm2/cpu.yaml", f"model.lora.target_modules={value}")
        assert code == 2 and "key 'model.lora.target_modules" in err, value
    assert resolve_config(None, ["model.lora.target_modules=q_proj, v_proj"])["model"]["lora"][
        "target_modules"
    ] == [
        "q_proj",
        "v_proj",
    ]
    code, err = show(capsys, str(write(tmp_path / "l.yaml", "model:\n  lora:\n    target_modules: {a: 1}\n")))
    assert code == 2 and "key 'model.lora.target_modules' expects array, got object" in err


def test_validate_reports_each_unreadable_file_and_goes_on(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("seed: 1 # é\n".encode("latin-1"))
    write(tmp_path / "on.yaml", "on: 1\n")
    write(tmp_path / "deep.json", '{"seed": ' + "[" * 5000 + "]" * 5000 + "}")
    write(tmp_path / "nan.yaml", "sft:\n  learning_rate: .nan\n")
    write(tmp_path / "dup.yaml", "seed: 1\nseed: 2\n")
    write(tmp_path / "ok.yaml", "seed: 1\n")
    result = run_python(["-m", "lib.common.config", "validate", str(tmp_path)])
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "validated 6 config(s): 1 ok, 5 failed" in result.stdout
    assert result.stdout.count("FAILED  ") == 5 and "ok      " in result.stdout


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
    }
    assert {k: cfg[k] for k in original} == original
    assert cfg["device"]["force_cpu"] is False  # the original force_cpu, in the shared device section


# The original BLT entropy-model config as its user wrote it (configs/blt/entropy_mps.json's seed): flat keys,
# the byte_lm_* names, memory_reserve_pct, and the device as a string next to force_cpu and the watermarks.
ORIGINAL_ENTROPY_MPS = {
    "model_type": "blt", "seed": 42, "device": "mps", "byte_lm_hidden_size": 128, "byte_lm_num_layers": 2,
    "byte_lm_num_heads": 4, "byte_lm_dropout": 0.1, "block_size": 128, "batch_size": 16, "max_steps": 5000,
    "eval_steps": 250, "save_steps": 500, "learning_rate": 5e-05, "warmup_steps": 250,
    "gradient_accumulation_steps": 2, "weight_decay": 0.01, "mixed_precision": False, "output_dir": "models/blt",
    "train_data_dir": "data/blt_corpus/train", "eval_data_dir": "data/blt_corpus/eval",
    "cache_dir": "./data/cache/byte_lm", "num_workers": 0, "log_steps": 50, "entropy_threshold": 0.5,
    "force_cpu": False, "memory_reserve_pct": 20, "mps_high_watermark_ratio": 0.8, "mps_low_watermark_ratio": 0.0,
}  # fmt: skip


def test_the_original_blt_config_resolves_like_the_shipped_one(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        old = resolve_config(write(tmp_path / "entropy_mps.json", json.dumps(ORIGINAL_ENTROPY_MPS)))
    shipped = resolve_config(ROOT / "configs" / "blt" / "entropy_mps.json")
    from lib.common.device import settings_from_config

    assert settings_from_config(old) == settings_from_config(shipped)  # the same device decision
    assert old["device"]["type"] == "mps" and old["device"]["mps_high_watermark_ratio"] == 0.8
    assert {k: v for k, v in old.items() if k != "device"} == {
        k: v for k, v in shipped.items() if k != "device"
    }
    for key in ("force_cpu", "mps_high_watermark_ratio", "mps_low_watermark_ratio"):
        assert f"renamed legacy key '{key}' to 'device.{key}'" in caplog.text
    assert "renamed legacy key 'device' to 'device.type'" in caplog.text


def test_legacy_flat_device_keys_as_overrides():
    cfg = resolve_config(
        ROOT / "configs" / "blt" / "entropy_cpu.json",
        ["device=cuda", "force_cpu=true", "mps_low_watermark_ratio=0.1"],
    )
    assert (cfg["device"]["type"], cfg["device"]["force_cpu"], cfg["device"]["mps_low_watermark_ratio"]) == (
        "cuda", True, 0.1,
    )  # fmt: skip
    cfg = resolve_config(None, ['device={"type": "cpu"}'])  # a whole section is the new shape already
    assert cfg["device"]["type"] == "cpu"


@pytest.mark.parametrize("name", ["cpu", "mps", "cuda"])
def test_blt_configs_extend_the_device_profiles_and_state_only_what_differs(name):
    shipped = ROOT / "configs" / "blt" / f"entropy_{name}.json"
    raw = json.loads(shipped.read_text())
    assert raw["extends"] == f"../profiles/{name}.yaml"
    assert set(raw) <= {"model_type", "extends", "num_workers", "mixed_precision"}  # no repeated defaults
    cfg = resolve_config(shipped)
    profile = resolve_config(ROOT / "configs" / "profiles" / f"{name}.yaml")
    assert cfg["model_type"] == "blt" and cfg["device"] == profile["device"]


def test_control_and_blt_share_one_device_section(tmp_path):
    assert schema_node(load_schema("control"), "device") is not None
    shared = {k: v for k, v in load_schema("control")["properties"]["device"].items() if k != "description"}
    assert shared == {
        k: v for k, v in load_schema("blt")["properties"]["device"].items() if k != "description"
    }
    mine = write(
        tmp_path / "b.yaml", f"model_type: blt\nextends: {ROOT / 'configs/profiles/mps.yaml'}\nmax_steps: 9\n"
    )
    cfg = resolve_config(mine, ["device.mps_high_watermark_ratio=1.0"])
    assert (cfg["device"]["type"], cfg["device"]["mps_high_watermark_ratio"], cfg["max_steps"]) == (
        "mps",
        1.0,
        9,
    )


def test_pipeline_sections_of_old_configs_move_to_generate_and_eval(tmp_path, caplog):
    old = write(
        tmp_path / "old.yaml",
        "pipeline:\n  data: {systems: [pendulum], workers: 3}\n"
        "  eval: {batch_size: 4, eval_mode: mpc, include_base: false, save_plots: false}\n",
    )
    with caplog.at_level(logging.WARNING):
        cfg = resolve_config(old, ["pipeline.eval.num_samples=7", "pipeline.data.decimals=3"])
    assert (cfg["generate"]["systems"], cfg["generate"]["workers"], cfg["generate"]["decimals"]) == (
        ["pendulum"],
        3,
        3,
    )
    assert (cfg["eval"]["batch_size"], cfg["eval"]["mode"], cfg["eval"]["num_samples"]) == (4, "mpc", 7)
    assert (cfg["pipeline"]["include_base"], cfg["pipeline"]["save_plots"]) == (False, False)
    assert "renamed legacy key 'pipeline.eval.num_samples' to 'eval.num_samples'" in caplog.text


def test_flags_are_key_value_shorthands_and_errors_name_the_flag():
    from lib.common.config import cli_overrides, resolve_cli

    flags = {"eval.batch_size": ("--batch-size", 4), "eval.labels": ("--labels", ["a", "b"]),
             "eval.save_plots": ("--save-plots", True), "eval.mode": ("--eval-mode", None)}  # fmt: skip
    assert cli_overrides(flags) == ["eval.batch_size=4", 'eval.labels=["a", "b"]', "eval.save_plots=true"]
    cfg = resolve_cli(None, flags, ["eval.batch_size=5"])
    assert (cfg["eval"]["batch_size"], cfg["eval"]["labels"], cfg["eval"]["mode"]) == (
        5,
        ["a", "b"],
        "control",
    )
    with pytest.raises(ConfigError, match=r"^--batch-size 0: .*'eval.batch_size'"):
        resolve_cli(None, {"eval.batch_size": ("--batch-size", 0)})


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
