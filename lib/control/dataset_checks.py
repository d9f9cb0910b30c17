"""Checking datasets (docs/ARCHITECTURE.md, "Datasets"): a request before any work is done, and a dataset
made already, against the request or record by record.

Before any work (scripts/generate_data.py, through lib/control/generate.py): the systems named
(system_names), the train and eval counts (resolve_counts), the dataset name (check_dataset_name), the output
folder (check_output_dir), and whether the files fit this machine's memory and free disk (check_size).
A dataset that exists: made with the settings a pipeline asks for (check_existing_dataset), or valid record
by record, every label re-simulated and every linear optimum solved again (validate_dataset, `--validate`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from lib.common.atomic import check_writable_folder
from lib.common.config.schema import shared_schema
from lib.common.errors import UsageError
from lib.control.answer import build_prompt, format_answers, parse_controls
from lib.control.dataset import (
    family_parameters,
    grid_problems,
    in_region,
    split_evenly,
    split_record,
    system_parameters,
)
from lib.control.dataset_format import (
    SPLITS,
    parse_record_line,
    read_info,
    read_split_lines,
    unusable_dataset,
)
from lib.control.families import (
    FAMILIES,
    Family,
    check_parameters,
    check_system_name,
    record_system,
    with_ranges,
)
from lib.control.labels import LABEL_GAP_PROMISE, PROMISE_DECIMALS, round_plain
from lib.control.metrics import j_floor, zero_control_cost
from lib.control.references import KKT_TOL_LINEAR, linear_optima
from lib.control.systems import SYSTEMS, System, get_system, simulate, trajectory_cost

# ----------------------------------------------------------------------------------------------------------
# A request, before any work


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
    """The systems asked for (generate.systems: names, or comma-separated lists of them), each once, in order."""
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
                names.append(check_system_name(name))  # UsageError listing the valid names
    return names


def check_dataset_name(name: str, flag: str = "--dataset-name") -> None:
    """A dataset name is one plain folder name, the pattern of schemas/shared/dataset_name.json (which the
    config loader applies to data.dataset_name): checked wherever a name is read or written, so no flag can
    reach a folder outside data.datasets_dir."""
    rule = shared_schema("dataset_name")
    if not isinstance(name, str) or len(name) > rule["maxLength"] or not re.fullmatch(rule["pattern"], name):
        raise UsageError(
            f"{flag} {name!r} (data.dataset_name) is not a dataset name: a plain name of letters, digits, '.', "
            f"'_' and '-' that starts with a letter or digit (at most {rule['maxLength']} characters), never a path.",
            fix="pick a name such as di_vdp or test_di; --output-dir (data.datasets_dir) says where datasets are "
            "(`python scripts/generate_data.py --list` shows them).",
        )


def check_output_dir(output_dir: Path) -> None:
    """Refuse, before any work, an --output-dir that is a file, lies below a file, or cannot take new files."""
    fix = "pass a folder you can write to as --output-dir (data.datasets_dir); it is created if missing."
    check_writable_folder(output_dir, "--output-dir", fix)


def estimated_bytes(names: list[str], n_train: int, n_eval: int, decimals: int) -> int:
    """About how many bytes of JSON lines the dataset takes (a slight overestimate): per record a prompt and
    fixed fields (~2.1 kB), and per control step the full-precision optimum (~23 characters) and the printed
    label (decimals + ~8)."""
    total = 0
    for name, count in zip(names, split_evenly(n_train + n_eval, len(names)), strict=True):
        steps = int(FAMILIES[name].ranges["steps"].high) if name in FAMILIES else get_system(name).steps
        total += count * (2100 + steps * (31 + decimals))
    return total


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the platform does not say."""
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


