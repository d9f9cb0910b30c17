"""The pipeline (docs/ARCHITECTURE.md, "Pipelines"): data -> sft -> eval_sft -> grpo -> eval_grpo -> report
(and corrected -> eval_corrected, rft -> eval_rft: the solver-corrected and rejection-sampling stages from
the same SFT run, where pipeline.phases names them; labels -> eval_labels: the SFT run trained on labels
alone at the corrected stage's steps, the control each second stage is paired against), each phase a
script run in its own process (so memory is returned between phases) with the pipeline folder's
config.json plus the few `key=value` overrides that are the phase's own (run id, models to evaluate,
output folder). The folder's format is lib/llm/pipeline_folder.py; the report lib/llm/pipeline_report.py.
scripts/run_pipeline.py parses its flags and calls `run_pipeline`; slurm/pipeline.sh calls it once per
phase (`--phase NAME`) as a SLURM step.

A phase that completed is skipped when the pipeline runs again, so a re-run after a failure (or a SLURM
requeue, `--job-id`) resumes at the phase that failed; training phases resume from their last checkpoint.
Training phases are started through $TRAIN_LAUNCHER when it is set (e.g. `accelerate launch --config_file
configs/accelerate/ddp.yaml`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lib.common.config import ROOT, override_text, repo_path, resolve_config
from lib.common.errors import EXIT_OK, UsageError, run_cli
from lib.common.runs import read_run_info
from lib.control.dataset_checks import check_existing_dataset
from lib.llm.models import SCRATCH
from lib.llm.pipeline_folder import (
    CONFIG_FILE,
    create_run_dir,
    find_job_run_dir,
    read_config,
    read_state,
    set_phase,
)
from lib.llm.stages import stage_dir


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / script), *args]


def _launcher(script: str, *args: str) -> list[str]:
    """Training phases may run under a launcher (accelerate launch ... for several GPUs)."""
    launcher = os.environ.get("TRAIN_LAUNCHER", "").strip()
    if not launcher:
        return _python(script, *args)
    return [*shlex.split(launcher), str(ROOT / "scripts" / script), *args]


def _run(command: list[str]) -> int:
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


def training_run(cfg: dict, stage: str, name: str) -> Path:
    return stage_dir(cfg, stage) / name


def phase_data(cfg: dict, run_dir: Path) -> int:
    """generate_data.py with the pipeline's config (data.dataset_name, data.datasets_dir, seed, generate.*)."""
    path = repo_path(cfg["data"]["datasets_dir"]) / cfg["data"]["dataset_name"]
    if path.exists():
        check_existing_dataset(path, cfg["generate"])
        print(f"dataset {path} exists with the requested settings: kept")
        return EXIT_OK
    code = _run(_python("generate_data.py", "--config", str(run_dir / CONFIG_FILE)))
    if code != EXIT_OK and path.exists():  # a sweep's other task wrote the same dataset meanwhile
        check_existing_dataset(path, cfg["generate"])
        print(f"dataset {path} was made by another pipeline meanwhile, with the requested settings: kept")
        return EXIT_OK
    return code


def _train(cfg: dict, run_dir: Path, stage: str, extra: list[str], name: str | None = None) -> int:
    """main_trainer.py for `stage`, run id `name` (default: the pipeline's name), resumed if it started."""
    name = name or run_dir.name
    run = training_run(cfg, stage, name)
    resume = (run / "run_info.json").is_file()
    if resume and read_run_info(run).get("status") == "completed":
        print(f"{stage} run {run} already completed: kept")
        return EXIT_OK
    args = [
        "--config",
        str(run_dir / CONFIG_FILE),
        f"training_type={stage}",
        f"run.run_id={name}",
        *extra,
    ]
    return _run(_launcher("main_trainer.py", *args, *(["--resume"] if resume else [])))


def phase_sft(cfg: dict, run_dir: Path) -> int:
    return _train(cfg, run_dir, "sft", [])


