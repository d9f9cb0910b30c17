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
is returned between phases. A phase that completed is skipped when the pipeline runs again, so a re-run after
a failure (or a SLURM requeue, `--job-id`) resumes at the phase that failed; training phases resume from
their last checkpoint. `--rerun` runs the named phases again. Training phases are started through
$TRAIN_LAUNCHER when it is set (e.g. `accelerate launch --config_file configs/accelerate/ddp.yaml`).

Exit codes: 0 every phase completed; otherwise the exit code of the first phase that failed (1 failed at run
time, 2 bad config or input, 130 interrupted); 2 for bad usage of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.atomic import write_json_atomic
from lib.common.config import ROOT
from lib.common.errors import EXIT_OK, UsageError, run_cli

PHASES = ("data", "sft", "eval_sft", "grpo", "eval_grpo", "report")


# ---------------------------------------------------------------- the pipeline folder


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(
            f"{run_dir} is not a pipeline folder (state.json missing or unreadable).",
            fix="pass a folder made by run_pipeline.py (results/pipeline_<timestamp>), or --config to start one.",
        ) from None


def create_run_dir(cfg: dict, command: str, job_id: str | None) -> Path:
    """A new results/pipeline_<timestamp>/ with the resolved config and an empty state."""
    from lib.common.config import repo_path

    parent = repo_path(cfg["pipeline"]["results_dir"])
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    state = {"command": command, "slurm_job_id": job_id, "created_at": stamp,
             "phases": {p: {"status": "pending"} for p in PHASES}}  # fmt: skip
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
        write_json_atomic(partial / "config.json", cfg)
        write_json_atomic(partial / "state.json", {"name": run_dir.name, **state})
        try:
            partial.rename(run_dir)
        except OSError:  # another process took the name between the check and the rename
            shutil.rmtree(partial, ignore_errors=True)
            continue
        return run_dir
    raise RuntimeError(f"could not create a pipeline folder in {parent}")


def find_job_run_dir(results_dir: Path, job_id: str) -> Path | None:
    """The pipeline folder a SLURM job made before it was requeued (its state names the job id)."""
    for state_file in sorted(results_dir.glob("pipeline_*/state.json")):
        try:
            if json.loads(state_file.read_text()).get("slurm_job_id") == job_id:
                return state_file.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None


def set_phase(run_dir: Path, phase: str, **fields) -> dict:
    state = read_state(run_dir)
    state["phases"][phase] = {**state["phases"].get(phase, {}), **fields}
    write_json_atomic(run_dir / "state.json", state)
    return state


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
    from lib.common.config import repo_path

    data, settings = cfg["data"], cfg["pipeline"]["data"]
    path = repo_path(data["datasets_dir"]) / data["dataset_name"]
    if path.exists():
        check_existing_dataset(path, settings)
        print(f"dataset {path} exists with the requested settings: kept")
        return EXIT_OK
    code = _run(
        _python(
            "generate_data.py",
            "--systems",
            *settings["systems"],
            "--train-samples",
            str(settings["train_samples"]),
            "--eval-samples",
            str(settings["eval_samples"]),
            "--decimals",
            str(settings["decimals"]),
            "--seed",
            str(cfg["seed"]),
            "--workers",
            str(settings["workers"]),
            "--dataset-name",
            data["dataset_name"],
            "--output-dir",
            str(repo_path(data["datasets_dir"])),
        )  # fmt: skip
    )
    if code != EXIT_OK and path.exists():  # a sweep's other task wrote the same dataset meanwhile
        check_existing_dataset(path, settings)
        print(f"dataset {path} was made by another pipeline meanwhile, with the requested settings: kept")
        return EXIT_OK
    return code


def check_existing_dataset(path: Path, settings: dict) -> None:
    """An existing dataset is used only if it was made with the pipeline's data settings."""
    from lib.control.dataset import read_info

    info = read_info(path)
    found = {"systems": list(info["systems"]), "train_samples": info["counts"]["train"],
             "eval_samples": info["counts"]["eval"], "decimals": info["decimals"]}  # fmt: skip
    wanted = {key: settings[key] for key in found}
    if found != wanted:
        raise UsageError(
            f"dataset {path} exists but was made with {found}, and this pipeline asks for {wanted}.",
            fix="give the pipeline another data.dataset_name, or delete the dataset to regenerate it.",
        )


def _train(cfg: dict, run_dir: Path, stage: str, extra: list[str]) -> int:
    from lib.common.runs import read_run_info

    run = training_run(cfg, stage, run_dir.name)
    resume = (run / "run_info.json").is_file()
    if resume and read_run_info(run).get("status") == "completed":
        print(f"{stage} run {run} already completed: kept")
        return EXIT_OK
    args = [
        "--config",
        str(run_dir / "config.json"),
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
    settings = cfg["pipeline"]["eval"]
    run = training_run(cfg, stage, run_dir.name)
    if not (run / "run_info.json").is_file():
        raise UsageError(
            f"eval_{stage}: this pipeline has no {stage} run ({run}).",
            fix=f"run the {stage} phase first (add it to pipeline.phases), or drop eval_{stage}.",
        )
    models, labels = [str(run)], [stage]
    if stage == "sft" and settings["include_base"]:
        models, labels = [cfg["model"]["name"], str(run)], ["base", "sft"]
    args = ["--model-path", *models, "--labels", *labels, "--dataset", cfg["data"]["dataset_name"],
            "--num-samples", str(settings["num_samples"]), "--max-new-tokens", str(settings["max_new_tokens"]),
            "--batch-size", str(settings["batch_size"]), "--eval-mode", settings["eval_mode"],
            "--replan-every", str(settings["replan_every"]), "--plot-instances", str(settings["plot_instances"]),
            "--seed", str(cfg["seed"]), "--output-dir", str(run_dir / f"{stage}_evaluation"),
            "--config", str(run_dir / "config.json")]  # fmt: skip
    return _run(_python("main_eval.py", *args, *(["--save-plots"] if settings["save_plots"] else [])))


def phase_eval_sft(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "sft")


def phase_eval_grpo(cfg: dict, run_dir: Path) -> int:
    return _evaluate(cfg, run_dir, "grpo")


def phase_report(cfg: dict, run_dir: Path) -> int:
    from lib.llm.report import write_pipeline_report

    path = write_pipeline_report(run_dir, read_state(run_dir))
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
    cfg = json.loads((run_dir / "config.json").read_text())
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

    phases = args.phase or json.loads((run_dir / "config.json").read_text())["pipeline"]["phases"]
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
