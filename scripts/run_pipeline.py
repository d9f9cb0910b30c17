"""The whole job from one config: data -> SFT -> evaluate SFT -> GRPO -> evaluate GRPO -> report.

Usage:
    make demo                                          # configs/scratch/demo_cpu.yaml: a laptop CPU
    make pipeline CONFIG=configs/smollm2/cpu.yaml [ARGS="key=value ..."]
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
The phases are lib/llm/pipeline.py; the folder's format (config.json, state.json) lib/llm/pipeline_folder.py.
A phase that completed is skipped when the pipeline runs again, so a re-run after
a failure (or a SLURM requeue, `--job-id`) resumes at the phase that failed; training phases resume from
their last checkpoint. `--rerun` runs the named phases again. Training phases are started through
$TRAIN_LAUNCHER when it is set (e.g. `accelerate launch --config_file configs/accelerate/ddp.yaml`).

Exit codes: 0 every phase completed; otherwise the exit code of the first phase that failed (1 failed at run
time, 2 bad config or input, 130 interrupted); 2 for bad usage of this script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.common.errors import EXIT_OK, run_cli
from lib.llm.pipeline import pipeline_folder, run_pipeline
from lib.llm.pipeline_folder import PHASES, read_config


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
    command = "python scripts/run_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run_dir = pipeline_folder(args.config, args.run_dir, args.overrides, args.job_id, command)
    phases = args.phase or read_config(run_dir)["pipeline"]["phases"]
    if args.init or args.list_phases:
        print(run_dir if args.init else "\n".join(phases))
        return EXIT_OK
    return run_pipeline(run_dir, phases, args.rerun)


if __name__ == "__main__":
    sys.exit(run_cli(main))