def check_existing_dataset(path: Path, settings: dict) -> None:
    """An existing dataset is used only if it was made with the pipeline's generate settings: the same
    systems (when generate.systems is set), decimals, box, split, prompt style, reasoning and counts (train and eval
    when set, else the total)."""
    info = read_info(path)
    counts = info["counts"]
    found = {
        "systems": list(info["systems"]),
        "decimals": info["decimals"],
        "wide": info.get("box") == "wide",
        "split": info.get("split", {"kind": "random"}),
        "prompt_style": info.get("prompt_style", "full"),
        "reasoning": info.get("reasoning", "full"),
    }
    wanted = {key: settings[key] for key in ("systems", "decimals", "wide", "prompt_style", "reasoning")}
    wanted["split"] = split_record(settings["split"], settings["sparse_fraction"], settings["held_out"])
    if settings["train_samples"] is not None and settings["eval_samples"] is not None:
        found |= {"train_samples": counts["train"], "eval_samples": counts["eval"]}
        wanted |= {"train_samples": settings["train_samples"], "eval_samples": settings["eval_samples"]}
    else:
        found["total_samples"] = counts["train"] + counts["eval"]
        wanted["total_samples"] = settings["total_samples"]
    if wanted["systems"] is None:  # no systems asked for: whatever the dataset has
        del found["systems"], wanted["systems"]
    families = [name for name in info["systems"] if name in FAMILIES]
    if families:  # the ranges a family was drawn from, against those this config asks for
        asked = settings["family_ranges"] or {}
        found["family_ranges"] = {name: info["systems"][name].get("ranges") for name in families}
        wanted["family_ranges"] = json.loads(json.dumps({
            name: family_parameters(with_ranges(FAMILIES[name], asked.get(name)))["ranges"] for name in families
        }))  # fmt: skip
    if found != wanted:
        raise UsageError(
            f"dataset {path} exists but was made with {found}, and this pipeline asks for {wanted}.",
            fix="give the pipeline another data.dataset_name, or delete the dataset to regenerate it.",
        )


# ----------------------------------------------------------------------------------------------------------
# A whole dataset, record by record


LABEL_ABS_TOL = 1e-9  # stored numbers must re-simulate to within this (relative to max(1, |value|))
OPTIMUM_RTOL = 1e-9  # linear: J_opt within this (relative, plus 1e-15 absolute) of the re-solved J*
OPTIMUM_UTOL = 1e-6  # linear: u_opt within this fraction of (u_max - u_min) of the re-solved u*
_INITIAL_STATE = re.compile(r"x_0 = \(([^()]*)\)")  # "Initial state: x_0 = (...)" or, compact, "x_0 = (...)"


