"""Datasets on disk (docs/ARCHITECTURE.md, "Datasets"): datasets/<name>/{train,eval}.jsonl + info.json.

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
import math
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lib.common.atomic import atomic_dir, write_bytes_atomic
from lib.common.errors import UsageError
from lib.control.answer import (
    PROMPT_STYLES,
    REASONING_STYLES,
    build_prompt,
    format_answers,
    parse_controls,
)
from lib.control.metrics import j_floor, zero_control_cost
from lib.control.references import KKT_TOL_LINEAR, ReferenceSolution, linear_optima, solve_reference
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


def record_lines(
    system: System,
    x0: np.ndarray,
    ref: ReferenceSolution,
    decimals: int,
    prompt_style: str = "full",
    reasoning: str = "full",
) -> list[str]:
    """One JSON line per instance (fields in the module docstring); the styles only change the text of
    prompt and completion (lib/control/answer.py), never the ground truth."""
    completions = format_answers(system, x0, ref.u_label, ref.J, decimals, reasoning)
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
) -> tuple[dict[str, list[str]], dict]:
    """({split: json lines}, info without files/created_at): samples split evenly over the systems."""
    systems = [get_system(name) for name in system_names]
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
        x0 = sample_initial_states(system, n_tr + n_ev, seed, decimals, wide)
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
        }
    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "decimals": decimals,
        "prompt_style": prompt_style,
        "reasoning": reasoning,
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


def _corrupt(path: Path, what: str) -> UsageError:
    name = path.name if path.is_dir() else path.parent.name
    return UsageError(
        f"dataset {path} is unusable: {what}",
        fix=f"regenerate it with `python scripts/generate_data.py ... --dataset-name {name} --overwrite` "
        "(its info.json records the command that made it), or pick another dataset.",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: object) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def check_info(path: Path, info: object) -> None:
    """Raise UsageError unless info.json has what loading, training and evaluation read from it: files
    {split.jsonl: {sha256, records, bytes}}, counts {train, eval}, decimals, and systems {name: {train,
    eval, J_floor, ...}} naming at least one known system."""

    def bad(what: str) -> UsageError:
        return _corrupt(path, f"info.json {what}")

    if not isinstance(info, dict):
        raise bad(f"should be a JSON object, got {type(info).__name__}.")
    files = info.get("files")
    if not isinstance(files, dict):
        raise bad(
            f"'files' should be a table {{split.jsonl: {{sha256, records, bytes}}}}, got {_kind(files)}."
        )
    for split in SPLITS:
        entry = files.get(f"{split}.jsonl")
        if not isinstance(entry, dict):
            raise bad(f"'files' has no table for {split}.jsonl (got {_kind(entry)}).")
        if not isinstance(entry.get("sha256"), str):
            raise bad(
                f"'files.{split}.jsonl.sha256' should be a hex string, got {_kind(entry.get('sha256'))}."
            )
        for key in ("records", "bytes"):
            if not _is_int(entry.get(key)) or entry[key] < 0:
                raise bad(f"'files.{split}.jsonl.{key}' should be a count, got {_kind(entry.get(key))}.")
    counts = info.get("counts")
    if not isinstance(counts, dict) or not all(_is_int(counts.get(s)) for s in SPLITS):
        raise bad(f"'counts' should be {{train: count, eval: count}}, got {_kind(counts)}.")
    decimals = info.get("decimals")
    if not _is_int(decimals) or not 0 <= decimals <= 8:
        raise bad(f"'decimals' should be a whole number from 0 to 8, got {_kind(decimals)}.")
    for key, allowed in (("prompt_style", PROMPT_STYLES), ("reasoning", REASONING_STYLES)):
        if info.get(key, "full") not in allowed:  # datasets made before the styles existed are "full"
            raise bad(f"'{key}' should be one of {', '.join(allowed)}, got {_kind(info[key])}.")
    systems = info.get("systems")
    if not isinstance(systems, dict) or not systems:
        raise bad(
            f"'systems' should name at least one system (a table system -> its counts), got {_kind(systems)}: "
            "a dataset generated without systems holds no records."
        )
    for name, entry in systems.items():
        if name not in SYSTEMS:
            raise bad(f"'systems' names an unknown system '{name}' (known: {', '.join(SYSTEMS)}).")
        if not isinstance(entry, dict):
            raise bad(f"'systems.{name}' should be a table, got {_kind(entry)}.")
        if not all(_is_int(entry.get(s)) for s in SPLITS):
            raise bad(f"'systems.{name}' should count its train and eval records.")
        if not _is_finite(entry.get("J_floor")) or entry["J_floor"] <= 0:
            raise bad(
                f"'systems.{name}.J_floor' should be a positive number, got {_kind(entry.get('J_floor'))}."
            )


def read_info(path: Path) -> dict:
    """info.json of a dataset folder, with a clear error when missing, unreadable or malformed."""
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
    check_info(path, info)
    return info


def _non_finite(record: dict) -> tuple[str, object] | None:
    """(field, value) of the first number in the record that is NaN or infinite, or None."""
    for key in ("x0", "u_opt", "x_final_opt"):
        for i, value in enumerate(record[key]):
            if not math.isfinite(value):
                return f"{key}[{i}]", value
    for key in ("J_opt", "J_label", "J_zero", "kkt_residual"):
        if not math.isfinite(record[key]):
            return key, record[key]
    for key in ("horizon", "bounds"):
        for sub, value in record[key].items():
            if not _is_finite(value):
                return f"{key}.{sub}", value
    return None


def check_record(record: object, where: str) -> None:
    """Raise UsageError unless `record` has every key with its JSON type, finite numbers and consistent
    lengths; the message names `where` (file and line), the record's id and the field."""
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
    where = f"{where} (id {record['id']})"
    system = SYSTEMS.get(record["system"])
    if system is None:
        raise UsageError(f"{where}: 'system' is unknown: '{record['system']}'.")
    lengths = {"x0": system.n, "x_final_opt": system.n, "u_opt": system.steps}
    for key, length in lengths.items():
        values = record[key]
        if len(values) != length or not all(isinstance(v, float) for v in values):
            raise UsageError(f"{where}: '{key}' should be {length} floats.")
    bad = _non_finite(record)
    if bad is not None:
        raise UsageError(f"{where}: '{bad[0]}' is {bad[1]}, not a finite number.")
    prompt, completion = record["prompt"], record["completion"]
    roles = [m.get("role") if isinstance(m, dict) else None for m in prompt + completion]
    if roles != ["system", "user", "assistant"] or not all(
        isinstance(m.get("content"), str) for m in prompt + completion
    ):
        raise UsageError(
            f"{where}: 'prompt' must be [system, user] and 'completion' [assistant] messages with text."
        )
    if record["horizon"] != {"steps": system.steps, "dt": system.dt}:
        raise UsageError(f"{where}: 'horizon' {record['horizon']} is not {system.name}'s.")
    if record["bounds"] != {"u_min": system.u_min, "u_max": system.u_max}:
        raise UsageError(f"{where}: 'bounds' {record['bounds']} are not {system.name}'s.")
    if record["kkt_residual"] < 0:
        raise UsageError(f"{where}: 'kkt_residual' {record['kkt_residual']} is negative.")
    if not 1 <= record["starts_agreed"] <= record["starts_total"]:
        raise UsageError(
            f"{where}: 'starts_agreed' {record['starts_agreed']} should be from 1 to 'starts_total' "
            f"{record['starts_total']}."
        )


