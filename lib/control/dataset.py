"""Building a dataset and writing it to disk (docs/ARCHITECTURE.md, "Datasets"): initial states, exact
references, one JSON line per record, info.json. The format itself (record fields, info.json, loading):
lib/control/dataset_format.py; checks of a request and of a whole dataset: lib/control/dataset_checks.py.

Determinism: the initial states come from a generator seeded by (seed, crc32(system name)), the references
do not depend on batch order or worker count, and records are written in a fixed order (systems in the
order given, train before eval), so the same arguments give byte-identical jsonl files. info.json adds the
creation time and command, so it differs.

Writing is atomic: the whole folder is written under a temporary name in the output folder, then renamed;
an existing dataset (with --overwrite) is moved aside only once the new one is complete, then deleted. Only a
dataset is ever replaced (lib/common/outputs.py, the one rule): a folder whose info.json generate_data.py
wrote and that holds nothing but the files it lists, or an empty folder; anything else is refused up front.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lib.common.atomic import atomic_dir, write_bytes_atomic
from lib.common.errors import UsageError
from lib.common.outputs import check_replaceable_folder
from lib.control.answer import build_prompt, format_answers
from lib.control.dataset_format import GENERATOR_VERSION, SPLITS
from lib.control.families import FAMILIES, Family, draw_parameters, family_system, with_ranges
from lib.control.metrics import j_floor, zero_control_cost
from lib.control.references import ReferenceSolution, solve_family, solve_reference
from lib.control.systems import SYSTEMS, System, get_system, simulate

# ----------------------------------------------------------------------------------------------------------
# Building


def _grid(box, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_low, sizes): the printed grid k / 10^decimals inside a box, as integer cells."""
    q = 10**decimals
    k_low = np.array([int(np.ceil(lo * q - 1e-9)) for lo, _ in box])
    return k_low, np.array([int(np.floor(hi * q + 1e-9)) for _, hi in box]) - k_low + 1


def grid_problems(system: System, decimals: int, box=None, inside=None) -> int:
    """How many distinct initial states the printed grid holds in `box` (default: the system's default box),
    leaving out those in `inside` (a smaller box: the ring between them) and the target (a trivial problem)."""
    box = system.x0_box if box is None else box
    q = 10**decimals

    def cells(b) -> int:
        return int(np.prod(_grid(b, decimals)[1].astype(object)))

    def holds(b, x) -> bool:
        return all(lo - 1e-12 <= v <= hi + 1e-12 for (lo, hi), v in zip(b, x, strict=True))

    target_k = np.round(system.x_target * q)
    on_grid = bool(np.all(np.abs(system.x_target * q - target_k) < 1e-9))
    target = target_k / q
    count = cells(box) - (on_grid and holds(box, target))
    if inside is not None:
        count -= cells(inside) - (on_grid and holds(inside, target))
    return count