def validate_dataset(path: Path) -> dict:
    """Check every promise a dataset makes (docs/datasets.md, "Validating"): info.json, checksums, byte
    counts, every record's shape and finite numbers, its prompt and completion text (written again from the
    record and compared), unique ids, counts against info.json, every label against the simulator and the
    label promise (lib/control/labels.py), for linear systems every optimum against a fresh exact solve, and
    what info.json derives from the records (J_floor, medians, worst gaps, system parameters) derived again:
    info.json has no checksum of its own, so nothing in it is taken on trust.

    Returns a summary {split: records, ...}; raises UsageError naming the file, line, id and field of the
    first problem found.
    """
    path = Path(path)
    info = read_info(path)
    decimals = info["decimals"]
    seen_states: dict[str, set] = {}
    seen_ids: dict[str, str] = {}  # id -> "split.jsonl line N"
    summary = {}
    by_system_all: dict[str, list[tuple[Path, int, dict]]] = {}
    for split in SPLITS:
        file = path / f"{split}.jsonl"
        claimed_bytes = info["files"][f"{split}.jsonl"]["bytes"]
        if file.is_file() and file.stat().st_size != claimed_bytes:
            raise unusable_dataset(
                path, f"{file} has {file.stat().st_size} bytes, info.json's 'files' says {claimed_bytes}."
            )
        records = [
            parse_record_line(path, split, n, line)
            for n, line in enumerate(read_split_lines(path, split, info), 1)
        ]
        expected = info["files"][f"{split}.jsonl"]["records"]
        if len(records) != expected:
            raise unusable_dataset(
                path, f"{file} holds {len(records)} records, info.json's 'files' says {expected}."
            )
        if info["counts"][split] != len(records):
            raise unusable_dataset(
                path,
                f"{file} holds {len(records)} records, info.json's 'counts' says {info['counts'][split]}.",
            )
        if not records:
            raise unusable_dataset(path, f"{file} holds no records: a dataset needs train and eval records.")
        summary[split] = len(records)
        by_system: dict[str, list[tuple[int, dict]]] = {}
        for number, record in enumerate(records, start=1):
            where = f"{file} line {number} (id {record['id']})"
            if record["id"] in seen_ids:
                raise unusable_dataset(path, f"{where}: 'id' repeats the record at {seen_ids[record['id']]}.")
            seen_ids[record["id"]] = f"{file.name} line {number}"
            _check_prompt(path, where, record, decimals)
            by_system.setdefault(record["system"], []).append((number, record))
        for name in sorted(set(by_system) | set(info["systems"])):
            claimed = info["systems"].get(name, {}).get(split, 0)
            found = len(by_system.get(name, []))
            if claimed != found:
                raise unusable_dataset(
                    path, f"{file} holds {found} {name} records, info.json's 'systems' says {claimed}."
                )
        for name, group in by_system.items():
            if (
                name in FAMILIES
            ):  # each member drawn from the ranges info.json states (the family's or a config's)
                family = dataset_family(path, info, name)
                for number, record in group:
                    problem = check_parameters(family, record["params"])
                    if problem:
                        raise unusable_dataset(path, f"{file} line {number} (id {record['id']}): {problem}.")
            # a family member is its own problem: checked one record at a time with its own system
            problems = [[item] for item in group] if name in FAMILIES else [group]
            for problem in problems:
                system = record_system(problem[0][1])
                _check_labels(path, file, system, problem, decimals)
                _check_texts(path, file, system, problem, info)
            by_system_all.setdefault(name, []).extend((file, n, r) for n, r in group)
            # a problem is its initial state, and for a family member its drawn values too
            states = {(tuple(r["x0"]), tuple(r.get("params", {}).values())) for _, r in group}
            what = "problem (initial state and parameters)" if name in FAMILIES else "initial state"
            if len(states) != len(group):
                raise unusable_dataset(path, f"{file} repeats a {what} of {name}.")
            shared = seen_states.setdefault(name, set()) & states
            if shared:
                raise unusable_dataset(path, f"train and eval share {len(shared)} {what}s of {name}.")
            seen_states[name] |= states
            if name not in FAMILIES:
                _check_split(path, file, info, split, get_system(name), {x for x, _ in states})
            if name in FAMILIES and info.get("split", {}).get("kind") == "held-out-parameters":  # eval inside
                held_out = info["split"].get("held_out") or {}
                for number, record in group:
                    if in_region(record["params"], held_out) != (split == "eval"):
                        side = "outside" if split == "eval" else "inside"
                        raise unusable_dataset(
                            path, f"{file} line {number} (id {record['id']}): its params lie {side} the held-out "
                            f"region {held_out}, where the {split} split never draws."
                        )  # fmt: skip
    for name, entries in by_system_all.items():
        _check_derived(path, info, name, entries)
    return summary


def _differs(claimed: object, value: float) -> bool:
    if not isinstance(claimed, (int, float)) or isinstance(claimed, bool):
        return True
    return abs(claimed - value) > LABEL_ABS_TOL * abs(value)  # relative only: KKT residuals are ~1e-15


