"""The on-disk format of a dataset (docs/ARCHITECTURE.md, "Datasets"): datasets/<name>/{train,eval}.jsonl +
info.json, and reading it back with every check loading makes.

A record is TRL's conversational prompt-completion format plus the ground truth:
    id, system, x0, prompt [system msg, user msg], completion [assistant msg], u_opt, J_opt, J_label,
    J_zero, x_final_opt, horizon {steps, dt}, bounds {u_min, u_max}, decimals, kkt_residual,
    starts_agreed, starts_total
u_opt / J_opt are the exact optimum for the rounded x0 the prompt shows; the completion prints u_label (the
optimum rounded to `decimals` decimals, lib/control/references.py) whose cost is J_label. Every record has the same
keys with the same JSON types (floats always written as floats), so `datasets.load_dataset("json", ...)`
reads the files as they are, whatever systems they mix.

Loading (read_info, read_split) checks info.json, each file's sha256 and the shape of the first
RECORDS_CHECKED_ON_LOAD records of a split; lib/control/dataset_checks.py (validate_dataset) checks every
record and re-derives every label. Building and writing: lib/control/dataset.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from lib.common.errors import UsageError
from lib.control.answer import PROMPT_STYLES, REASONING_STYLES
from lib.control.families import FAMILIES, check_parameters, check_system_name, family_system
from lib.control.systems import SYSTEMS

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


def unusable_dataset(path: Path, what: str) -> UsageError:
    """The error for a dataset that cannot be used: what is wrong, and how to make it again."""
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
        return unusable_dataset(path, f"info.json {what}")

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
        if name not in SYSTEMS and name not in FAMILIES:
            known = ", ".join([*SYSTEMS, *FAMILIES])
            raise bad(f"'systems' names an unknown system '{name}' (known: {known}).")
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
        raise unusable_dataset(path, "info.json is missing (an interrupted or foreign folder).") from None
    except IsADirectoryError:
        raise unusable_dataset(path, "info.json is a folder, not a file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise unusable_dataset(path, f"info.json is not valid JSON ({exc}).") from None
    except RecursionError:  # json's decoder recurses once per nesting level: 100,000 '[' overflow the stack
        raise unusable_dataset(path, "info.json nests deeper than any dataset's info.json does.") from None
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
    family = FAMILIES.get(record.get("system"))
    keys = {**RECORD_TYPES, "params": dict} if family else RECORD_TYPES  # a family member states its values
    missing = [key for key in keys if key not in record]
    extra = [key for key in record if key not in keys]
    if missing or extra:
        raise UsageError(
            f"{where}: record keys differ from the format: missing {missing}, unexpected {extra}."
        )
    for key, kind in RECORD_TYPES.items():
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{where}: '{key}' should be a {kind.__name__}, got {type(value).__name__}.")
    where = f"{where} (id {record['id']})"
    if family is not None:
        problem = check_parameters(
            family, record["params"], in_ranges=False
        )  # validate: the dataset's ranges
        if problem:
            raise UsageError(f"{where}: {problem}.")
        system = family_system(family.name, record["params"])
    else:
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


def read_split_lines(path: Path, split: str, info: dict) -> list[str]:
    """The lines of <split>.jsonl, after checking its sha256 against info.json (which read_info checked)."""
    file = path / f"{split}.jsonl"
    expected = info["files"][f"{split}.jsonl"]  # check_info made sure it is a table with a sha256
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise unusable_dataset(path, f"{file.name} is missing.") from None
    except IsADirectoryError:
        raise unusable_dataset(path, f"{file.name} is a folder, not a file.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise unusable_dataset(
            path,
            f"{file} has sha256 {digest[:16]}... but info.json records {expected['sha256'][:16]}...: "
            "the file changed after it was written, or the copy is incomplete.",
        )
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise unusable_dataset(path, f"{file} is not UTF-8 text ({exc}).") from None


def parse_record_line(path: Path, split: str, number: int, line: str, check: bool = True) -> dict:
    """Line `number` of <split>.jsonl as a record: with `check`, every key with its type (check_record);
    without, only a JSON object with a 'system'."""
    where = f"{path / f'{split}.jsonl'} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise unusable_dataset(path, f"{where} is not valid JSON ({exc}).") from None
    except RecursionError:  # see read_info
        raise unusable_dataset(path, f"{where} nests deeper than any record does.") from None
    if check:
        try:
            check_record(record, where)
        except UsageError as exc:
            raise unusable_dataset(path, str(exc)) from None
    elif not isinstance(record, dict) or not isinstance(record.get("system"), str):
        raise unusable_dataset(path, f"{where}: a record must be a JSON object with a 'system'.")
    return record


def read_split(path: Path, split: str) -> list[dict]:
    """The records of one split, after checking info.json, the file's sha256, the shape of its first records
    and that every record's system is one info.json describes."""
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'.", fix=f"use one of: {', '.join(SPLITS)}")
    path = Path(path)
    info = read_info(path)
    lines = read_split_lines(path, split, info)
    records = [
        parse_record_line(path, split, number, line, check=number <= RECORDS_CHECKED_ON_LOAD)
        for number, line in enumerate(lines, start=1)
    ]
    for number, record in enumerate(records, start=1):
        if record["system"] not in info["systems"]:
            raise unusable_dataset(
                path,
                f"{path / f'{split}.jsonl'} line {number}: 'system' {record['system']!r} is not in info.json's "
                f"systems ({', '.join(info['systems'])}).",
            )
    return records


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


def load_records(
    dataset_dir: Path,
    split: str,
    system: str | None = None,
    limit: int | None = None,
    round_robin: bool = False,
) -> tuple[list[dict], dict]:
    """(records, info) of one split, the one loader training, evaluation and the training-time control
    metrics share: checksummed (read_split), filtered to `system`, each record given its system's J_floor
    (info.json keeps it per system; rewards and metrics need it) and the dataset's prompt_style (MPC re-plans
    ask in the same style), then capped at `limit`. With round_robin the records are taken over the systems
    in turn (the first of each system, then the second, ...), so a cap keeps every system represented and
    picks the same records on every run; otherwise in file order."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise UsageError(
            f"dataset '{dataset_dir.name}' not found in {dataset_dir.parent}.",
            fix="make it with `python scripts/generate_data.py --dataset-name NAME ...` (or `make data`); "
            "`python scripts/generate_data.py --list` shows what exists.",
        )
    info = read_info(dataset_dir)
    records = read_split(dataset_dir, split)
    if system is not None:
        check_system_name(system)  # an unknown name fails with the valid ones
        records = [r for r in records if r["system"] == system]
        if not records:
            present = sorted(info.get("systems", {}))
            raise UsageError(
                f"dataset {dataset_dir} has no {split} records of system '{system}' (it has {', '.join(present)}).",
                fix=f"pick one of those systems, or omit --system (data.system); or generate one with --systems {system}.",
            )
    if not records:
        raise UsageError(
            f"dataset {dataset_dir} has an empty {split} split.",
            fix=f"regenerate it with {split} samples (scripts/generate_data.py --{split}-samples N).",
        )
    if round_robin:
        by_system: dict[str, list[dict]] = {}
        for record in records:
            by_system.setdefault(record["system"], []).append(record)
        records = [group[i] for i in range(len(records)) for group in by_system.values() if i < len(group)]
    records = records[:limit] if limit is not None else records
    for record in records:
        record["J_floor"] = info["systems"][record["system"]]["J_floor"]
        record["prompt_style"] = info.get("prompt_style", "full")
    return records, info
