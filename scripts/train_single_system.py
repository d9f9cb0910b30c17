"""Train on one system (or every system of a dataset) with the original project's flags.

Usage:
    make train CONFIG=configs/control/smollm2_cpu.yaml     # the config-driven equivalent
    python scripts/train_single_system.py --system double_integrator --dataset-name test_di \\
        --training-type sft --sft-max-samples 5
    python scripts/train_single_system.py --list-datasets
    python scripts/train_single_system.py --config configs/control/smollm2_cpu.yaml --dataset-name di_vdp \\
        --training-type both sft.max_steps=20

Each flag sets one config key (FLAG_KEYS); the schema holds every default. Precedence: schema defaults
< --config file < flags < trailing key=value overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lib.common.errors import run_cli

# flag (argparse dest) -> config key; the one mapping from the original flags onto the schema
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

    from lib.common.config import repo_path, resolve_config
    from lib.control.dataset import list_datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", help="train on this system's records only (models/<system>/)")
    parser.add_argument("--dataset-name", help="a dataset under datasets/ (see --list-datasets)")
    parser.add_argument("--training-type", choices=["sft", "grpo", "both"])
    parser.add_argument("--sft-max-samples", type=int, help="at most this many SFT records")
    parser.add_argument("--grpo-max-samples", type=int, help="at most this many GRPO prompts")
    parser.add_argument("--eval-max-samples", type=int, help="eval records for the final SFT eval loss")
    parser.add_argument("--lora-rank", type=int, help="LoRA rank")
    parser.add_argument("--max-seq-length", type=int, help="longest prompt + completion in tokens")
    parser.add_argument("--run-id", help="run folder name (default: the start time)")
    parser.add_argument("--resume", action="store_true", help="continue --run-id (default: the newest run)")
    parser.add_argument("--list-datasets", action="store_true", help="list the datasets and exit")
    parser.add_argument("--config", help="a config file (default: the schema's defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    values = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()}
    cfg = resolve_config(args.config, args.overrides, values=values)
    if args.list_datasets:
        for entry in list_datasets(repo_path(cfg["data"]["datasets_dir"])):
            print(
                f"{entry['name']:24s} train {entry['train']:6d}  eval {entry['eval']:5d}  {', '.join(entry['systems'])}"
            )
        return 0
    from lib.llm.training import train_from_config

    command = ["python", "scripts/train_single_system.py", *(sys.argv[1:] if argv is None else argv)]
    return train_from_config(cfg, command, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))