def sample_initial_states(
    system: System, count: int, seed: int, decimals: int = 2, wide: bool = False, outside=None
) -> np.ndarray:
    """`count` distinct initial states [count, n] on the printed grid k / 10^decimals inside the box (the
    wide one with `wide`), none inside the box `outside` when given (the ring between two boxes).

    Distinct states keep train and eval apart; the target itself (a trivial problem) is never drawn.
    """
    q = 10**decimals
    box = system.x0_box_wide if wide else system.x0_box
    k_low, sizes = _grid(box, decimals)
    capacity = int(np.prod(sizes.astype(object)))  # exact integer, may exceed int64 for fine grids
    target_k = np.round(system.x_target * q)
    target_on_grid = bool(np.all(np.abs(system.x_target * q - target_k) < 1e-9)) and bool(
        np.all((target_k >= k_low) & (target_k < k_low + sizes))
    )
    available = grid_problems(system, decimals, box, outside)
    if count > available:
        which = ("wide" if wide else "default") + (
            " (outside the default box)" if outside is not None else ""
        )
        raise UsageError(
            f"{system.name}'s {which} initial-state box {list(box)} holds only {available} "
            f"distinct states at {decimals} decimals, fewer than the {count} samples asked for.",
            fix="ask for fewer samples, raise --decimals, or use --wide for the wider box.",
        )
    excluded = None
    if outside is not None:  # cells of the inner box, in this grid's coordinates
        inner_low, inner_sizes = _grid(outside, decimals)
        excluded = (inner_low - k_low, inner_low - k_low + inner_sizes)

    def allowed(cell: tuple) -> bool:
        if cell == target:
            return False
        return excluded is None or not all(lo <= c < hi for c, lo, hi in zip(cell, *excluded, strict=True))

    rng = np.random.default_rng([seed, zlib.crc32(system.name.encode())])
    target = tuple(int(t) for t in target_k - k_low) if target_on_grid else None
    if capacity <= 2 * count + 1:  # dense request: a permutation of the whole (small) grid
        codes = rng.permutation(capacity)
        cells = np.stack(np.unravel_index(codes, sizes), axis=1)
        chosen = [cell for cell in map(tuple, cells.tolist()) if allowed(cell)][:count]
    else:  # sparse: draw grid cells per coordinate, keep first occurrences, top up until enough
        seen: dict[tuple, None] = {}  # insertion-ordered set
        while len(seen) < count:
            for cell in map(
                tuple, rng.integers(0, sizes, size=(2 * (count - len(seen)) + 8, len(sizes))).tolist()
            ):
                if allowed(cell) and len(seen) < count:
                    seen[cell] = None
        chosen = list(seen)
    k = np.array(chosen, dtype=np.int64).reshape(count, len(sizes)) + k_low
    return k / q  # k / q is the double nearest the decimal, the one float() gives for the printed text


SPLIT_KINDS = ("random", "extrapolation", "sparse")


def split_initial_states(
    system: System, n_train: int, n_eval: int, seed: int, decimals: int, wide: bool, split: str,
    sparse_fraction: float,
) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """(train x0, eval x0, coverage) for a split (docs/datasets.md, "Splits"): `random` draws both from one
    box; `extrapolation` draws train from the default box and eval from the ring between it and the wide
    box; `sparse` is random with the train split at most `sparse_fraction` of the grid. Train and eval never
    share a state. coverage: the distinct problems the training region holds and the fraction taken."""
    if split == "held-out-parameters":
        raise UsageError(
            f"--split held-out-parameters holds out a region of a family's parameters; {system.name} is a fixed "
            "system, whose problems differ only in x_0.",
            fix='use a family such as double_integrator_family (docs/datasets.md, "Families"), or another --split.',
        )
    if split == "extrapolation":
        train = sample_initial_states(system, n_train, seed, decimals)
        evaluation = sample_initial_states(
            system, n_eval, seed + 1, decimals, wide=True, outside=system.x0_box
        )
        problems = grid_problems(system, decimals)
        region = {"train_region": "default box", "eval_region": "wide box minus the default box",
                  "eval_problems": grid_problems(system, decimals, system.x0_box_wide, system.x0_box)}  # fmt: skip
    else:
        box = system.x0_box_wide if wide else system.x0_box
        problems = grid_problems(system, decimals, box)
        if split == "sparse" and n_train > sparse_fraction * problems:
            raise UsageError(
                f"--split sparse keeps the train split to at most {sparse_fraction:.0%} of {system.name}'s "
                f"{problems} grid states ({int(sparse_fraction * problems)}), fewer than the {n_train} train "
                "samples asked for.",
                fix=f"ask for at most {int(sparse_fraction * problems)} train samples per system, or raise "
                "--sparse-fraction (generate.sparse_fraction).",
            )
        x0 = sample_initial_states(system, n_train + n_eval, seed, decimals, wide)
        train, evaluation = x0[:n_train], x0[n_train:]
        region = {"train_region": f"{'wide' if wide else 'default'} box", "eval_region": "the same box"}
    coverage = {"problems": problems, "train_fraction": n_train / problems, **region}
    return train, evaluation, coverage


