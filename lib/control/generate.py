"""The dataset job of scripts/generate_data.py (docs/ARCHITECTURE.md, "Datasets"): from a resolved control
config, list the datasets, validate or preview one, or generate one, and print the result.

    generate_from_config(cfg, ["python", "scripts/generate_data.py", ...])              # generate
    generate_from_config(cfg, command, validate="test_di")                              # --validate

Generating checks the request before any work (lib/control/dataset_checks.py: systems, counts, name,
output folder, size), builds the records with a progress bar (lib/control/dataset.py) and writes the folder
atomically; an existing dataset is replaced only with `overwrite`, once the new one is complete.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import repo_path
from lib.common.errors import UsageError
from lib.control.dataset import build_dataset, check_dataset_target, write_dataset
from lib.control.dataset_checks import (
    check_dataset_name,
    check_output_dir,
    check_size,
    resolve_counts,
    system_names,
    validate_dataset,
)
from lib.control.dataset_format import list_datasets, read_info, read_split


def generate_from_config(
    cfg: dict,
    command: Sequence[str],
    *,
    overwrite: bool = False,
    list_only: bool = False,
    validate: str | None = None,
    preview: str | None = None,
) -> int:
    """The job generate_data.py asks for, from the resolved config `cfg` (data.datasets_dir, data.dataset_name,
    seed, generate.*): with `list_only` the datasets present, with `validate` or `preview` (a dataset name)
    that check or a few records, else a new dataset whose info.json records `command` and `cfg`. Returns the
    exit code; bad input raises UsageError."""
    datasets_dir = repo_path(cfg["data"]["datasets_dir"])
    if list_only:
        return show_list(datasets_dir)
    if validate:
        check_dataset_name(validate, "--validate")  # a name under datasets_dir, never a path elsewhere
        return show_validation(datasets_dir, validate)
    if preview:
        check_dataset_name(preview, "--preview")
        return show_preview(datasets_dir, preview)
    return generate(cfg, command, overwrite)


def show_list(output_dir: Path) -> int:
    found = list_datasets(output_dir)
    if not found:
        print(f"no datasets in {output_dir}")
        return 0
    print(f"{'name':<28} {'train':>7} {'eval':>6}  systems")
    for d in found:
        print(f"{d['name']:<28} {d['train']:>7} {d['eval']:>6}  {', '.join(d['systems'])}")
    return 0


def show_validation(output_dir: Path, name: str) -> int:
    started = time.perf_counter()
    summary = validate_dataset(output_dir / name)
    counts = ", ".join(f"{split} {n}" for split, n in summary.items())
    print(
        f"{name}: OK ({counts} records): checksums match, every record has the format, every label "
        f"re-simulates to its stored costs ({time.perf_counter() - started:.1f} s)"
    )
    return 0


def show_preview(output_dir: Path, name: str, count: int = 3) -> int:
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


def generate(cfg: dict, command: Sequence[str], overwrite: bool = False) -> int:
    """Check the request, build the dataset with a progress bar on stderr, write it, print what it holds."""
    from tqdm import tqdm

    settings = cfg["generate"]
    names = system_names(settings["systems"])
    n_train, n_eval = resolve_counts(settings)
    output_dir = repo_path(cfg["data"]["datasets_dir"])
    name = cfg["data"]["dataset_name"] or "_".join(names)
    check_dataset_name(name)  # before the work, not after: the name, the folder, the size
    check_output_dir(output_dir)
    check_size(names, n_train, n_eval, settings, output_dir)
    check_dataset_target(output_dir, name, overwrite)  # only a dataset is replaced, and only with overwrite
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
                split=settings["split"],
                sparse_fraction=settings["sparse_fraction"],
                held_out=settings["held_out"],
                family_ranges=settings["family_ranges"],
                workers=settings["workers"],
                progress=bar.update,
                on_system=bar.set_description,
                prompt_style=settings["prompt_style"],
                reasoning=settings["reasoning"],
            )
        info["command"] = list(command)
        info["config"] = cfg
        path = write_dataset(output_dir, name, lines, info, overwrite=overwrite)
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
