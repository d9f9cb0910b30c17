"""Generate control problems with certified optimal answers: datasets/<name>/{train,eval}.jsonl + info.json.

Usage:
    make data                                            # the common case (see the Makefile)
    python scripts/generate_data.py --systems double_integrator --total-samples 10 --dataset-name test_di
    python scripts/generate_data.py --systems double_integrator van_der_pol --train-samples 900 \\
        --eval-samples 100 --dataset-name mixed --workers 2
    python scripts/generate_data.py --list               # datasets present, with counts and systems
    python scripts/generate_data.py --validate test_di   # checksums, every record, every label re-simulated
    python scripts/generate_data.py --preview test_di    # a few records, readable

Every setting is a config key (schemas/control.schema.json): each flag is a shorthand for one (`--systems` is
generate.systems, `--dataset-name` data.dataset_name, `--output-dir` data.datasets_dir, `--seed` seed), and
the defaults are the schema's. `--config FILE` and `key=value` overrides work as for main_trainer.py (the
pipeline's data phase runs `generate_data.py --config <its config.json>`); precedence: schema defaults <
`extends:` parents < the config file < flags < key=value. info.json records the resolved config.

Samples are split evenly over the systems (the first systems get the remainder). Labels are exact optima
for the rounded initial state the prompt shows (lib/control/references.py); the same seed gives byte-identical
jsonl files whatever --workers is (generate.train_samples and generate.eval_samples, when set, replace
generate.total_samples x generate.split_ratio). Existing datasets are kept unless --overwrite, and an overwritten one
is replaced only once the new one is completely written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import resolve_cli, split_overrides
from lib.common.errors import UsageError, run_cli

# Each flag's config key; the defaults are the schema's.
FLAG_KEYS = {
    "systems": "generate.systems",
    "total_samples": "generate.total_samples",
    "split_ratio": "generate.split_ratio",
    "train_samples": "generate.train_samples",
    "eval_samples": "generate.eval_samples",
    "dataset_name": "data.dataset_name",
    "seed": "seed",
    "output_dir": "data.datasets_dir",
    "decimals": "generate.decimals",
    "workers": "generate.workers",
    "wide": "generate.wide",
    "split": "generate.split",
    "sparse_fraction": "generate.sparse_fraction",
    "prompt_style": "generate.prompt_style",
    "reasoning": "generate.reasoning",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from lib.control.systems import SYSTEMS

    parser = argparse.ArgumentParser(
        description="Generate optimal-control datasets with certified optimal answers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"systems: {', '.join(SYSTEMS)}",
    )
    add = parser.add_argument  # no defaults (None = not given): they are the schema's (FLAG_KEYS)
    add("--systems", nargs="+", metavar="NAME", help="one or more systems (or a,b,c); generate.systems")
    add("--total-samples", type=int, help="train + eval records (default 1000); generate.total_samples")
    add("--split-ratio", type=float, help="train fraction of --total-samples (0.9); generate.split_ratio")
    add("--train-samples", type=int, help="train records (with --eval-samples); generate.train_samples")
    add("--eval-samples", type=int, help="eval records (with --train-samples); generate.eval_samples")
    add(
        "--dataset-name",
        help="folder name under --output-dir (default: the systems joined); data.dataset_name",
    )
    add("--seed", type=int, help="seed of the initial states and solver starts (default 42); seed")
    add("--output-dir", type=Path, help="where datasets live (default datasets/); data.datasets_dir")
    add("--decimals", type=int, help="decimals of the controls and of x0 (default 2); generate.decimals")
    add("--workers", type=int, help="processes for the nonlinear solves (default 2); generate.workers")
    add(
        "--wide", action="store_const", const=True, help="draw x0 from each system's wider box; generate.wide"
    )
    add(
        "--prompt-style",
        help="full (default: the problem in words) or compact (in symbols); generate.prompt_style",
    )
    add(
        "--split",
        help="random (default), extrapolation, sparse or held-out-parameters (families; the region: generate.held_out=JSON): what held out means; generate.split",
    )
    add("--sparse-fraction", type=float, help="--split sparse: train at most this fraction of the grid (0.1)")
    add("--reasoning", help="the labels' reasoning: full (default), brief or none; generate.reasoning")
    add("--overwrite", action="store_true", help="replace an existing dataset of that name")
    add("--list", action="store_true", help="list the datasets in --output-dir")
    add("--validate", metavar="NAME", help="check a dataset: checksums, records, labels")
    add("--preview", metavar="NAME", help="print a few records of a dataset")
    add("--config", help="a config file (default: the schema defaults)")
    add("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. generate.workers=4")
    args = parser.parse_intermixed_args(argv)
    args.systems, swallowed = split_overrides(args.systems)  # `--systems a b seed=3`
    args.overrides = [*swallowed, *args.overrides]
    if args.output_dir is not None:  # a path on the command line is from the current folder
        args.output_dir = args.output_dir.expanduser().absolute()
    if args.total_samples is not None and (args.train_samples is not None or args.eval_samples is not None):
        raise UsageError(
            "--total-samples cannot be combined with --train-samples/--eval-samples.",
            fix="give either --total-samples (with --split-ratio) or both --train-samples and --eval-samples.",
        )
    return args


def resolve_generate_config(args: argparse.Namespace) -> dict:
    """schema defaults < extends < --config < flags < key=value."""
    flags = {}
    for name, key in FLAG_KEYS.items():
        value = getattr(args, name)
        flags[key] = ("--" + name.replace("_", "-"), str(value) if isinstance(value, Path) else value)
    return resolve_cli(args.config, flags, args.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = resolve_generate_config(args)
    from lib.control.generate import generate_from_config  # once the arguments parse: bad flags fail fast

    command = ["python", "scripts/generate_data.py", *(sys.argv[1:] if argv is None else argv)]
    return generate_from_config(
        cfg,
        command,
        overwrite=args.overwrite,
        list_only=args.list,
        validate=args.validate,
        preview=args.preview,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