def _read_lines(path: Path, split: str, info: dict) -> list[str]:
    file = path / f"{split}.jsonl"
    expected = info["files"][f"{split}.jsonl"]  # check_info made sure it is a table with a sha256
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise _corrupt(path, f"{file.name} is missing.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise _corrupt(
            path,
            f"{file} has sha256 {digest[:16]}... but info.json records {expected['sha256'][:16]}...: "
            "the file changed after it was written, or the copy is incomplete.",
        )
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"{file} is not UTF-8 text ({exc}).") from None


def _parse_line(path: Path, split: str, number: int, line: str, check: bool = True) -> dict:
    where = f"{path / f'{split}.jsonl'} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"{where} is not valid JSON ({exc}).") from None
    if check:
        try:
            check_record(record, where)
        except UsageError as exc:
            raise _corrupt(path, str(exc)) from None
    elif not isinstance(record, dict) or not isinstance(record.get("system"), str):
        raise _corrupt(path, f"{where}: a record must be a JSON object with a 'system'.")
    return record


def read_split(path: Path, split: str) -> list[dict]:
    """The records of one split, after checking info.json, the file's sha256, the shape of its first records
    and that every record's system is one info.json describes."""
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'.", fix=f"use one of: {', '.join(SPLITS)}")
    path = Path(path)
    info = read_info(path)
    lines = _read_lines(path, split, info)
    records = [
        _parse_line(path, split, number, line, check=number <= RECORDS_CHECKED_ON_LOAD)
        for number, line in enumerate(lines, start=1)
    ]
    for number, record in enumerate(records, start=1):
        if record["system"] not in info["systems"]:
            raise _corrupt(
                path,
                f"{path / f'{split}.jsonl'} line {number}: 'system' {record['system']!r} is not in info.json's "
                f"systems ({', '.join(info['systems'])}).",
            )
    return records