def phase_grpo(cfg: dict, run_dir: Path) -> int:
    sft = training_run(cfg, "sft", run_dir.name)
    # GRPO continues this pipeline's SFT run when it made one; otherwise grpo.init_from decides
    init = [f"grpo.init_from={sft}"] if (sft / "run_info.json").is_file() else []
    return _train(cfg, run_dir, "grpo", init)


def _after_sft(cfg: dict, run_dir: Path, stage: str) -> int:
    sft = training_run(cfg, "sft", run_dir.name)
    # the corrected and RFT stages start from this pipeline's SFT run when it made one; else <stage>.init_from
    init = [f"{stage}.init_from={sft}"] if (sft / "run_info.json").is_file() else []
    return _train(cfg, run_dir, stage, init)


def phase_corrected(cfg: dict, run_dir: Path) -> int:
    return _after_sft(cfg, run_dir, "corrected")


def phase_rft(cfg: dict, run_dir: Path) -> int:
    return _after_sft(cfg, run_dir, "rft")


def labels_run(cfg: dict, run_dir: Path) -> Path:
    """The labels-only control's run: a corrected-stage run (models/<scope>/corrected/<pipeline>_labels)."""
    return training_run(cfg, "corrected", f"{run_dir.name}_labels")


def phase_labels(cfg: dict, run_dir: Path) -> int:
    """The control a second stage is judged against: this pipeline's SFT run trained further on every train
    label alone (corrected.prompts=0, corrected.label_records=-1; the corrected stage's steps, rate and
    batch), so a second stage's gain over it is what its own records teach beyond more SFT."""
    sft = training_run(cfg, "sft", run_dir.name)
    init = [f"corrected.init_from={sft}"] if (sft / "run_info.json").is_file() else []
    name = labels_run(cfg, run_dir).name
    labels_only = ["corrected.prompts=0", "corrected.label_records=-1"]
    return _train(cfg, run_dir, "corrected", [*init, *labels_only], name)


def _evaluate(cfg: dict, run_dir: Path, stage: str, run: Path | None = None) -> int:
    """main_eval.py with the pipeline's config (eval.*, data.dataset_name, seed); only the models, their labels,
    the output folder and whether to draw figures are the phase's own. `stage` labels the model and names the
    folder (<stage>_evaluation); `run` is the run evaluated (default: the stage's run of this pipeline)."""
    run = run or training_run(cfg, stage, run_dir.name)
    if not (run / "run_info.json").is_file():
        raise UsageError(
            f"eval_{stage}: this pipeline has no {stage} run ({run}).",
            fix=f"run the {stage} phase first (add it to pipeline.phases), or drop eval_{stage}.",
        )
    models, labels = [str(run)], [stage]
    if stage == "sft" and cfg["pipeline"]["include_base"]:
        base = cfg["model"]["name"]
        if base == SCRATCH:  # the random weights the SFT run started from (in the model cache)
            base = read_run_info(run)["base_model"]
        models, labels = [base, str(run)], ["base", "sft"]
    overrides = {
        "eval.model_path": models,
        "eval.labels": labels,
        "eval.output_dir": str(run_dir / f"{stage}_evaluation"),
        "eval.save_plots": cfg["pipeline"]["save_plots"],
    }
    settings = [f"{key}={override_text(value)}" for key, value in overrides.items()]
    return _run(_python("main_eval.py", "--config", str(run_dir / CONFIG_FILE), *settings))


def phase_eval_sft(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "sft")


def phase_eval_grpo(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "grpo")


def phase_eval_corrected(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "corrected")


def phase_eval_rft(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "rft")


def phase_eval_labels(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "labels", labels_run(cfg, run_dir))


def phase_report(cfg: dict, run_dir: Path) -> int:
    from lib.llm.pipeline_report import write_pipeline_report

    path = write_pipeline_report(run_dir)
    print(f"report: {path}")
    return EXIT_OK


