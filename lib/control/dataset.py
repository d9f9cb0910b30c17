"""Datasets on disk (DESIGN.md 4): datasets/<name>/{train,eval}.jsonl + info.json.

A record is TRL's conversational prompt-completion format plus the ground truth:
    id, system, x0, prompt [system msg, user msg], completion [assistant msg], u_opt, J_opt, J_label,
    J_zero, x_final_opt, horizon {steps, dt}, bounds {u_min, u_max}, decimals, kkt_residual,
    starts_agreed, starts_total
u_opt / J_opt are the exact optimum for the rounded x0 the prompt shows; the completion prints u_label (the
optimum rounded to `decimals` decimals, lib/control/references.py) whose cost is J_label. Every record has the same
keys with the same JSON types (floats always written as floats), so `datasets.load_dataset("json", ...)`
reads the files as they are, whatever systems they mix.

Determinism: the initial states come from a generator seeded by (seed, crc32(system name)), the references
do not depend on batch order or worker count, and records are written in a fixed order (systems in the
order given, train before eval), so the same arguments give byte-identical jsonl files. info.json adds the
creation time and command, so it differs.

Writing is atomic: the whole folder is written under a temporary name in the output folder, then renamed;
an existing dataset (with --overwrite) is moved aside only once the new one is complete, then deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lib.common.errors import UsageError
from lib.control.answer import build_prompt, format_answers, parse_controls
from lib.control.metrics import j_floor, zero_control_cost
from lib.control.references import KKT_TOL_LINEAR, ReferenceSolution, solve_reference
from lib.control.systems import SYSTEMS, System, get_system, simulate, trajectory_cost

GENERATOR_VERSION = "1.0"
SPLITS = ("train", "eval")
RECORD_TYPES = {  # key -> JSON type every record must have
    "id": str,
    "system": str,
    "x0": list,
    "prompt": list,
    "completion": list,
    "u_opt": list,
    "J_opt": float,
    "J_label": float,
    "J_zero": float,
    "x_final_opt": list,
    "horizon": dict,
    "bounds": dict,
    "decimals": int,
    "kkt_residual": float,
    "starts_agreed": int,
    "starts_total": int,
}
RECORDS_CHECKED_ON_LOAD = 5  # the loader checks the shape of this many records per split (validate: all)


# ----------------------------------------------------------------------------------------------------------
# Building


def sample_initial_states(
    system: System, count: int, seed: int, decimals: int = 2, wide: bool = False
) -> np.ndarray:
    """`count` distinct initial states [count, n] on the printed grid k / 10^decimals inside the box.

    Distinct states keep train and eval apart; the target itself (a trivial problem) is never drawn.
    """
    q = 10**decimals
    box = system.x0_box_wide if wide else system.x0_box
    k_low = np.array([int(np.ceil(lo * q - 1e-9)) for lo, _ in box])
    sizes = np.array([int(np.floor(hi * q + 1e-9)) for _, hi in box]) - k_low + 1
    capacity = int(np.prod(sizes.astype(object)))  # exact integer, may exceed int64 for fine grids
    target_k = np.round(system.x_target * q)
    target_on_grid = bool(np.all(np.abs(system.x_target * q - target_k) < 1e-9)) and bool(
        np.all((target_k >= k_low) & (target_k < k_low + sizes))
    )
    if count > capacity - target_on_grid:
        which = "wide" if wide else "default"
        raise UsageError(
            f"{system.name}'s {which} initial-state box {list(box)} holds only {capacity - target_on_grid} "
            f"distinct states at {decimals} decimals, fewer than the {count} samples asked for.",
            fix="ask for fewer samples, raise --decimals, or use --wide for the wider box.",
        )
    rng = np.random.default_rng([seed, zlib.crc32(system.name.encode())])
    target = tuple(int(t) for t in target_k - k_low) if target_on_grid else None
    if capacity <= 2 * count + 1:  # dense request: a permutation of the whole (small) grid
        codes = rng.permutation(capacity)
        cells = np.stack(np.unravel_index(codes, sizes), axis=1)
        chosen = [cell for cell in map(tuple, cells.tolist()) if cell != target][:count]
    else:  # sparse: draw grid cells per coordinate, keep first occurrences, top up until enough
        seen: dict[tuple, None] = {}  # insertion-ordered set
        while len(seen) < count:
            for cell in map(
                tuple, rng.integers(0, sizes, size=(2 * (count - len(seen)) + 8, len(sizes))).tolist()
            ):
                if cell != target and len(seen) < count:
                    seen[cell] = None
        chosen = list(seen)
    k = np.array(chosen, dtype=np.int64).reshape(count, len(sizes)) + k_low
    return k / q  # k / q is the double nearest the decimal, the one float() gives for the printed text


def split_evenly(total: int, parts: int) -> list[int]:
    """total split into `parts` counts differing by at most one, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def record_lines(system: System, x0: np.ndarray, ref: ReferenceSolution, decimals: int) -> list[str]:
    """One JSON line per instance (fields in the module docstring)."""
    completions = format_answers(system, x0, ref.u_label, ref.J, decimals)
    J_zero = zero_control_cost(system, x0)
    x_final = simulate(system, x0, ref.u)[:, -1]
    horizon = {"steps": system.steps, "dt": float(system.dt)}
    bounds = {"u_min": float(system.u_min), "u_max": float(system.u_max)}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    lines = []
    for i in range(len(x0)):
        record = {
            "id": f"{system.name}-{i:06d}",
            "system": system.name,
            "x0": x0[i].tolist(),
            "prompt": build_prompt(system, x0[i], decimals),
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
) -> tuple[dict[str, list[str]], dict]:
    """({split: json lines}, info without files/created_at): samples split evenly over the systems."""
    systems = [get_system(name) for name in system_names]
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
        x0 = sample_initial_states(system, n_tr + n_ev, seed, decimals, wide)
        ref = solve_reference(system, x0, decimals=decimals, seed=seed, workers=workers, progress=progress)
        system_lines = record_lines(system, x0, ref, decimals)
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
        }
    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "decimals": decimals,
        "box": "wide" if wide else "default",
        "counts": {"train": n_train, "eval": n_eval},
        "cost": "J = sum_{k=0}^{N-1} [(x_k - x*)' Q (x_k - x*) + R u_k^2] + (x_N - x*)' Qf (x_N - x*)",
        "systems": info_systems,
    }
    return lines, info


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
# Writing and reading


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_dataset(
    output_dir: Path, name: str, lines: dict[str, list[str]], info: dict, overwrite: bool = False
) -> Path:
    """Write datasets/<name>/ atomically (module docstring) and return its path; info gains files/created_at."""
    output_dir = Path(output_dir)
    final = output_dir / name
    if final.exists() and not overwrite:
        raise UsageError(
            f"dataset '{name}' already exists in {output_dir}.",
            fix="pick another --dataset-name or add --overwrite.",
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        files = {}
        for split in SPLITS:
            data = "".join(line + "\n" for line in lines[split]).encode("utf-8")
            _write_bytes(partial / f"{split}.jsonl", data)
            files[f"{split}.jsonl"] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": len(lines[split]),
                "bytes": len(data),
            }
        info = {"name": name, **info, "files": files, "created_at": datetime.now(timezone.utc).isoformat()}
        _write_bytes(partial / "info.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"))
        if final.exists():
            old = output_dir / f".{name}.old-{os.getpid()}"
            final.rename(old)
            partial.rename(final)
            shutil.rmtree(old)
        else:
            partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _corrupt(path: Path, what: str) -> UsageError:
    name = path.name if path.is_dir() else path.parent.name
    return UsageError(
        f"dataset {path} is unusable: {what}",
        fix=f"regenerate it with `python scripts/generate_data.py ... --dataset-name {name} --overwrite` "
        "(its info.json records the command that made it), or pick another dataset.",
    )