def dataset_family(path: Path, info: dict, name: str) -> Family:
    """The family as the dataset drew it: lib/control/families.py's, with the ranges info.json states (a
    config's generate.family_ranges), each keeping the family's scale and digits."""
    family = FAMILIES[name]
    stated = info["systems"][name].get("ranges")
    if not isinstance(stated, dict) or set(stated) != set(family.ranges):
        raise unusable_dataset(
            path, f"info.json's systems.{name}.ranges should give every parameter of {name}."
        )
    for key, value in stated.items():
        own = family.ranges[key]
        if not isinstance(value, list) or len(value) != 4 or value[2:] != [own.scale, own.digits]:
            raise unusable_dataset(
                path,
                f"info.json's systems.{name}.ranges.{key} should be [low, high, {own.scale!r}, {own.digits}].",
            )
    try:
        return with_ranges(
            family, {key: value[:2] for key, value in stated.items()}, source="info.json ranges"
        )
    except UsageError as exc:
        raise unusable_dataset(path, str(exc)) from None


def _check_derived(path: Path, info: dict, name: str, entries: list[tuple[Path, int, dict]]) -> None:
    """What info.json says of a system's (or family's) records, derived again from them (train and eval
    together, as lib/control/dataset.py builds it), and the label promise on every record, which needs
    J_floor."""
    records = [r for _, _, r in entries]
    J_opt, J_label = np.array([r["J_opt"] for r in records]), np.array([r["J_label"] for r in records])
    floor = j_floor(J_opt)
    gap = (J_label - J_opt) / np.maximum(J_opt, floor)
    entry = info["systems"][name]
    derived = {
        "J_floor": floor,
        "median_J_opt": float(np.median(J_opt)),
        "worst_label_gap": float(np.max(gap)),
        "worst_kkt_residual": max(r["kkt_residual"] for r in records),
        "min_starts_agreed": min(r["starts_agreed"] for r in records),
        "starts_total": max(r["starts_total"] for r in records),
    }
    for key, value in derived.items():
        if key in entry and _differs(entry[key], value):  # datasets of older versions may lack a key
            raise unusable_dataset(
                path, f"info.json's systems.{name}.{key} is {entry[key]!r}, but its records give {value!r}."
            )
    if "J_floor" not in entry or "worst_label_gap" not in entry:
        raise unusable_dataset(path, f"info.json's systems.{name} lacks J_floor or worst_label_gap.")
    # the system's constants (dynamics, horizon, bounds, weights, box), or the family's ranges, as this code
    # defines them
    wide = info.get("box") == "wide"
    stated = (
        family_parameters(dataset_family(path, info, name), wide)
        if name in FAMILIES
        else system_parameters(get_system(name), wide)
    )
    for key, value in json.loads(json.dumps(stated)).items():
        if key in entry and entry[key] != value:
            raise unusable_dataset(
                path, f"info.json's systems.{name}.{key} is {entry[key]!r}, but {name} has {value!r}."
            )
    # the promise is the fixed systems' (measured over their whole grids); a family member can be a problem
    # whose cheapest printable answer costs more (lib/control/labels.py), so there the gap is only re-derived
    if name in SYSTEMS and info["decimals"] >= PROMISE_DECIMALS and gap.max() > LABEL_GAP_PROMISE:
        file, line, record = entries[int(np.argmax(gap))]
        raise unusable_dataset(
            path,
            f"{file} line {line} (id {record['id']}): 'completion' costs {gap.max():.2%} of max(J*, J_floor) "
            f"above the optimum, more than the labels' promise of {LABEL_GAP_PROMISE:.0%}.",
        )


