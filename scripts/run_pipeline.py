"""The whole job from one config: data -> SFT -> evaluate SFT -> GRPO -> evaluate GRPO -> report.

Usage:
    make demo                                          # configs/pipeline/demo_cpu.yaml: a laptop CPU, ~15 min
    make pipeline CONFIG=configs/pipeline/smollm2_cpu.yaml [ARGS="key=value ..."]
    python scripts/run_pipeline.py --config FILE [key=value ...]          # every phase, a new pipeline folder
    python scripts/run_pipeline.py --run-dir results/pipeline_X           # resume: finished phases are kept
    python scripts/run_pipeline.py --run-dir results/pipeline_X --phase eval_sft --rerun   # one phase again
    sbatch slurm/pipeline.sh                            # the same phases as SLURM steps

A pipeline folder results/pipeline_<timestamp>/ holds config.json (the resolved config, fixed at creation),
state.json (each phase's status, exit code, start and elapsed time), sft_evaluation/ and grpo_evaluation/
(main_eval.py's outputs), and at its top report.md, metrics.json and the comparison figures. The models go
to models/<scope>/<sft|grpo>/<pipeline name>/ like any training run.

Each phase runs in its own process (`--phase NAME`, what slurm/pipeline.sh calls as a SLURM step), so memory
is returned between phases. A phase is a script run with the folder's config.json (`--config`), plus the few
`key=value` overrides that are the phase's own (the run id, the models to evaluate, the output folder):
generate_data.py reads the generate section, main_trainer.py the training ones, main_eval.py the eval section.
The folder's format (config.json, state.json) is defined in lib/llm/pipeline.py. A phase that completed is skipped when the pipeline runs again, so a re-run after
a failure (or a SLURM requeue, `--job-id`) resumes at the phase that failed; training phases resume from
their last checkpoint. `--rerun` runs the named phases again. Training phases are started through
$TRAIN_LAUNCHER when it is set (e.g. `accelerate launch --config_file configs/accelerate/ddp.yaml`).

Exit codes: 0 every phase completed; otherwise the exit code of the first phase that failed (1 failed at run
time, 2 bad config or input, 130 interrupted); 2 for bad usage of this script.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import ROOT, override_text
from lib.common.errors import EXIT_OK, UsageError, run_cli
from lib.common.runs import read_run_info
from lib.llm.models import SCRATCH
from lib.llm.pipeline import (
    CONFIG_FILE,
    PHASES,
    create_run_dir,
    find_job_run_dir,
    read_config,
    read_state,
    set_phase,
)

# ---------------------------------------------------------------- phases (each in its own process)


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
    from lib.llm.stages import stage_dir

    return stage_dir(cfg, stage) / name


def phase_data(cfg: dict, run_dir: Path) -> int:
    """generate_data.py with the pipeline's config (data.dataset_name, data.datasets_dir, seed, generate.*)."""
    from lib.common.config import repo_path

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


def check_existing_dataset(path: Path, settings: dict) -> None:
    """An existing dataset is used only if it was made with the pipeline's generate settings: the same
    systems (when generate.systems is set), decimals, box, prompt style, reasoning and counts (train and eval
    when set, else the total)."""
    from lib.control.dataset import read_info

    info = read_info(path)
    counts = info["counts"]
    found = {
        "systems": list(info["systems"]),
        "decimals": info["decimals"],
        "wide": info.get("box") == "wide",
        "prompt_style": info.get("prompt_style", "full"),
        "reasoning": info.get("reasoning", "full"),
    }
    wanted = {key: settings[key] for key in ("systems", "decimals", "wide", "prompt_style", "reasoning")}
    if settings["train_samples"] is not None and settings["eval_samples"] is not None:
        found |= {"train_samples": counts["train"], "eval_samples": counts["eval"]}
        wanted |= {"train_samples": settings["train_samples"], "eval_samples": settings["eval_samples"]}
    else:
        found["total_samples"] = counts["train"] + counts["eval"]
        wanted["total_samples"] = settings["total_samples"]
    if wanted["systems"] is None:  # no systems asked for: whatever the dataset has
        del found["systems"], wanted["systems"]
    if found != wanted:
        raise UsageError(
            f"dataset {path} exists but was made with {found}, and this pipeline asks for {wanted}.",
            fix="give the pipeline another data.dataset_name, or delete the dataset to regenerate it.",
        )