def split_evenly(total: int, parts: int) -> list[int]:
    """total split into `parts` counts differing by at most one, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def record_lines(
    system: System,
    x0: np.ndarray,
    ref: ReferenceSolution,
    decimals: int,
    prompt_style: str = "full",
    reasoning: str = "full",
    params: dict | None = None,
    first_index: int = 0,
) -> list[str]:
    """One JSON line per instance (fields: lib/control/dataset_format.py); the styles only change the text of
    prompt and completion (lib/control/answer.py), never the ground truth. A family member's records carry its
    drawn values (`params`, right after `system`); ids count from first_index."""
    completions = format_answers(system, x0, ref.u_label, ref.J, decimals, reasoning)
    J_zero = zero_control_cost(system, x0)
    x_final = simulate(system, x0, ref.u)[:, -1]
    horizon = {"steps": system.steps, "dt": float(system.dt)}
    bounds = {"u_min": float(system.u_min), "u_max": float(system.u_max)}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    lines = []
    for i in range(len(x0)):
        record = {
            "id": f"{system.name}-{first_index + i:06d}",
            "system": system.name,
            **({"params": params} if params is not None else {}),
            "x0": x0[i].tolist(),
            "prompt": build_prompt(system, x0[i], decimals, prompt_style),
            "completion": [{"role": "assistant", "content": completions[i]}],
            "u_opt": ref.u[i].tolist(),
            "J_opt": float(ref.J[i]),
            "J_label": float(ref.J_label[i]),
            "J_zero": float(J_zero[i]),
            "x_final_opt": x_final[i].tolist(),
            "horizon": horizon,
            "bounds": bounds,
            "decimals": decimals,
            "kkt_residual": float(ref.kkt_residual[i]),
            "starts_agreed": int(ref.starts_agreed[i]),
            "starts_total": int(ref.starts_total),
        }
        lines.append(dumps(record))
    return lines


def build_dataset(
    system_names: Sequence[str],
    n_train: int,
    n_eval: int,
    seed: int,
    decimals: int = 2,
    wide: bool = False,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    on_system: Callable[[str], None] | None = None,
    prompt_style: str = "full",
    reasoning: str = "full",
    split: str = "random",
    sparse_fraction: float = 0.1,
    held_out: dict | None = None,
    family_ranges: dict | None = None,
) -> tuple[dict[str, list[str]], dict]:
    """({split: json lines}, info without files/created_at): samples split evenly over the systems, train
    and eval states drawn as `split` says (split_initial_states)."""
    unknown = sorted(set(family_ranges or {}) - set(system_names))
    if unknown:
        raise UsageError(
            f"generate.family_ranges names {', '.join(unknown)}, which this dataset does not draw.",
            fix=f"name families among --systems ({', '.join(system_names)}).",
        )
    systems = [
        with_ranges(FAMILIES[name], (family_ranges or {}).get(name)) if name in FAMILIES else get_system(name)
        for name in system_names
    ]
    if not systems:
        raise UsageError(
            "no systems given: a dataset needs at least one.",
            fix=f"name one or more with --systems (valid: {', '.join(SYSTEMS)}).",
        )
    if min(n_train, n_eval) < len(systems):
        raise UsageError(
            f"{n_train} train and {n_eval} eval samples cannot give each of the {len(systems)} systems at least "
            "one of each.",
            fix=f"ask for at least {len(systems)} train and {len(systems)} eval samples (e.g. a larger "
            "--total-samples), or fewer systems.",
        )
    train_counts, eval_counts = split_evenly(n_train, len(systems)), split_evenly(n_eval, len(systems))
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    info_systems = {}
    for system, n_tr, n_ev in zip(systems, train_counts, eval_counts, strict=True):
        if on_system is not None:
            on_system(system.name)
        if isinstance(system, Family):
            family_lines, info_systems[system.name] = build_family(
                system, n_tr, n_ev, seed, decimals, wide, split, workers, progress, prompt_style, reasoning,
                held_out,
            )  # fmt: skip
            lines["train"] += family_lines[:n_tr]
            lines["eval"] += family_lines[n_tr:]
            continue
        train_x0, eval_x0, coverage = split_initial_states(
            system, n_tr, n_ev, seed, decimals, wide, split, sparse_fraction
        )
        x0 = np.concatenate([train_x0, eval_x0])
        ref = solve_reference(system, x0, decimals=decimals, seed=seed, workers=workers, progress=progress)
        system_lines = record_lines(system, x0, ref, decimals, prompt_style, reasoning)
        lines["train"] += system_lines[:n_tr]
        lines["eval"] += system_lines[n_tr:]
        floor = j_floor(ref.J)
        label_gap = (ref.J_label - ref.J) / np.maximum(ref.J, floor)
        info_systems[system.name] = {
            "train": n_tr,
            "eval": n_ev,
            **system_parameters(system, wide),
            "solver": ref.solver,
            "worst_kkt_residual": float(np.max(ref.kkt_residual)),
            "min_starts_agreed": int(np.min(ref.starts_agreed)),
            "starts_total": int(ref.starts_total),
            "median_J_opt": float(np.median(ref.J)),
            "J_floor": floor,
            "worst_label_gap": float(np.max(label_gap)),
            "coverage": coverage,
        }
    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "decimals": decimals,
        "prompt_style": prompt_style,
        "reasoning": reasoning,
        "box": "wide" if wide else "default",
        "split": split_record(split, sparse_fraction, held_out),
        "counts": {"train": n_train, "eval": n_eval},
        "cost": "J = sum_{k=0}^{N-1} [(x_k - x*)' Q (x_k - x*) + R u_k^2] + (x_N - x*)' Qf (x_N - x*)",
        "systems": info_systems,
    }
    return lines, info


def family_initial_states(system: System, rng: np.random.Generator, decimals: int, wide: bool) -> np.ndarray:
    """One initial state [n] on the printed grid of the member's box, never its target."""
    box = np.array(system.x0_box_wide if wide else system.x0_box)
    while True:
        x0 = np.round(rng.uniform(box[:, 0], box[:, 1]), decimals)
        if np.any(np.abs(x0 - system.x_target) > 1e-12):
            return x0


