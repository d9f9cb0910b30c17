"""The pipeline folder's format, defined once: lib/llm/pipeline.py writes it, lib/llm/pipeline_report.py reads it.

A pipeline folder <pipeline.results_dir>/pipeline_<timestamp>[-N]/ holds

    config.json   the resolved config, fixed when the folder is made (read back through the loader, so a
                  folder made before a key was renamed still resolves: LEGACY_KEYS)
    state.json    {"name", "command", "slurm_job_id", "created_at",
                   "phases": {phase: {"status": pending|running|completed|failed, "exit_code", "started_at",
                   "elapsed_s"}}}, every phase of its pipeline.phases listed in order (PHASES: all that exist)

and the phases' outputs (<stage>_evaluation/ of each eval_<stage> phase, report.md, metrics.json, comparison.png), with
.run_pipeline_manifest.json listing the report files the report phase wrote (the only ones it replaces:
lib/llm/pipeline_report.py; the evaluations keep main_eval.py's own manifest in their folders).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lib.common.atomic import write_json_atomic
from lib.common.config import repo_path, resolve_config
from lib.common.errors import UsageError

# every phase a pipeline can run (lib/llm/pipeline.py, PHASE_FUNCTIONS); a folder's state lists its own
PHASES = (
    "data",
    "sft",
    "eval_sft",
    "grpo",
    "eval_grpo",
    "corrected",
    "eval_corrected",
    "rft",
    "eval_rft",
    "labels",
    "eval_labels",
    "report",
)
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(
            f"{run_dir} is not a pipeline folder ({STATE_FILE} missing or unreadable).",
            fix="pass a folder made by run_pipeline.py (results/pipeline_<timestamp>), or --config to start one.",
        ) from None


def read_config(run_dir: Path) -> dict:
    """The pipeline's resolved config (config.json through the loader)."""
    return resolve_config(run_dir / CONFIG_FILE)


def create_run_dir(cfg: dict, command: str, job_id: str | None) -> Path:
    """A new <results_dir>/pipeline_<timestamp>/ with the resolved config and an empty state."""
    parent = repo_path(cfg["pipeline"]["results_dir"])
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    state = {"command": command, "slurm_job_id": job_id, "created_at": stamp,
             "phases": {p: {"status": "pending"} for p in cfg["pipeline"]["phases"]}}  # fmt: skip
    # Several pipelines may start in the same second (a sweep's array tasks): the folder is built under a
    # hidden name that only one process can create, then renamed; a taken name moves on to the next suffix.
    for suffix in range(1, 1000):
        run_dir = parent / (f"pipeline_{stamp}" if suffix == 1 else f"pipeline_{stamp}-{suffix}")
        partial = parent / f".{run_dir.name}.partial"
        if run_dir.exists():
            continue
        try:
            partial.mkdir()
        except FileExistsError:
            continue
        write_json_atomic(partial / CONFIG_FILE, cfg)
        write_json_atomic(partial / STATE_FILE, {"name": run_dir.name, **state})
        try:
            partial.rename(run_dir)
        except OSError:  # another process took the name between the check and the rename
            shutil.rmtree(partial, ignore_errors=True)
            continue
        return run_dir
    raise RuntimeError(f"could not create a pipeline folder in {parent}")


def find_job_run_dir(results_dir: Path, job_id: str) -> Path | None:
    """The pipeline folder a SLURM job made before it was requeued (its state names the job id)."""
    for state_file in sorted(results_dir.glob(f"pipeline_*/{STATE_FILE}")):
        try:
            if json.loads(state_file.read_text()).get("slurm_job_id") == job_id:
                return state_file.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None


def set_phase(run_dir: Path, phase: str, **fields) -> dict:
    """Update one phase's entry in state.json (atomically) and return the new state."""
    state = read_state(run_dir)
    state["phases"][phase] = {**state["phases"].get(phase, {}), **fields}
    write_json_atomic(run_dir / STATE_FILE, state)
    return state