LABEL_ABS_TOL = 1e-9  # stored numbers must re-simulate to within this (relative to max(1, |value|))
OPTIMUM_RTOL = 1e-9  # linear: J_opt within this (relative, plus 1e-15 absolute) of the re-solved J*
OPTIMUM_UTOL = 1e-6  # linear: u_opt within this fraction of (u_max - u_min) of the re-solved u*
_INITIAL_STATE = re.compile(r"x_0 = \(([^()]*)\)")  # "Initial state: x_0 = (...)" or, compact, "x_0 = (...)"


def validate_dataset(path: Path) -> dict:
    """Check everything: info.json, checksums, every record's shape and finite numbers, the x_0 its prompt
    shows, unique ids, counts against info.json, every label against the simulator, and for linear systems
    every optimum against a fresh exact solve.

    Returns a summary {split: records, ...}; raises UsageError naming the file, line, id and field of the
    first problem found.
    """
    path = Path(path)
    info = read_info(path)
    decimals = info["decimals"]
    seen_states: dict[str, set] = {}
    seen_ids: dict[str, str] = {}  # id -> "split.jsonl line N"
    summary = {}
    for split in SPLITS:
        file = path / f"{split}.jsonl"
        records = [
            _parse_line(path, split, n, line) for n, line in enumerate(_read_lines(path, split, info), 1)
        ]
        expected = info["files"][f"{split}.jsonl"]["records"]
        if len(records) != expected:
            raise _corrupt(path, f"{file} holds {len(records)} records, info.json's 'files' says {expected}.")
        if info["counts"][split] != len(records):
            raise _corrupt(
                path,
                f"{file} holds {len(records)} records, info.json's 'counts' says {info['counts'][split]}.",
            )
        if not records:
            raise _corrupt(path, f"{file} holds no records: a dataset needs train and eval records.")
        summary[split] = len(records)
        by_system: dict[str, list[tuple[int, dict]]] = {}
        for number, record in enumerate(records, start=1):
            where = f"{file} line {number} (id {record['id']})"
            if record["id"] in seen_ids:
                raise _corrupt(path, f"{where}: 'id' repeats the record at {seen_ids[record['id']]}.")
            seen_ids[record["id"]] = f"{file.name} line {number}"
            _check_prompt(path, where, record, decimals)
            by_system.setdefault(record["system"], []).append((number, record))
        for name in sorted(set(by_system) | set(info["systems"])):
            claimed = info["systems"].get(name, {}).get(split, 0)
            found = len(by_system.get(name, []))
            if claimed != found:
                raise _corrupt(
                    path, f"{file} holds {found} {name} records, info.json's 'systems' says {claimed}."
                )
        for name, group in by_system.items():
            _check_labels(path, file, get_system(name), group, decimals)
            states = {tuple(r["x0"]) for _, r in group}
            if len(states) != len(group):
                raise _corrupt(path, f"{file} repeats an initial state of {name}.")
            shared = seen_states.setdefault(name, set()) & states
            if shared:
                raise _corrupt(path, f"train and eval share {len(shared)} initial states of {name}.")
            seen_states[name] |= states
    return summary


