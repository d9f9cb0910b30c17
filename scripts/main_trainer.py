"""Train from one config: SFT, GRPO or both (control), or the byte-level entropy model (blt), on CUDA, MPS or CPU.

Usage:
    make train CONFIG=configs/control/smollm2_cpu.yaml
    python scripts/main_trainer.py --config configs/control/smollm2_cpu.yaml data.dataset_name=test_di
    python scripts/main_trainer.py --config FILE training_type=both run.run_id=exp1 --resume

    make train-mps ARGS="max_steps=20 eval_steps=10"      # the byte-level entropy model, MPS profile
    python scripts/main_trainer.py --config configs/blt/entropy_cpu.json max_steps=200 run_id=b1 --resume

Overrides are `key.sub=value` after the config (see schemas/control.schema.json, schemas/blt.schema.json).
The config's `model_type` picks the model family: `control` (the language-model controller; runs in
models/<system or universal>/<sft|grpo>/<run_id>/, lib/llm/training.py) or `blt` (the byte-level entropy model;
runs in <output_dir>/<run_id>/, default models/blt, lib/blt/training.py). Exit codes: 0 done, 1 failed,
2 bad config or input, 130 stopped by SIGTERM / Ctrl-C with a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lib.common.config import resolve_config
from lib.common.errors import run_cli


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a YAML or JSON config (configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--resume", action="store_true", help="continue run.run_id (default: the newest run)")
    args = parser.parse_args(argv)
    cfg = resolve_config(args.config, args.overrides)
    command = ["python", "scripts/main_trainer.py", *(sys.argv[1:] if argv is None else argv)]
    if cfg["model_type"] == "blt":  # the byte-level entropy model has its own trainer and run folders
        from lib.blt.training import train_blt

        return train_blt(cfg, command, resume=args.resume)
    from lib.llm.training import train_from_config

    return train_from_config(cfg, command, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))