def split_record(split: str, sparse_fraction: float, held_out: dict | None) -> dict:
    """info.json's `split`: its kind and the setting that kind reads."""
    if split == "sparse":
        return {"kind": split, "sparse_fraction": sparse_fraction}
    if split == "held-out-parameters":
        return {"kind": split, "held_out": held_out}
    return {"kind": split}


def in_region(params: dict, held_out: dict) -> bool:
    """Every parameter the held-out region names lies in its interval."""
    return all(low - 1e-12 <= params[name] <= high + 1e-12 for name, (low, high) in held_out.items())


def check_held_out(family: Family, held_out: dict | None) -> None:
    """A held-out region names parameters of the family, each an interval that cuts its range in two."""
    if not held_out:
        raise UsageError(
            "--split held-out-parameters needs the region to hold out (generate.held_out).",
            fix=f"e.g. 'generate.held_out={{\"dt\": [0.5, 0.6]}}' (JSON); {family.name}'s parameters: "
            f"{', '.join(family.ranges)}.",
        )
    for name, (low, high) in held_out.items():
        if name not in family.ranges:
            raise UsageError(
                f"generate.held_out names '{name}', which {family.name} does not draw.",
                fix=f"name some of: {', '.join(family.ranges)}.",
            )
        full = family.ranges[name]
        if not (
            low < high and full.low <= low and high <= full.high and (low > full.low or high < full.high)
        ):
            raise UsageError(
                f"generate.held_out {name}: [{low:g}, {high:g}] should be a proper part of {family.name}'s range "
                f"[{full.low:g}, {full.high:g}] (low < high, inside it, not all of it).",
                fix=f"e.g. {name}: [{full.low + 0.75 * (full.high - full.low):.3g}, {full.high:g}].",
            )