def read_info(path: Path) -> dict:
    """info.json of a dataset folder, with a clear error when missing or unreadable."""
    path = Path(path)
    info_path = path / "info.json"
    if not path.is_dir():
        raise UsageError(
            f"no dataset folder at {path}.",
            fix="run `python scripts/generate_data.py --list` to see the datasets.",
        )
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise _corrupt(path, "info.json is missing (an interrupted or foreign folder).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"info.json is not valid JSON ({exc}).") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise _corrupt(path, "info.json has no 'files' table.")
    return info


def check_record(record: object, where: str) -> None:
    """Raise UsageError unless `record` has every key with its JSON type and consistent lengths."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: a record must be a JSON object, got {type(record).__name__}.")
    missing = [key for key in RECORD_TYPES if key not in record]
    extra = [key for key in record if key not in RECORD_TYPES]
    if missing or extra:
        raise UsageError(
            f"{where}: record keys differ from the format: missing {missing}, unexpected {extra}."
        )
    for key, kind in RECORD_TYPES.items():
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{where}: '{key}' should be a {kind.__name__}, got {type(value).__name__}.")
    system = SYSTEMS.get(record["system"])
    if system is None:
        raise UsageError(f"{where}: unknown system '{record['system']}'.")
    lengths = {"x0": system.n, "x_final_opt": system.n, "u_opt": system.steps}
    for key, length in lengths.items():
        values = record[key]
        if len(values) != length or not all(isinstance(v, float) for v in values):
            raise UsageError(f"{where}: '{key}' should be {length} floats.")
    prompt, completion = record["prompt"], record["completion"]
    roles = [m.get("role") if isinstance(m, dict) else None for m in prompt + completion]
    if roles != ["system", "user", "assistant"] or not all(
        isinstance(m.get("content"), str) for m in prompt + completion
    ):
        raise UsageError(
            f"{where}: prompt must be [system, user] and completion [assistant] messages with text."
        )
    if record["horizon"] != {"steps": system.steps, "dt": system.dt}:
        raise UsageError(f"{where}: horizon {record['horizon']} is not {system.name}'s.")


def _read_lines(path: Path, split: str, info: dict) -> list[str]:
    file = path / f"{split}.jsonl"
    expected = info["files"].get(f"{split}.jsonl", {})
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise _corrupt(path, f"{file.name} is missing.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256"):
        raise _corrupt(
            path,
            f"{file} has sha256 {digest[:16]}... but info.json records {str(expected.get('sha256'))[:16]}...: "
            "the file changed after it was written, or the copy is incomplete.",
        )
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"{file} is not UTF-8 text ({exc}).") from None


def _parse_line(path: Path, split: str, number: int, line: str) -> dict:
    where = f"{path / f'{split}.jsonl'} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"{where} is not valid JSON ({exc}).") from None
    try:
        check_record(record, where)
    except UsageError as exc:
        raise _corrupt(path, str(exc)) from None
    return record


def read_split(path: Path, split: str) -> list[dict]:
    """The records of one split, after checking the file's sha256 and the shape of its first records."""
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'.", fix=f"use one of: {', '.join(SPLITS)}")
    path = Path(path)
    info = read_info(path)
    lines = _read_lines(path, split, info)
    records = []
    for number, line in enumerate(lines, start=1):
        if number <= RECORDS_CHECKED_ON_LOAD:
            records.append(_parse_line(path, split, number, line))
        else:
            records.append(json.loads(line))
    return records


def validate_dataset(path: Path) -> dict:
    """Check everything: checksums, every record's shape, and every label against the simulator.

    Returns a summary {split: records, ...}; raises UsageError naming the first problem found.
    """
    path = Path(path)
    info = read_info(path)
    decimals = info.get("decimals")
    seen: dict[str, set] = {}
    summary = {}
    for split in SPLITS:
        records = [
            _parse_line(path, split, n, line) for n, line in enumerate(_read_lines(path, split, info), 1)
        ]
        expected = info["files"][f"{split}.jsonl"].get("records")
        if len(records) != expected:
            raise _corrupt(path, f"{split}.jsonl holds {len(records)} records, info.json says {expected}.")
        summary[split] = len(records)
        by_system: dict[str, list[dict]] = {}
        for record in records:
            by_system.setdefault(record["system"], []).append(record)
        for name, group in by_system.items():
            _check_labels(path, split, get_system(name), group, decimals)
            states = {tuple(r["x0"]) for r in group}
            if len(states) != len(group):
                raise _corrupt(path, f"{split}.jsonl repeats an initial state of {name}.")
            shared = seen.setdefault(name, set()) & states
            if shared:
                raise _corrupt(path, f"train and eval share {len(shared)} initial states of {name}.")
            seen[name] |= states
    return summary


def _check_labels(path: Path, split: str, system: System, group: list[dict], decimals: int) -> None:
    """Re-simulate a system's records of one split: bounds, J_opt, J_label, J_zero, x_final_opt, grid, KKT."""
    x0 = np.array([r["x0"] for r in group])
    u = np.array([r["u_opt"] for r in group])
    ids = [r["id"] for r in group]

    def fail(mask: np.ndarray, what: str) -> None:
        if np.any(mask):
            raise _corrupt(path, f"{split}.jsonl record {ids[int(np.argmax(mask))]}: {what}.")

    def differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b) > 1e-9 * np.maximum(1.0, np.abs(b))

    fail(np.array([r["decimals"] != decimals for r in group]), "decimals differ from info.json")
    fail(
        np.abs(x0 * 10**decimals - np.round(x0 * 10**decimals)).max(axis=1) > 1e-6,
        "x0 is not on the printed grid",
    )
    fail(((u > system.u_max) | (u < system.u_min)).any(axis=1), "u_opt violates the control bounds")
    states = simulate(system, x0, u)
    fail(
        differs(trajectory_cost(system, states, u), np.array([r["J_opt"] for r in group])),
        "J_opt != cost of u_opt",
    )
    fail(
        differs(states[:, -1], np.array([r["x_final_opt"] for r in group])).any(axis=1),
        "x_final_opt is wrong",
    )
    fail(differs(zero_control_cost(system, x0), np.array([r["J_zero"] for r in group])), "J_zero is wrong")
    parsed = [parse_controls(r["completion"][0]["content"], system.steps) for r in group]
    fail(np.array([not p.ok for p in parsed]), "the completion does not parse")
    label = np.array([p.values for p in parsed])
    fail(
        ((label > system.u_max) | (label < system.u_min)).any(axis=1), "the label violates the control bounds"
    )
    J_label = trajectory_cost(system, simulate(system, x0, label), label)
    fail(differs(J_label, np.array([r["J_label"] for r in group])), "J_label != cost of the printed controls")
    if system.is_linear:
        fail(np.array([r["kkt_residual"] > KKT_TOL_LINEAR for r in group]), "KKT residual above 1e-8")


def list_datasets(output_dir: Path) -> list[dict]:
    """[{name, train, eval, systems, created_at, path}] for each dataset folder in output_dir."""
    output_dir = Path(output_dir)
    found = []
    if not output_dir.is_dir():
        return found
    for folder in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            info = read_info(folder)
        except UsageError as exc:
            print(f"skipping {folder}: {exc}", file=sys.stderr)
            continue
        found.append(
            {
                "name": folder.name,
                "train": info.get("counts", {}).get("train"),
                "eval": info.get("counts", {}).get("eval"),
                "systems": list(info.get("systems", {})),
                "created_at": info.get("created_at", "?"),
                "path": str(folder),
            }
        )
    return found
