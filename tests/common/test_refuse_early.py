"""Refuse at config time what would fail late, and names that are names (issue 21, rows 8 and 9): each of
these reached a traceback after a model loaded, or read a file outside its folder, before."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import call_script, make_dataset

from lib.common.config import load_schema, resolve_config, schema_node
from lib.common.config.loader import MAX_EXTENDS_DEPTH
from lib.common.errors import ConfigError

CONFIG = "configs/scratch/demo_cpu.yaml"


def refused(*overrides: str, path: str | Path = CONFIG) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        resolve_config(path, list(overrides))
    return err.value


def test_model_type_is_a_name_not_a_path(tmp_path):
    # the schema it names was read from outside schemas/ before
    (tmp_path / "evil.schema.json").write_text('{"type": "object"}')
    relative = Path("../" * 12) / tmp_path.relative_to("/") / "evil"
    config = tmp_path / "c.yaml"
    config.write_text(f"model_type: {relative}\n")
    err = refused(path=config)
    assert "no schema for model_type" in str(err) and "blt, control" in str(err)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc", "a/b", "..", ".hidden", "x" * 129])
def test_a_dataset_name_is_a_plain_name_in_every_config(name):
    err = refused(f"data.dataset_name={name}")
    assert "data.dataset_name" in str(err) and "never a path" in err.fix


def test_dataset_names_are_checked_where_a_script_reads_one(tmp_path, capsys):
    make_dataset(tmp_path / "inside", "ts", ["double_integrator"], 4, 2)
    datasets = tmp_path / "outside" / "datasets"
    datasets.mkdir(parents=True)  # the folder the flags below point at, whose neighbour holds a real dataset
    escape = "../../inside/datasets/ts"
    for flag in ("--validate", "--preview"):
        code = call_script("generate_data", [flag, escape, "--output-dir", str(datasets)])
        err = capsys.readouterr().err
        assert code == 2 and f"{flag} '{escape}'" in err and "never a path" in err, flag
    argv = ["--model-path", "embedded", "--dataset", "../ts", "--output-dir", str(tmp_path / "out")]
    code = call_script("main_eval", argv)
    err = capsys.readouterr().err
    assert code == 2 and "data.dataset_name" in err and "Traceback" not in err


def integer_keys(node: dict, path: str = ""):
    """(dotted key, schema node) of every integer key under node."""
    types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    if "integer" in types:
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from integer_keys(child, f"{path}.{key}".lstrip("."))


def test_integer_keys_have_upper_bounds():
    err = refused("seed=99999999999999999999")  # a trainer traceback after 51 s before
    assert "seed" in str(err) and "maximum of 4294967295" in str(err)
    for schema in ("control", "blt"):
        unbounded = [path for path, node in integer_keys(load_schema(schema)) if "maximum" not in node]
        assert not unbounded, f"{schema}: integer keys without a maximum: {unbounded}"
    assert schema_node(load_schema("blt"), "block_size")["maximum"] < 100_000


def test_a_grpo_batch_that_does_not_hold_whole_groups_is_refused_before_any_model_loads(monkeypatch):
    err = refused("grpo.per_device_train_batch_size=6", "grpo.num_generations=4")
    assert "6 x 1 x 1 = 6" in str(err) and "grpo.num_generations = 4" in str(err)
    assert resolve_config(CONFIG, ["grpo.per_device_train_batch_size=8", "grpo.num_generations=4"])
    # torchrun / accelerate tell each process how many there are: 6 x 2 holds three groups of 4
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_config(CONFIG, ["grpo.per_device_train_batch_size=6", "grpo.num_generations=4"])


def test_a_pipeline_of_no_phases_is_refused():
    assert "should be non-empty" in str(refused("pipeline.phases=[]"))
    assert "non-unique" in str(refused('pipeline.phases=["data","data"]'))


def test_an_extends_chain_of_1500_files_is_refused_not_a_recursion_error(tmp_path):
    (tmp_path / "c0.yaml").write_text("seed: 1\n")
    for i in range(1, 1500):
        (tmp_path / f"c{i}.yaml").write_text(f"extends: c{i - 1}.yaml\n")
    err = refused(path=tmp_path / "c1499.yaml")
    assert f"more than {MAX_EXTENDS_DEPTH} files deep" in str(err)
    assert resolve_config(tmp_path / f"c{MAX_EXTENDS_DEPTH - 1}.yaml")["seed"] == 1


def test_bench_tokens_refuses_a_negative_record_count(capsys):
    code = call_script("bench/tokens", ["--records", "-1"])
    assert code == 2 and "--records" in capsys.readouterr().err