def draw_split_parameters(
    family: Family, n_train: int, n_eval: int, rng: np.random.Generator, held_out: dict | None
) -> list[dict]:
    """n_train + n_eval parameter sets: all from the ranges, or (held_out) train outside the region and eval
    inside it, drawn from the ranges and kept on the side they fall."""
    if held_out is None:
        return draw_parameters(family, n_train + n_eval, rng)
    train: list[dict] = []
    evaluation: list[dict] = []
    for _ in range(1_000):  # each batch keeps the share of the ranges each side holds
        for params in draw_parameters(family, 4 * max(n_train, n_eval) + 16, rng):
            side, wanted = (evaluation, n_eval) if in_region(params, held_out) else (train, n_train)
            if len(side) < wanted:
                side.append(params)
        if len(train) == n_train and len(evaluation) == n_eval:
            return train + evaluation
    raise UsageError(
        f"generate.held_out {held_out} holds too small a share of {family.name}'s ranges for {n_eval} eval problems.",
        fix="widen the region, or ask for fewer eval samples.",
    )


def build_family(
    family: Family, n_train: int, n_eval: int, seed: int, decimals: int, wide: bool, split: str, workers: int,
    progress: Callable[[int], None] | None, prompt_style: str, reasoning: str, held_out: dict | None = None,
) -> tuple[list[str], dict]:  # fmt: skip
    """(json lines, info.json entry) of a family: each record its own drawn parameters and x0, labelled with
    the exact optimum of exactly its problem (docs/datasets.md, "Families"). Records are drawn independently
    from the ranges, so train and eval are two samples of one continuous distribution; with the
    held-out-parameters split eval problems come from the region `held_out` states, train ones from outside."""
    if split not in ("random", "held-out-parameters"):
        raise UsageError(
            f"--split {split} is not defined for a family ({family.name}): its problems are drawn from continuous "
            "ranges, not a grid.",
            fix="use --split random (the default) or held-out-parameters for families.",
        )
    if split == "held-out-parameters":
        check_held_out(family, held_out)
    rng = np.random.default_rng([seed, zlib.crc32(family.name.encode())])
    params = draw_split_parameters(family, n_train, n_eval, rng, held_out if split != "random" else None)
    systems = [family_system(family.name, p) for p in params]
    x0 = np.stack([family_initial_states(system, rng, decimals, wide) for system in systems])
    refs = solve_family(systems, x0, decimals, seed, workers, progress)  # one certified optimum per member
    lines, J, J_label, kkt, agreed, total = [], [], [], [], [], []
    for i, (system, ref) in enumerate(zip(systems, refs, strict=True)):
        lines += record_lines(system, x0[i : i + 1], ref, decimals, prompt_style, reasoning, params[i], i)
        J.append(ref.J[0])
        J_label.append(ref.J_label[0])
        kkt.append(ref.kkt_residual[0])
        agreed.append(ref.starts_agreed[0])
        total.append(ref.starts_total)
    J, J_label = np.array(J), np.array(J_label)
    floor = j_floor(J)
    return lines, {
        "train": n_train,
        "eval": n_eval,
        **family_parameters(family, wide),
        "solver": refs[0].solver,
        "worst_kkt_residual": float(np.max(kkt)),
        "min_starts_agreed": int(np.min(agreed)),
        "starts_total": int(np.max(total)),
        "median_J_opt": float(np.median(J)),
        "J_floor": floor,
        "worst_label_gap": float(np.max((J_label - J) / np.maximum(J, floor))),
        "coverage": {
            "kind": "continuous",
            **(
                {"train_region": f"outside {held_out}", "eval_region": f"inside {held_out}"}
                if split == "held-out-parameters"
                else {"train_region": "the family's ranges", "eval_region": "the same ranges"}
            ),
        },  # fmt: skip
    }


