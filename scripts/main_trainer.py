"""Train from one config: SFT, GRPO or both (control), or the byte-level entropy model (blt), on CUDA, MPS or CPU.

Usage:
    make train CONFIG=configs/smollm2/cpu.yaml
    python scripts/main_trainer.py --config configs/smollm2/cpu.yaml data.dataset_name=test_di
    python scripts/main_trainer.py --config FILE training_type=both run.run_id=exp1 --resume
    python scripts/main_trainer.py --system double_integrator --dataset-name test_di --training-type sft
    python scripts/main_trainer.py --list-datasets

    make train-mps ARGS="max_steps=20 eval_steps=10"      # the byte-level entropy model, MPS profile
    python scripts/main_trainer.py --config configs/blt/entropy_cpu.json max_steps=200 run_id=b1 --resume

The original project's flags (--system, --dataset-name, --training-type, --sft-max-samples, ...) are
shorthands for config keys (FLAG_KEYS; scripts/train_single_system.py is this script by its old name).
Precedence: schema defaults < `extends:` parents < --config < flags < key=value. Overrides are `key.sub=value` after the config (see schemas/control.schema.json, schemas/blt.schema.json).
The config's `model_type` picks the model family: `control` (the language-model controller; runs in
models/<system or universal>/<sft|grpo>/<run_id>/, lib/llm/training.py) or `blt` (the byte-level entropy model;
runs in <output_dir>/<run_id>/, default models/blt, lib/blt/training.py). Exit codes: 0 done, 1 failed,
2 bad config or input, 130 stopped by SIGTERM / Ctrl-C with a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lib.common.config import resolve_cli
from lib.common.errors import run_cli

# flag (argparse dest) -> config key: the original project's flags, each a shorthand for one key
FLAG_KEYS = {
    "system": "data.system",
    "dataset_name": "data.dataset_name",
    "training_type": "training_type",
    "sft_max_samples": "data.sft_max_samples",
    "grpo_max_samples": "data.grpo_max_samples",
    "eval_max_samples": "data.eval_max_samples",
    "lora_rank": "model.lora.rank",
    "max_seq_length": "model.max_seq_length",
    "run_id": "run.run_id",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--config", help="a YAML or JSON config (configs/); default: the control schema's defaults")
    add("overrides", nargs="*", metavar="key=value", help="config overrides")
    add("--resume", action="store_true", help="continue run.run_id (default: the newest run)")
    add("--system", help="train on this system's records only (models/<system>/); data.system")
    add("--dataset-name", help="a dataset under datasets/ (see --list-datasets); data.dataset_name")
    add("--training-type", choices=["sft", "grpo", "both", "corrected", "rft"], help="training_type")
    add("--sft-max-samples", type=int, help="at most this many SFT records; data.sft_max_samples")
    add("--grpo-max-samples", type=int, help="at most this many GRPO prompts; data.grpo_max_samples")
    add(
        "--eval-max-samples", type=int, help="eval records for the final SFT eval loss; data.eval_max_samples"
    )
    add("--lora-rank", type=int, help="LoRA rank; model.lora.rank")
    add("--max-seq-length", type=int, help="longest prompt + completion in tokens; model.max_seq_length")
    add("--run-id", help="run folder name (default: the start time); run.run_id")
    add("--list-datasets", action="store_true", help="list the datasets and exit")
    args = parser.parse_intermixed_args(argv)
    flags = {key: ("--" + name.replace("_", "-"), getattr(args, name)) for name, key in FLAG_KEYS.items()}
    cfg = resolve_cli(args.config, flags, args.overrides)
    if args.list_datasets:
        from lib.common.config import repo_path
        from lib.control.generate import show_list

        return show_list(repo_path(cfg["data"]["datasets_dir"]))
    command = ["python", "scripts/main_trainer.py", *(sys.argv[1:] if argv is None else argv)]
    if cfg["model_type"] == "blt":  # the byte-level entropy model has its own trainer and run folders
        from lib.blt.training import train_blt

        return train_blt(cfg, command, resume=args.resume)
    from lib.llm.training import train_from_config

    return train_from_config(cfg, command, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))
