"""`sbatch slurm/pipeline.sh` on a real single-node SLURM (tests/tools/slurm_local.sh starts it).

Skipped where SLURM is not installed (`.ci/run` installs slurmctld, slurmd, slurm-client and munge, so CI
runs it). The first job fails its GRPO phase on purpose (a TRAIN_LAUNCHER that exits 3): it must end FAILED
with exit code 3, after banners for the phases it ran, with the earlier phases' outputs intact. The second job
resumes that pipeline folder, skips what completed and finishes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest
from helpers import HANG_GUARD_S, ROOT, run
from test_pipeline import PHASES, build_tiny, failing_launcher, tiny_pipeline_config

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,  # a real SLURM pipeline: minutes (make test-slow)
    pytest.mark.skipif(
        shutil.which("slurmctld") is None or shutil.which("sbatch") is None, reason="SLURM not installed"
    ),
]
TOOL = ROOT / "tests" / "tools" / "slurm_local.sh"
# The test node has 2 cores, ~24 GB and no GPU: the script's #SBATCH requests (1 GPU, 8 CPUs, 64 GB) are
# overridden on the command line, as a user would for a CPU partition.
RESOURCES = ["--gres=none", "--cpus-per-task=2", "--mem=2G"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    env = {"SLURM_CI_DIR": str(base)}
    started = run(["bash", str(TOOL), "start"], env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    yield {**env, "SLURM_CONF": str(base / "slurm.conf")}
    run(["bash", str(TOOL), "stop"], env=env)


def submit(cluster: dict, log: str, exports: dict) -> tuple[str, str, str]:
    """sbatch slurm/pipeline.sh, wait for the end; (state, exit code, log text)."""
    export = ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())])
    args = [
        "bash",
        str(TOOL),
        "swait",
        *RESOURCES,
        f"--export={export}",
        f"--output={log}",
        "slurm/pipeline.sh",
    ]
    result = run(args, env=cluster)
    assert result.stdout.strip(), f"sbatch refused the job: {result.stderr}"
    job = result.stdout.split()[0]
    shown = run(["scontrol", "show", "job", "-o", job], env=cluster).stdout
    state = re.search(r"JobState=(\S+)", shown).group(1)
    code = re.search(r"ExitCode=(\S+)", shown).group(1)
    for _ in range(20):  # the log is flushed by slurmstepd as the job ends
        if os.path.exists(log):
            break
        time.sleep(0.5)
    return state, code, open(log).read()


def test_sbatch_pipeline_fails_at_the_failed_phase_then_resumes_to_completion(cluster, tmp_path):
    tiny = build_tiny(tmp_path)
    config = tiny_pipeline_config(tmp_path, tiny)
    python = sys.executable
    exports = {"CONFIG": str(config), "PYTHON": python, "TRAIN_LAUNCHER": str(failing_launcher(tmp_path, 3))}
    state, code, log = submit(cluster, str(tmp_path / "first.out"), exports)
    assert (state, code) == ("FAILED", "3:0"), log[-3000:]
    for number, phase in enumerate(PHASES[:4], 1):
        assert f"PHASE {number}/6: {phase}" in log
    assert log.count("Started at: ") == 4 and "OK: phase eval_sft completed in " in log
    assert "FAILED: phase grpo exited with status 3" in log and "Total runtime: " in log
    (run_dir,) = (tmp_path / "results").glob("pipeline_*")
    phases = json.loads((run_dir / "state.json").read_text())["phases"]
    assert [phases[p]["status"] for p in PHASES] == ["completed"] * 3 + ["failed", "pending", "pending"]
    assert json.loads((run_dir / "state.json").read_text())["slurm_job_id"]
    sft_eval = (run_dir / "sft_evaluation" / "metrics.json").read_bytes()  # earlier outputs intact

    state, code, log = submit(
        cluster, str(tmp_path / "second.out"), {"RUN_DIR": str(run_dir), "PYTHON": python}
    )
    assert (state, code) == ("COMPLETED", "0:0"), log[-3000:]
    assert "phase sft: already completed" in log and "Pipeline completed at " in log
    assert (run_dir / "sft_evaluation" / "metrics.json").read_bytes() == sft_eval
    phases = json.loads((run_dir / "state.json").read_text())["phases"]
    assert all(phases[p]["status"] == "completed" for p in PHASES)
    assert "| grpo |" in (run_dir / "report.md").read_text()


def wait_for(cluster: dict, job: str, timeout: float = HANG_GUARD_S) -> list[str]:
    """Poll until every task of the job has ended; their states."""
    end = time.time() + timeout
    while time.time() < end:
        shown = run(["scontrol", "show", "job", "-o", job], env=cluster).stdout
        states = re.findall(r"JobState=(\S+)", shown)
        if states and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states):
            return states
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not end in {timeout} s")


def test_sweep_submits_one_pipeline_per_override_line(cluster, tmp_path):
    config = tiny_pipeline_config(tmp_path, build_tiny(tmp_path))
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# two data-only pipelines\npipeline.phases=data,report seed=1 data.dataset_name=s1\n\n"
                     "pipeline.phases=data,report seed=2 data.dataset_name=s2\n")  # fmt: skip
    env = {**cluster, "CONFIG": str(config), "PYTHON": sys.executable}
    result = run(
        ["bash", "slurm/sweep.sh", str(sweep), *RESOURCES, f"--output={tmp_path}/sweep-%A_%a.out"], env=env
    )
    assert result.returncode == 0, result.stderr
    assert wait_for(cluster, result.stdout.strip()) == ["COMPLETED", "COMPLETED"]
    seeds = sorted(
        json.loads((d / "config.json").read_text())["seed"] for d in (tmp_path / "results").glob("pipeline_*")
    )
    assert seeds == [1, 2]
    assert {d.name for d in (tmp_path / "datasets").iterdir()} == {"s1", "s2"}
    assert run(["bash", "slurm/sweep.sh", str(tmp_path / "none.txt")], env=env).returncode == 2