def family_parameters(family: Family, wide: bool = False) -> dict:
    """What info.json states of a family: its ranges and what every member shares."""
    member = family_system(family.name, {name: r.low for name, r in family.ranges.items()} | {
        name: int(r.low) for name, r in family.ranges.items() if r.scale == "integer"})  # fmt: skip
    box = member.x0_box_wide if wide else member.x0_box
    return {
        "linear": member.is_linear,
        "family": family.base,
        "ranges": {name: [r.low, r.high, r.scale, r.digits] for name, r in family.ranges.items()},
        "state_names": list(member.state_names),
        "x0_box": [list(b) for b in box],
    }


def system_parameters(system: System, wide: bool = False) -> dict:
    """The parameters of a system as JSON (for info.json)."""
    box = system.x0_box_wide if wide else system.x0_box
    return {
        "linear": system.is_linear,
        "dt": system.dt,
        "steps": system.steps,
        "u_min": system.u_min,
        "u_max": system.u_max,
        "state_names": list(system.state_names),
        "x_target": system.x_target.tolist(),
        "Q": system.Q.tolist(),
        "R": system.R,
        "Qf": system.Qf.tolist(),
        "x0_box": [list(b) for b in box],
    }


# ----------------------------------------------------------------------------------------------------------
# Writing


def dataset_files(path: Path) -> set[str] | None:
    """The names generate_data.py wrote into the folder `path` (info.json and the files it lists), or None
    when the folder has no info.json of generate_data.py's (it records generator_version)."""
    try:
        info = json.loads((Path(path) / "info.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or "generator_version" not in info:
        return None
    files = info.get("files")
    listed = [name for name in files if isinstance(name, str)] if isinstance(files, dict) else []
    return {"info.json", *(f"{split}.jsonl" for split in SPLITS), *listed}


def check_dataset_target(output_dir: Path, name: str, overwrite: bool) -> None:
    """Refuse (exit 2, nothing touched) writing dataset `name` into output_dir where a folder of that name
    exists, unless `overwrite` and it is a dataset (dataset_files) with nothing else in it, or empty."""
    path = Path(output_dir) / name
    if not overwrite:
        if path.exists() or path.is_symlink():
            raise UsageError(
                f"dataset '{name}' already exists in {output_dir}.",
                fix="pick another --dataset-name or add --overwrite (the old one is replaced only once the new "
                "one is complete).",
            )
        return
    check_replaceable_folder(
        path,
        dataset_files,
        "--overwrite",
        "generate_data.py",
        fix=f"pick another --dataset-name, or move {path} away if you no longer need it there; --overwrite "
        "replaces a folder generate_data.py made (its info.json) holding nothing else, or an empty one.",
    )


def write_dataset(
    output_dir: Path, name: str, lines: dict[str, list[str]], info: dict, overwrite: bool = False
) -> Path:
    """Write datasets/<name>/ atomically (module docstring) and return its path; info gains files/created_at.
    A folder of that name is replaced only with `overwrite`, and only when it is a dataset
    (check_dataset_target)."""
    output_dir = Path(output_dir)
    final = output_dir / name
    check_dataset_target(output_dir, name, overwrite)
    with atomic_dir(final) as partial:  # the old dataset is replaced only once the new one is complete
        files = {}
        for split in SPLITS:
            data = "".join(line + "\n" for line in lines[split]).encode("utf-8")
            write_bytes_atomic(partial / f"{split}.jsonl", data, fsync=True)
            files[f"{split}.jsonl"] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": len(lines[split]),
                "bytes": len(data),
            }
        info = {"name": name, **info, "files": files, "created_at": datetime.now(timezone.utc).isoformat()}
        write_bytes_atomic(
            partial / "info.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"), fsync=True
        )
    return final
