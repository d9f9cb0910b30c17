"""Multi-process training: the accelerate configs, the validator leaving them alone, and a real 2-process run.

The 2-process run is `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` of
scripts/main_trainer.py (SFT then GRPO, 2 steps each) with no GPU visible, so accelerate starts two
processes that train over gloo on the CPU (`accelerate launch --cpu --num_processes 2` would start one
process: accelerate's multi-CPU path goes through mpirun). It takes about 20 s on two cores, so it stays
in the fast suite.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import HANG_GUARD_S, ROOT, run_python
from test_training import overrides, workspace  # noqa: F401  (workspace is the shared fixture)

from lib.common.config import OTHER_TOOL_DIRS, find_configs, other_tool_config, skipped_configs

ACCELERATE_DIR = ROOT / "configs" / "accelerate"
SHIPPED = ("ddp", "fsdp", "deepspeed_zero2")


def free_port() -> int:
    # the default 29500 would collide with any other job on this machine (another test run, a user's)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_only_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # no GPU: each rank trains on the CPU over gloo
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


# ---------------------------------------------------------------- the configs


@pytest.mark.parametrize("name", SHIPPED)
def test_accelerate_config_loads_and_opens_with_its_command(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_DIR / f"{name}.yaml"
    config = load_config_from_file(str(path))  # accelerate's own reader, as `accelerate launch` uses it
    assert config.num_machines == 1 and config.num_processes >= 2
    assert config.mixed_precision == "no"  # precision is lib.common.device's, handed over by the trainer
    header = path.read_text().split("\ncompute_environment")[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml" in header
    assert "scripts/main_trainer.py" in header and "Assumes:" in header


def test_the_deepspeed_config_says_deepspeed_is_not_installed():
    header = (ACCELERATE_DIR / "deepspeed_zero2.yaml").read_text()
    assert "NOT installed" in header and "pip install deepspeed" in header
    assert "zero_stage: 2" in header


# ---------------------------------------------------------------- the validator skips them


def test_find_configs_leaves_out_accelerate_folders_wherever_they_sit(tmp_path):
    (tmp_path / "exp.yaml").write_text("seed: 1\n")
    (tmp_path / "accelerate").mkdir()
    (tmp_path / "accelerate" / "ddp.yaml").write_text("distributed_type: MULTI_GPU\n")
    (tmp_path / "nested" / "accelerate").mkdir(parents=True)
    (tmp_path / "nested" / "accelerate" / "x.json").write_text("{}")
    (tmp_path / "nested" / "run.yaml").write_text("seed: 2\n")
    assert find_configs([tmp_path]) == [tmp_path / "exp.yaml", tmp_path / "nested" / "run.yaml"]
    assert set(skipped_configs([tmp_path])) == {
        tmp_path / "accelerate" / "ddp.yaml",
        tmp_path / "nested" / "accelerate" / "x.json",
    }
    # the folder itself, or a file in it, named directly: still not an experiment config
    assert find_configs([tmp_path / "accelerate"]) == []
    assert find_configs([tmp_path / "accelerate" / "ddp.yaml"]) == []
    # only folders from the searched one down count: a checkout under .../accelerate/ still validates
    inner = tmp_path / "accelerate" / "checkout" / "configs"
    inner.mkdir(parents=True)
    (inner / "a.yaml").write_text("seed: 3\n")
    assert find_configs([inner]) == [inner / "a.yaml"]
    assert other_tool_config(inner / "a.yaml", inner) is None


def test_shipped_accelerate_configs_are_skipped_by_validate():
    shipped = {ACCELERATE_DIR / f"{name}.yaml" for name in SHIPPED}
    assert not shipped & set(find_configs([ROOT / "configs"]))
    assert shipped <= set(skipped_configs([ROOT / "configs"]))
    result = run_python(["-m", "lib.common.config", "validate", "configs"])
    assert result.returncode == 0, result.stdout + result.stderr
    for name in SHIPPED:
        assert f"skipped configs/accelerate/{name}.yaml: {OTHER_TOOL_DIRS['accelerate']}" in result.stdout
    assert "other tools' config(s)" in result.stdout.splitlines()[-1]


def test_validate_on_only_accelerate_configs_exits_2_and_says_why():
    result = run_python(["-m", "lib.common.config", "validate", "configs/accelerate"])
    assert result.returncode == 2
    assert "no experiment config files" in result.stderr and "3 skipped" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- processes agree on rank 0's values

AGREE = """
import sys, time
from lib.common.distributed import Processes
p = Processes.start("cpu")
with p.main_first():
    time.sleep(0.5 if p.is_main else 0)  # the main process runs the block first, alone
    order = time.time()