def _check_prompt(path: Path, where: str, record: dict, decimals: int) -> None:
    """The x_0 the user message shows (the model sees only the prompt) must be the record's x0."""
    found = _INITIAL_STATE.findall(record["prompt"][1]["content"])
    try:
        shown = [float(v) for v in found[0].split(",")] if len(found) == 1 else None
    except ValueError:
        shown = None
    if shown is None:
        raise _corrupt(path, f"{where}: 'prompt' does not show one 'x_0 = (...)'.")
    x0 = record["x0"]
    if len(shown) != len(x0) or any(abs(s - x) > 1e-9 for s, x in zip(shown, x0, strict=True)):
        raise _corrupt(path, f"{where}: 'prompt' shows x_0 = ({found[0]}), but 'x0' is {x0}.")


def _check_labels(
    path: Path, file: Path, system: System, group: list[tuple[int, dict]], decimals: int
) -> None:
    """Re-simulate a system's records of one split: bounds, J_opt, J_label, J_zero, x_final_opt, grid, KKT;
    for a linear system also solve each problem again and compare the optimum."""
    lines = [n for n, _ in group]
    records = [r for _, r in group]
    x0 = np.array([r["x0"] for r in records])
    u = np.array([r["u_opt"] for r in records])

    def fail(mask: np.ndarray, field: str, what: str) -> None:
        if np.any(mask):
            i = int(np.argmax(mask))
            raise _corrupt(path, f"{file} line {lines[i]} (id {records[i]['id']}): '{field}' {what}.")

    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in records])

    def differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b) > LABEL_ABS_TOL * np.maximum(1.0, np.abs(b))

    fail(column("decimals") != decimals, "decimals", f"differs from info.json's {decimals}")
    fail(
        np.abs(x0 * 10**decimals - np.round(x0 * 10**decimals)).max(axis=1) > 1e-6,
        "x0",
        f"is not on the printed grid ({decimals} decimals)",
    )
    fail(((u > system.u_max) | (u < system.u_min)).any(axis=1), "u_opt", "violates the control bounds")
    states = simulate(system, x0, u)
    J_opt = column("J_opt")
    fail(differs(trajectory_cost(system, states, u), J_opt), "J_opt", "is not the simulated cost of u_opt")
    fail(
        differs(states[:, -1], column("x_final_opt")).any(axis=1),
        "x_final_opt",
        "is not the simulated final state of u_opt",
    )
    fail(
        differs(zero_control_cost(system, x0), column("J_zero")),
        "J_zero",
        "is not the simulated cost of u = 0",
    )
    parsed = [parse_controls(r["completion"][0]["content"], system.steps) for r in records]
    fail(np.array([not p.ok for p in parsed]), "completion", "does not parse")
    label = np.array([p.values for p in parsed])
    fail(
        ((label > system.u_max) | (label < system.u_min)).any(axis=1),
        "completion",
        "prints controls outside the control bounds",
    )
    J_label = trajectory_cost(system, simulate(system, x0, label), label)
    fail(differs(J_label, column("J_label")), "J_label", "is not the simulated cost of the printed controls")
    if not system.is_linear:
        return
    fail(column("kkt_residual") > KKT_TOL_LINEAR, "kkt_residual", f"is above {KKT_TOL_LINEAR:g}")
    # the optimum itself, independently of what the record claims: a fresh exact solve of the same problems
    u_star, J_star, residual = linear_optima(system, x0)
    tol = OPTIMUM_UTOL * (system.u_max - system.u_min)
    fail(
        np.abs(u - u_star).max(axis=1) > tol,
        "u_opt",
        f"is not the optimum: solving the problem again gives controls more than {tol:g} away",
    )
    fail(
        np.abs(J_opt - J_star) > OPTIMUM_RTOL * np.abs(J_star) + 1e-15,
        "J_opt",
        "is not the optimal cost: solving the problem again gives another J*",
    )
    fail(J_label < J_star * (1 - OPTIMUM_RTOL), "J_label", "is below the optimal cost J*")


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
