"""Generate control problems with certified optimal answers: datasets/<name>/{train,eval}.jsonl + info.json.

Usage:
    make data                                            # the common case (see the Makefile)
    python scripts/generate_data.py --systems double_integrator --total-samples 10 --dataset-name test_di
    python scripts/generate_data.py --systems double_integrator van_der_pol --train-samples 900 \\
        --eval-samples 100 --dataset-name mixed --workers 2
    python scripts/generate_data.py --list               # datasets present, with counts and systems
    python scripts/generate_data.py --validate test_di   # checksums, every record, every label re-simulated
    python scripts/generate_data.py --preview test_di    # a few records, readable

Samples are split evenly over the systems (the first systems get the remainder). Labels are exact optima
for the rounded initial state the prompt shows (lib/control/references.py); the same seed gives byte-identical
jsonl files whatever --workers is. Existing datasets are kept unless --overwrite, and an overwritten one
is replaced only once the new one is completely written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import ROOT
from lib.common.errors import UsageError, run_cli


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from lib.control.systems import SYSTEMS

    parser = argparse.ArgumentParser(
        description="Generate optimal-control datasets with certified optimal answers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"systems: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--systems", nargs="+", metavar="NAME", help="one or more systems (or a,b,c)")
    parser.add_argument("--total-samples", type=int, help="train + eval records (default 1000)")
    parser.add_argument("--split-ratio", type=float, default=0.9, help="train fraction of --total-samples")
    parser.add_argument("--train-samples", type=int, help="train records (with --eval-samples)")
    parser.add_argument("--eval-samples", type=int, help="eval records (with --train-samples)")
    parser.add_argument("--dataset-name", help="folder name under --output-dir (default: the systems joined)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "datasets")
    parser.add_argument(
        "--decimals", type=int, default=2, help="decimals of the controls and of x0 (default 2)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes for the nonlinear solves")
    parser.add_argument("--wide", action="store_true", help="draw x0 from each system's wider box")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    parser.add_argument("--list", action="store_true", help="list the datasets in --output-dir")
    parser.add_argument("--validate", metavar="NAME", help="check a dataset: checksums, records, labels")
    parser.add_argument("--preview", metavar="NAME", help="print a few records of a dataset")
    return parser.parse_args(argv)


def resolve_counts(args: argparse.Namespace) -> tuple[int, int]:
    """(train, eval) from --total-samples/--split-ratio or --train-samples/--eval-samples."""
    split_given = args.train_samples is not None or args.eval_samples is not None
    if split_given and args.total_samples is not None:
        raise UsageError(
            "--total-samples cannot be combined with --train-samples/--eval-samples.",
            fix="give either --total-samples (with --split-ratio) or both --train-samples and --eval-samples.",
        )
    if split_given:
        if args.train_samples is None or args.eval_samples is None:
            raise UsageError("--train-samples and --eval-samples go together.", fix="give both.")
        n_train, n_eval = args.train_samples, args.eval_samples
    else:
        if not 0.0 < args.split_ratio < 1.0:
            raise UsageError(
                f"--split-ratio {args.split_ratio} is not between 0 and 1.", fix="e.g. --split-ratio 0.9"
            )
        total = 1000 if args.total_samples is None else args.total_samples
        if total < 2:
            raise UsageError(
                f"--total-samples {total} is too small.", fix="ask for at least 2 (train and eval)."
            )
        n_train = min(max(round(total * args.split_ratio), 1), total - 1)
        n_eval = total - n_train
    if n_train < 1 or n_eval < 1:
        raise UsageError(
            f"train ({n_train}) and eval ({n_eval}) must both hold at least one record.",
            fix="raise the sample counts.",
        )
    return n_train, n_eval


def system_names(args: argparse.Namespace) -> list[str]:
    from lib.control.systems import SYSTEMS, get_system

    if not args.systems:
        raise UsageError("no systems given.", fix=f"add --systems with one or more of: {', '.join(SYSTEMS)}")
    names: list[str] = []
    for item in args.systems:
        for name in item.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(get_system(name).name)  # UsageError listing the valid names
    return names


def show_list(output_dir: Path) -> int:
    from lib.control.dataset import list_datasets

    found = list_datasets(output_dir)
    if not found:
        print(f"no datasets in {output_dir}")
        return 0
    print(f"{'name':<28} {'train':>7} {'eval':>6}  systems")
    for d in found:
        print(f"{d['name']:<28} {d['train']:>7} {d['eval']:>6}  {', '.join(d['systems'])}")
    return 0


def show_validation(output_dir: Path, name: str) -> int:
    from lib.control.dataset import validate_dataset

    started = time.perf_counter()
    summary = validate_dataset(output_dir / name)
    counts = ", ".join(f"{split} {n}" for split, n in summary.items())
    print(
        f"{name}: OK ({counts} records): checksums match, every record has the format, every label "
        f"re-simulates to its stored costs ({time.perf_counter() - started:.1f} s)"
    )
    return 0


def show_preview(output_dir: Path, name: str, count: int = 3) -> int:
    from lib.control.dataset import read_info, read_split

    path = output_dir / name
    info = read_info(path)
    records = read_split(path, "train")
    chosen, systems = [], set()
    for record in records:  # the first record of each system, then the next ones
        if record["system"] not in systems:
            chosen.append(record)
            systems.add(record["system"])
    chosen += [r for r in records if r not in chosen][: max(0, count - len(chosen))]
    print(f"{name}: {info['counts']}, systems {list(info['systems'])}, created {info.get('created_at', '?')}")
    for record in chosen[: max(count, len(systems))]:
        print("=" * 100)
        print(
            f"{record['id']}  x0={record['x0']}  J*={record['J_opt']:.6g}  J_label={record['J_label']:.6g}  "
            f"J0={record['J_zero']:.6g}  kkt={record['kkt_residual']:.1e}  "
            f"starts {record['starts_agreed']}/{record['starts_total']}"
        )
        print("-- user " + "-" * 92)
        print(record["prompt"][1]["content"])
        print("-- assistant " + "-" * 87)
        print(record["completion"][0]["content"])
    return 0


def generate(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from tqdm import tqdm

    from lib.control.dataset import build_dataset, write_dataset

    names = system_names(args)
    n_train, n_eval = resolve_counts(args)
    if not 0 <= args.decimals <= 6:
        raise UsageError(f"--decimals {args.decimals} is out of range.", fix="use 0 to 6 (default 2).")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1.", fix="e.g. --workers 2")
    name = args.dataset_name or "_".join(names)
    if (args.output_dir / name).exists() and not args.overwrite:  # refuse before the work, not after
        raise UsageError(
            f"dataset '{name}' already exists in {args.output_dir}.",
            fix="pick another --dataset-name or add --overwrite (the old one is replaced only once the new one "
            "is complete).",
        )
    started = time.perf_counter()
    with tqdm(total=n_train + n_eval, unit="sample", file=sys.stderr, disable=None) as bar:
        lines, info = build_dataset(
            names,
            n_train,
            n_eval,
            seed=args.seed,
            decimals=args.decimals,
            wide=args.wide,
            workers=args.workers,
            progress=bar.update,
            on_system=bar.set_description,
        )
    info["command"] = ["python", "scripts/generate_data.py", *(sys.argv[1:] if argv is None else argv)]
    path = write_dataset(args.output_dir, name, lines, info, overwrite=args.overwrite)
    elapsed = time.perf_counter() - started
    print(f"wrote {path}: train {n_train}, eval {n_eval} records ({elapsed:.1f} s)")
    for system, details in info["systems"].items():
        print(
            f"  {system:<18} train {details['train']:>6} eval {details['eval']:>5}  "
            f"worst KKT residual {details['worst_kkt_residual']:.1e}  "
            f"starts agreed >= {details['min_starts_agreed']}/{details['starts_total']}  "
            f"worst label gap {details['worst_label_gap']:.1e}"
        )
        if details["worst_label_gap"] > 0.01:
            print(
                f"warning: some {system} labels printed with {args.decimals} decimals cost more than 1% above "
                "J* (they fail success@1%); more --decimals makes them exact enough.",
                file=sys.stderr,
            )
        if details["worst_kkt_residual"] > 1e-6:
            print(
                f"warning: some {system} references certify only to a KKT residual above 1e-6.",
                file=sys.stderr,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        return show_list(args.output_dir)
    if args.validate:
        return show_validation(args.output_dir, args.validate)
    if args.preview:
        return show_preview(args.output_dir, args.preview)
    return generate(args, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