def _train(cfg: dict, run_dir: Path, stage: str, extra: list[str]) -> int:
    run = training_run(cfg, stage, run_dir.name)
    resume = (run / "run_info.json").is_file()
    if resume and read_run_info(run).get("status") == "completed":
        print(f"{stage} run {run} already completed: kept")
        return EXIT_OK
    args = [
        "--config",
        str(run_dir / CONFIG_FILE),
        f"training_type={stage}",
        f"run.run_id={run_dir.name}",
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


def _evaluate(cfg: dict, run_dir: Path, stage: str) -> int:
    """main_eval.py with the pipeline's config (eval.*, data.dataset_name, seed); only the models, their labels,
    the output folder and whether to draw figures are the phase's own."""
    run = training_run(cfg, stage, run_dir.name)
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


def phase_report(cfg: dict, run_dir: Path) -> int:
    from lib.llm.report import write_pipeline_report

    path = write_pipeline_report(run_dir)
    print(f"report: {path}")
    return EXIT_OK


PHASE_FUNCTIONS = {
    "data": phase_data,
    "sft": phase_sft,
    "eval_sft": phase_eval_sft,
    "grpo": phase_grpo,
    "eval_grpo": phase_eval_grpo,
    "report": phase_report,
}


# ---------------------------------------------------------------- driving


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="start a new pipeline from this config")
    parser.add_argument("--run-dir", type=Path, help="an existing pipeline folder: resume it")
    parser.add_argument("--phase", nargs="+", choices=PHASES, help="run only these phases")
    parser.add_argument("--rerun", action="store_true", help="run the chosen phases even if completed")
    parser.add_argument("--job-id", help="SLURM job id: resume the folder this job made before a requeue")
    parser.add_argument("--init", action="store_true", help="only create (or find) the folder and print it")
    parser.add_argument("--list-phases", action="store_true", help="print the folder's phases, one per line")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (new pipelines)")
    args = parser.parse_intermixed_args(argv)
    from lib.common.config import repo_path, resolve_config

    command = "python scripts/run_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.run_dir:
        if args.config or args.overrides:
            raise UsageError(
                "--run-dir resumes a pipeline with the config it was created with; --config and overrides "
                "cannot change it.",
                fix="drop --config and the overrides, or start a new pipeline without --run-dir.",
            )
        run_dir = args.run_dir if args.run_dir.is_absolute() else Path.cwd() / args.run_dir
        read_state(run_dir)
    elif args.config:
        cfg = resolve_config(args.config, args.overrides)
        if not cfg["data"]["dataset_name"]:
            raise UsageError("the pipeline needs data.dataset_name (the dataset it makes or uses).",
                             fix="set data.dataset_name in the config or add data.dataset_name=NAME.")  # fmt: skip
        found = (
            find_job_run_dir(repo_path(cfg["pipeline"]["results_dir"]), args.job_id) if args.job_id else None
        )
        run_dir = found or create_run_dir(cfg, command, args.job_id)
        print(f"{'resuming' if found else 'created'} pipeline folder {run_dir}", file=sys.stderr)
    else:
        raise UsageError(
            "nothing to run.", fix="pass --config FILE (a new pipeline) or --run-dir FOLDER (resume)."
        )

    phases = args.phase or read_config(run_dir)["pipeline"]["phases"]
    if args.init:
        print(run_dir)
        return EXIT_OK
    if args.list_phases:
        print("\n".join(phases))
        return EXIT_OK
    if args.phase and len(args.phase) == 1:
        return run_phase_here(run_dir, args.phase[0], args.rerun)

    total = time.time()
    for number, phase in enumerate(phases, 1):
        banner(f"PHASE {number}/{len(phases)}: {phase}  (started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        start = time.time()
        code = subprocess.run(
            [
                sys.executable,
                __file__,
                "--run-dir",
                str(run_dir),
                "--phase",
                phase,
                *(["--rerun"] if args.rerun else []),
            ],
            cwd=ROOT,
        ).returncode
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
