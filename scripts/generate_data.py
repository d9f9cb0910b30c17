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
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.atomic import check_writable_folder
from lib.common.config import repo_path, resolve_cli, split_overrides
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


def resolve_counts(settings: dict) -> tuple[int, int]:
    """(train, eval) from generate.train_samples + eval_samples when set, else total_samples x split_ratio."""
    n_train, n_eval = settings["train_samples"], settings["eval_samples"]
    if (n_train is None) != (n_eval is None):
        raise UsageError(
            "--train-samples and --eval-samples go together (generate.train_samples, generate.eval_samples).",
            fix="give both, or neither (then generate.total_samples x generate.split_ratio).",
        )
    if n_train is None:
        total = settings["total_samples"]
        n_train = min(max(round(total * settings["split_ratio"]), 1), total - 1)
        n_eval = total - n_train
    return n_train, n_eval


def system_names(systems: list[str] | None) -> list[str]:
    from lib.control.systems import SYSTEMS, get_system

    if not systems:
        raise UsageError(
            "no systems given.",
            fix=f"add --systems (generate.systems) with one or more of: {', '.join(SYSTEMS)}",
        )
    names: list[str] = []
    for item in systems:
        for name in item.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(get_system(name).name)  # UsageError listing the valid names
    return names


def check_dataset_name(name: str) -> None:
    """A dataset name is one plain folder name: not empty, not '.' or '..', no path separator, not hidden."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise UsageError(
            f"--dataset-name {name!r} (data.dataset_name) is not a plain folder name: it must be non-empty, contain "
            "no '/' or '\\', and not start with '.' (so not '.' or '..').",
            fix="pick a name such as di_vdp or test_di; --output-dir (data.datasets_dir) says where it goes.",
        )


def check_output_dir(output_dir: Path) -> None:
    """Refuse, before any work, an --output-dir that is a file, lies below a file, or cannot take new files."""
    fix = "pass a folder you can write to as --output-dir (data.datasets_dir); it is created if missing."
    check_writable_folder(output_dir, "--output-dir", fix)


def estimated_bytes(names: list[str], n_train: int, n_eval: int, decimals: int) -> int:
    """About how many bytes of JSON lines the dataset takes (a slight overestimate): per record a prompt and
    fixed fields (~2.1 kB), and per control step the full-precision optimum (~23 characters) and the printed
    label (decimals + ~8)."""
    from lib.control.dataset import split_evenly
    from lib.control.systems import get_system

    total = 0
    for name, count in zip(names, split_evenly(n_train + n_eval, len(names)), strict=True):
        total += count * (2100 + get_system(name).steps * (31 + decimals))
    return total


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_size(names: list[str], n_train: int, n_eval: int, settings: dict, output_dir: Path) -> None:
    """Refuse a dataset too large for this machine's memory (its lines are held, and joined once more while
    written) or for the free disk space, naming the sample count, before any work."""
    need = estimated_bytes(names, n_train, n_eval, settings["decimals"])
    flag = "--train-samples/--eval-samples" if settings["train_samples"] is not None else "--total-samples"
    asked = f"{n_train + n_eval} samples ({flag}: {n_train} train + {n_eval} eval, {settings['decimals']} decimals)"
    per_record = need / (n_train + n_eval)
    memory = physical_memory()
    if memory and 2.5 * need > memory:
        raise UsageError(
            f"{asked} make about {need / 1e9:.3g} GB of JSON lines, held in memory (about {2.5 * need / 1e9:.3g} "
            f"GB at the peak) while built and written: more than this machine's {memory / 1e9:.3g} GB.",
            fix=f"ask for fewer samples: at most about {int(memory / 2.5 / per_record)} fit here (e.g. "
            "--total-samples 100000); or generate on a machine with more memory.",
        )
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need > free:
        raise UsageError(
            f"{asked} make about {need / 1e9:.3g} GB of files, more than the {free / 1e9:.3g} GB free under "
            f"{existing}.",
            fix=f"ask for fewer samples (at most about {int(free / per_record)} fit), or free some disk space "
            "or pick another --output-dir.",
        )


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


def generate(args: argparse.Namespace, cfg: dict, argv: Sequence[str] | None) -> int:
    from tqdm import tqdm

    from lib.control.dataset import build_dataset, write_dataset

    settings = cfg["generate"]
    names = system_names(settings["systems"])
    n_train, n_eval = resolve_counts(settings)
    output_dir = repo_path(cfg["data"]["datasets_dir"])
    name = cfg["data"]["dataset_name"] or "_".join(names)
    check_dataset_name(name)  # before the work, not after: the name, the folder, the size
    check_output_dir(output_dir)
    check_size(names, n_train, n_eval, settings, output_dir)
    if (output_dir / name).exists() and not args.overwrite:
        raise UsageError(
            f"dataset '{name}' already exists in {output_dir}.",
            fix="pick another --dataset-name or add --overwrite (the old one is replaced only once the new one "
            "is complete).",
        )
    started = time.perf_counter()
    try:
        with tqdm(total=n_train + n_eval, unit="sample", file=sys.stderr, disable=None) as bar:
            lines, info = build_dataset(
                names,
                n_train,
                n_eval,
                seed=cfg["seed"],
                decimals=settings["decimals"],
                wide=settings["wide"],
                workers=settings["workers"],
                progress=bar.update,
                on_system=bar.set_description,
                prompt_style=settings["prompt_style"],
                reasoning=settings["reasoning"],
            )
        info["command"] = ["python", "scripts/generate_data.py", *(sys.argv[1:] if argv is None else argv)]
        info["config"] = cfg
        path = write_dataset(output_dir, name, lines, info, overwrite=args.overwrite)
    except MemoryError as exc:  # the training advice of describe_failure does not apply to data generation
        raise UsageError(
            f"ran out of memory generating {n_train + n_eval} samples ({n_train} train + {n_eval} eval) for "
            f"'{name}': {str(exc).splitlines()[0] if str(exc) else 'MemoryError'}. Nothing was written.",
            fix="ask for fewer samples (a smaller --total-samples, or --train-samples/--eval-samples), or "
            "generate on a machine with more memory.",
        ) from None
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
                f"warning: some {system} labels printed with {settings['decimals']} decimals cost more than 1% above "
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
    cfg = resolve_generate_config(args)
    datasets_dir = repo_path(cfg["data"]["datasets_dir"])
    if args.list:
        return show_list(datasets_dir)
    if args.validate:
        return show_validation(datasets_dir, args.validate)
    if args.preview:
        return show_preview(datasets_dir, args.preview)
    return generate(args, cfg, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