PHASE_FUNCTIONS = {
    "data": phase_data,
    "sft": phase_sft,
    "eval_sft": phase_eval_sft,
    "grpo": phase_grpo,
    "eval_grpo": phase_eval_grpo,
    "corrected": phase_corrected,
    "eval_corrected": phase_eval_corrected,
    "rft": phase_rft,
    "eval_rft": phase_eval_rft,
    "labels": phase_labels,
    "eval_labels": phase_eval_labels,
    "report": phase_report,
}


def run_phase_here(run_dir: Path, phase: str, rerun: bool) -> int:
    """Run one phase in this process, recording its status; a completed phase is skipped unless rerun."""
    state = read_state(run_dir)
    if state["phases"].get(phase, {}).get("status") == "completed" and not rerun:
        print(
            f"phase {phase}: already completed ({state['phases'][phase].get('elapsed_s', 0):.0f} s): skipped"
        )
        return EXIT_OK
    cfg = read_config(run_dir)
    start = time.time()
    set_phase(run_dir, phase, status="running", started_at=time.strftime("%Y-%m-%d %H:%M:%S"), exit_code=None)
    code = 1
    try:
        code = run_cli(lambda _argv: PHASE_FUNCTIONS[phase](cfg, run_dir), [])
    finally:
        status = "completed" if code == EXIT_OK else "failed"
        set_phase(run_dir, phase, status=status, exit_code=code, elapsed_s=round(time.time() - start, 1))
    return code


def banner(text: str) -> None:
    print("=" * 72 + f"\n{text}\n" + "=" * 72, flush=True)


def pipeline_folder(config: str | None, run_dir: Path | None, overrides: list[str], job_id: str | None,
                    command: str) -> Path:  # fmt: skip
    """The folder to work in: an existing one (--run-dir), the one this SLURM job made before a requeue,
    or a new one made from --config and the overrides."""
    if run_dir:
        if config or overrides:
            raise UsageError(
                "--run-dir resumes a pipeline with the config it was created with; --config and overrides "
                "cannot change it.",
                fix="drop --config and the overrides, or start a new pipeline without --run-dir.",
            )
        run_dir = run_dir if run_dir.is_absolute() else Path.cwd() / run_dir
        read_state(run_dir)
        return run_dir
    if not config:
        raise UsageError(
            "nothing to run.", fix="pass --config FILE (a new pipeline) or --run-dir FOLDER (resume)."
        )
    cfg = resolve_config(config, overrides)
    if not cfg["data"]["dataset_name"]:
        raise UsageError("the pipeline needs data.dataset_name (the dataset it makes or uses).",
                         fix="set data.dataset_name in the config or add data.dataset_name=NAME.")  # fmt: skip
    found = find_job_run_dir(repo_path(cfg["pipeline"]["results_dir"]), job_id) if job_id else None
    folder = found or create_run_dir(cfg, command, job_id)
    print(f"{'resuming' if found else 'created'} pipeline folder {folder}", file=sys.stderr)
    return folder


def run_pipeline(run_dir: Path, phases: list[str], rerun: bool = False) -> int:
    """Run the phases in order, each in its own process (`run_pipeline.py --phase NAME`); stop at the first
    that fails and return its exit code."""
    if len(phases) == 1:
        return run_phase_here(run_dir, phases[0], rerun)
    total = time.time()
    for number, phase in enumerate(phases, 1):
        banner(f"PHASE {number}/{len(phases)}: {phase}  (started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        start = time.time()
        command = [*_python("run_pipeline.py", "--run-dir", str(run_dir), "--phase", phase),
                   *(["--rerun"] if rerun else [])]  # fmt: skip
        code = subprocess.run(command, cwd=ROOT).returncode
        print(f"phase {phase}: exit {code}, {time.time() - start:.0f} s", flush=True)
        if code != EXIT_OK:
            print(f"pipeline stopped at phase {phase} (exit {code}); resume with: "
                  f"python scripts/run_pipeline.py --run-dir {run_dir}")  # fmt: skip
            return code
    print(f"pipeline completed in {time.time() - total:.0f} s: {run_dir}")
    report = run_dir / "report.md"
    if report.is_file():
        print(f"report: {report}")
    return EXIT_OK