def _check_texts(path: Path, file: Path, system: System, group: list[tuple[int, dict]], info: dict) -> None:
    """Prompt and completion are exactly what the generator writes for the record's x0, label and J*: the
    prompt in the dataset's prompt style, the completion with its reasoning (every number in it derived)."""
    decimals, style = info["decimals"], info.get("prompt_style", "full")
    for number, record in group:
        if record["prompt"] != build_prompt(system, np.array(record["x0"]), decimals, style):
            raise unusable_dataset(
                path,
                f"{file} line {number} (id {record['id']}): 'prompt' is not the {style} prompt of "
                f"{system.name} from x0 = {record['x0']}.",
            )
    labels = np.array([parse_controls(r["completion"][0]["content"], system.steps).values for _, r in group])
    x0 = np.array([r["x0"] for _, r in group])
    J_opt = np.array([r["J_opt"] for _, r in group])
    written = format_answers(system, x0, labels, J_opt, decimals, info.get("reasoning", "full"))
    for (number, record), text in zip(group, written, strict=True):
        if record["completion"][0]["content"] != text:
            raise unusable_dataset(
                path,
                f"{file} line {number} (id {record['id']}): 'completion' is not the text the generator writes "
                "for its controls (its reasoning states other numbers).",
            )


def _inside(box, x) -> bool:
    return all(lo - 1e-12 <= v <= hi + 1e-12 for (lo, hi), v in zip(box, x, strict=True))


def _check_split(path: Path, file: Path, info: dict, split: str, system, states: set) -> None:
    """The split's promise (docs/datasets.md, "Splits"): where each state lies, how much of the grid the
    train split takes; and info.json's coverage against a fresh count of the grid."""
    kind = info.get("split", {}).get("kind", "random")
    wide = info.get("box") == "wide"
    if kind == "extrapolation":
        if split == "train":
            region, ok = "the default box", [_inside(system.x0_box, x) for x in states]
        else:
            region = "the ring between the default and the wide box"
            ok = [_inside(system.x0_box_wide, x) and not _inside(system.x0_box, x) for x in states]
        if not all(ok):
            raise unusable_dataset(path, f"{file}: {ok.count(False)} {system.name} states lie outside {region}, "
                                   "where an extrapolation split draws them.")  # fmt: skip
    coverage = info["systems"][system.name].get("coverage")
    if coverage is None:  # a dataset made before splits existed
        return
    box = system.x0_box_wide if wide and kind != "extrapolation" else system.x0_box
    problems = grid_problems(system, info["decimals"], box)
    if coverage.get("problems") != problems:
        raise unusable_dataset(path, f"info.json's coverage of {system.name} says {coverage.get('problems')} "
                               f"grid states; its box holds {problems}.")  # fmt: skip
    fraction = info["split"].get("sparse_fraction")
    if split == "train" and kind == "sparse" and len(states) > fraction * problems:
        raise unusable_dataset(path, f"{file}: {len(states)} {system.name} train states, more than the sparse "
                               f"split's {fraction:.0%} of {problems}.")  # fmt: skip


def _check_prompt(path: Path, where: str, record: dict, decimals: int) -> None:
    """The x_0 the user message shows (the model sees only the prompt) must be the record's x0."""
    found = _INITIAL_STATE.findall(record["prompt"][1]["content"])
    try:
        shown = [float(v) for v in found[0].split(",")] if len(found) == 1 else None
    except ValueError:
        shown = None
    if shown is None:
        raise unusable_dataset(path, f"{where}: 'prompt' does not show one 'x_0 = (...)'.")
    x0 = record["x0"]
    if len(shown) != len(x0) or any(abs(s - x) > 1e-9 for s, x in zip(shown, x0, strict=True)):
        raise unusable_dataset(path, f"{where}: 'prompt' shows x_0 = ({found[0]}), but 'x0' is {x0}.")


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
            raise unusable_dataset(path, f"{file} line {lines[i]} (id {records[i]['id']}): '{field}' {what}.")

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
    # the labeller keeps the cheaper of plain and corrected rounding (lib/control/labels.py): a label never
    # costs more than u_opt rounded to the grid
    plain = round_plain(system, u, decimals)
    J_plain = trajectory_cost(system, simulate(system, x0, plain), plain)
    fail(
        J_label > J_plain + LABEL_ABS_TOL * np.maximum(1.0, J_plain),
        "completion",
        "prints controls that cost more than u_opt rounded to the grid (not the label of u_opt)",
    )
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