print(p.rank, p.world_size, p.agree("run-" + time.strftime("%H%M%S") + f"-from-rank-{p.rank}"), order)
p.barrier()
# leave the gloo group before exit: left to the interpreter's shutdown, its threads sometimes abort the
# process ("terminate called without an active exception", exit -6; seen once in 3 CI runs)
import torch.distributed
torch.distributed.destroy_process_group()
"""


def test_processes_started_apart_agree_on_rank_0s_value():
    env = cpu_only_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = []
    for rank in (0, 1):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", AGREE], cwd=ROOT, env=rank_env, stdout=subprocess.PIPE, text=True
            )
        )
        time.sleep(1.2)  # rank 1 starts in a later second: its own time stamp would differ
    outputs = [p.communicate(timeout=HANG_GUARD_S)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    (rank0, size0, value0, t0), (rank1, size1, value1, t1) = outputs
    assert (rank0, rank1, size0, size1) == ("0", "1", "2", "2")
    assert value0 == value1 and value0.endswith("-from-rank-0")
    assert float(t1) >= float(t0)  # rank 1 entered main_first's block only after rank 0 left it


def test_one_process_needs_no_process_group(monkeypatch):
    from lib.common.distributed import Processes, launched_world_size

    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() == 1
    processes = Processes.start("mps")  # one process on MPS is fine
    assert processes.is_main and not processes.distributed and processes.agree("x") == "x"


def test_several_processes_on_mps_or_a_bad_world_size_are_usage_errors(monkeypatch):
    from lib.common.distributed import Processes, launched_world_size
    from lib.common.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="Apple MPS"):
        Processes.start("mps")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="WORLD_SIZE='two'"):
        launched_world_size()


# ---------------------------------------------------------------- SFT in two processes


@pytest.mark.slow  # trains a model in a subprocess: 10-45 s here (make test-slow)
def test_sft_then_grpo_in_two_processes_train_on_both_ranks_and_write_one_run(workspace):  # noqa: F811
    models = workspace / "models_2proc"
    args = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/ddp.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "scripts/main_trainer.py",
        "--config",
        "configs/profiles/cpu.yaml",
        # no run.run_id: the time-stamp default, which rank 0 decides for both ranks and both stages;
        # GRPO starts on every rank from the SFT run that only rank 0 wrote
        *overrides(workspace, f"run.models_dir={models}", "training_type=both"),
    ]
    result = subprocess.run(
        args, cwd=ROOT, env=cpu_only_env(), capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    run_ids = set()
    for stage_name in ("sft", "grpo"):
        for rank in (0, 1):  # both ranks trained to the end
            assert f"process {rank} of 2: {stage_name} finished at step 2" in output, output[-4000:]
        stage = models / "universal" / stage_name
        # exactly one run folder and one `latest`, written once, by rank 0
        entries = sorted(p.name for p in stage.iterdir())
        assert len(entries) == 2 and "latest" in entries, entries
        run_id = next(name for name in entries if name != "latest")
        run_ids.add(run_id)
        assert (stage / "latest").read_text() == run_id + "\n"
        assert output.count(f"{stage}/latest -> {run_id}") == 1
        assert result.stdout.count(f"{stage_name} run completed:") == 1
        info = json.loads((stage / run_id / "run_info.json").read_text())
        assert (info["status"], info["step"], info["world_size"]) == ("completed", 2, 2)
        for name in ("config.json", "log_history.json", "trainer_state.json", "metrics.json"):
            json.loads((stage / run_id / name).read_text())  # whole files
        # each rank saved its random state in the checkpoint: two processes took part in every step
        checkpoint = stage / run_id / "checkpoints" / "checkpoint-2"
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert len(run_ids) == 1  # one run_id for both stages
    assert not [p for p in models.rglob("*") if p.name.endswith(".tmp")]  # no half-written file left

    sft_run = models / "universal" / "sft" / run_id
    grpo_info = json.loads((models / "universal" / "grpo" / run_id / "run_info.json").read_text())
    assert grpo_info["init_run"] == str(sft_run)
    # the SFT data was split between the ranks: an epoch is half as many steps as one process would take
    state = json.loads((sft_run / "trainer_state.json").read_text())
    records = json.loads((sft_run / "run_info.json").read_text())["train_records"]
    per_device = 2
    assert state["epoch"] == pytest.approx(2 / math.ceil(math.ceil(records / 2) / per_device))
    assert state["epoch"] != pytest.approx(2 / math.ceil(records / per_device))
