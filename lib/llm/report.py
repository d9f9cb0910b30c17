"""What main_eval.py writes: metrics.json's document, report.md's tables, and the figures it embeds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lib.common.atomic import check_writable_folder, write_json_atomic, write_text_atomic
from lib.common.errors import UsageError
from lib.control.metrics import SUCCESS_EPS
from lib.control.systems import get_system
from lib.llm.models import run_of_description
from lib.llm.pipeline import read_state

SUCCESS_KEYS = [f"success@{round(eps * 100)}%" for eps in SUCCESS_EPS]
log = logging.getLogger(__name__)
REFERENCE_NAMES = {"optimal": "optimal (exact)", "label": "label (printed)", "zero": "u = 0"}


def safe_name(label: str) -> str:
    """A label as a file-name part: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def _json_number(value):
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def sample_lines(results: Sequence[Mapping]) -> str:
    """samples.jsonl: one line per model answer (its text, the parser's reason or the format checks, every
    metric), so any number in the report can be traced to the answers behind it."""
    lines = []
    for result in results:
        if "rows" not in result:  # --eval-mode format
            for text, system, checks in zip(
                result["texts"], result["systems"], result["checks"], strict=True
            ):
                lines.append(
                    json.dumps(
                        {"model": result["label"], "system": system, "checks": checks, "completion": text}
                    )
                    + "\n"
                )
            continue
        rows = result["rows"]
        for i in range(len(rows)):
            entry = {"model": result["label"], "id": rows.record_id[i], "system": rows.system[i],
                     "sample": i % rows.k, "reason": rows.reason[i], "completion": rows.completion[i]}  # fmt: skip
            entry.update({key: _json_number(values[i]) for key, values in rows.metrics.items()})
            lines.append(json.dumps(entry) + "\n")
    return "".join(lines)


def metrics_document(
    context: Mapping, results: Sequence[Mapping], summaries: Mapping, ref_summaries: Mapping
) -> dict:
    """metrics.json: the context, each model's summary per system and timing, and the reference rows."""
    models = {}
    for result in results:
        calls = result["calls"]
        per_second = calls["prompts"] / calls["seconds"] if calls["seconds"] > 0 else None
        models[result["label"]] = {
            "model": result["model"],
            "summary": summaries[result["label"]],
            "timing": {
                "answers": calls["prompts"],
                "generation_seconds": calls["seconds"],
                "answers_per_second": per_second,
            },
        }
    return {"context": dict(context), "models": models, "references": dict(ref_summaries)}


def _pct(entry: Mapping) -> str:
    if entry["rate"] is None:
        return "-"
    low, high = entry["ci"]
    return f"{100 * entry['rate']:.1f}% [{100 * low:.0f}, {100 * high:.0f}]"


def _value(entry: Mapping, statistic: str, digits: str = ".3g") -> str:
    if entry["n"] == 0:
        return "-"
    value, (low, high) = entry[statistic], entry[f"{statistic}_ci"]
    if value is None:
        return "inf"
    bounds = ", ".join("inf" if v is None else format(v, digits) for v in (low, high))
    return f"{format(value, digits)} [{bounds}]"


def _systems_to_show(summary: Mapping) -> list[str]:
    """'all' and each system; just the system when there is one (its table would repeat 'all')."""
    names = [name for name in summary if name != "all"]
    return names if len(names) == 1 else ["all", *names]


def _table(rows: Mapping[str, Mapping], k: int) -> list[str]:
    pass_keys = [f"pass@{k} {key}" for key in SUCCESS_KEYS] if k > 1 else []
    header = ["controller", "answers", "parsed", "feasible", *SUCCESS_KEYS, *pass_keys,
              "median gap (feasible)", "mean score S (parsed)", "median terminal error (parsed)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in rows.items():
        cells = [name, str(s["samples"]), _pct(s["parsed"]), _pct(s["feasible"])]
        cells += [_pct(s[key]) for key in SUCCESS_KEYS] + [
            _pct(s[key]) if key in s else "-" for key in pass_keys
        ]
        cells += [_value(s["gap_feasible"], "median"), _value(s["score_parsed"], "mean"),
                  _value(s["terminal_error_parsed"], "median")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(
    context: Mapping,
    results: Sequence[Mapping],
    summaries: Mapping,
    ref_summaries: Mapping,
    figures: Sequence[tuple[str, str]],
) -> str:
    """report.md: what was evaluated, one table per system (models, then the reference controllers), the parse
    failures by reason, generation speed, and the figures."""
    k = context["samples_per_prompt"]
    mode = context["eval_mode"] + (
        f" (re-plan every {context['replan_every']} steps)" if context["replan_every"] else ""
    )
    out = [
        f"# Evaluation on `{context['dataset']}` ({context['records']} eval problems, mode {mode})",
        "",
        "Models: " + ", ".join(f"**{r['label']}** ({r['model']})" for r in results) + ". "
        f"{k} answer(s) per problem, temperature {context['temperature']} "
        f"({'greedy' if context['temperature'] == 0 else 'sampled'}), at most {context['max_new_tokens']} new tokens, "
        f"seed {context['seed']}; commit {context['git_commit']}, {context['created_at']}.",
        "",
        "Rates are over all answers (an answer that does not parse is a failure, never padded); the gap "
        "(J - J*)/J* is over feasible answers, the score S = (J0 - J)/(J0 - J*) (1 = optimal, 0 = doing nothing) "
        "and the terminal error ||x_N - x*|| over parsed answers. Brackets: 95% bootstrap intervals. "
        "Reference rows: the exact optimum, the printed label the model is trained on, and u = 0.",
    ]
    systems = _systems_to_show(next(iter(summaries.values())))
    for system in systems:
        rows = {r["label"]: summaries[r["label"]][system] for r in results}
        rows.update({REFERENCE_NAMES[name]: ref_summaries[name][system] for name in ref_summaries})
        out += ["", f"## {'All systems' if system == 'all' else system}", "", *_table(rows, k)]
    out += ["", "## Parse failures", ""]
    for r in results:
        failures = summaries[r["label"]]["all"]["parse_failures"]
        listed = "; ".join(f"{reason}: {count}" for reason, count in failures.items()) or "none"
        out.append(f"- **{r['label']}**: {listed}")
    out += ["", "## Generation", ""]
    for r in results:
        calls = r["calls"]
        speed = f"{calls['prompts'] / calls['seconds']:.2f} answers/s" if calls["seconds"] > 0 else "-"
        out.append(f"- **{r['label']}**: {calls['prompts']} answers in {calls['seconds']:.1f} s ({speed})")
    if figures:
        out += ["", "## Figures", ""]
        out += [f"![{title}]({name})" for name, title in figures]
    return "\n".join(out) + "\n"


def format_report(context: Mapping, results: Sequence[Mapping]) -> str:
    """report.md of --eval-mode format: the rate of each answer-format check per model."""
    checks = list(results[0]["format_rates"]) if results else []
    out = [f"# Answer format on `{context['dataset']}` ({context['records']} eval problems)", "",
           "| model | " + " | ".join(c.replace("_", " ") for c in checks) + " | overall |",
           "|" + "---|" * (len(checks) + 2)]  # fmt: skip
    for r in results:
        rates = r["format_rates"]
        overall = sum(rates.values()) / len(rates) if rates else 0.0
        out.append(
            f"| {r['label']} | "
            + " | ".join(f"{100 * rates[c]:.1f}%" for c in checks)
            + f" | {100 * overall:.1f}% |"
        )
    return "\n".join(out) + "\n"


def figure_files(figures: Sequence[tuple[str, str]]) -> list[str]:
    return [name for name, _ in figures]


def render_figures(
    folder: Path,
    records: Sequence[Mapping],
    results: Sequence[Mapping],
    references: Mapping,
    summaries: Mapping,
    ref_summaries: Mapping,
    context: Mapping,
    plot_instances: int,
) -> list[tuple[str, str]]:
    """Draw every figure into folder; returns (file name, title) pairs in report order. context: main_eval's
    (dataset, eval_mode, samples_per_prompt); plot_instances: instances per system with trajectory figures."""
    from lib.llm import plots

    figures: list[tuple[str, str]] = []
    labels = [r["label"] for r in results]
    all_rows = {REFERENCE_NAMES[n]: ref_summaries[n]["all"] for n in ("optimal", "zero")}
    model_rows = {label: summaries[label]["all"] for label in labels}
    gaps = {r["label"]: r["rows"].metrics["gap"][r["rows"].metrics["feasible"]] for r in results}
    gaps[REFERENCE_NAMES["label"]] = references["label"].metrics["gap"][
        references["label"].metrics["feasible"]
    ]
    title = f"{context_title(context)}: {', '.join(labels)}"
    plots.plot_performance_summary(
        {**model_rows, **all_rows}, gaps, SUCCESS_KEYS, title, folder / "performance_summary.png"
    )
    figures.append(("performance_summary.png", "performance summary"))
    if len(results) > 1:
        plots.plot_comparison(
            model_rows,
            SUCCESS_KEYS,
            f"model comparison - {context_title(context)}",
            folder / "comparison.png",
        )
        figures.append(("comparison.png", "model comparison"))
    k = context["samples_per_prompt"]
    by_system: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_system.setdefault(record["system"], []).append(i)
    for name, indices in by_system.items():
        system = get_system(name)
        for n, i in enumerate(indices[:plot_instances]):
            record = records[i]
            answers = {r["label"]: r["rows"].u[i * k] for r in results}
            x0, u_opt = np.asarray(record["x0"]), np.asarray(record["u_opt"])
            gaps_text = ", ".join(f"{r['label']} gap {_gap_text(r['rows'], i * k)}" for r in results)
            head = f"{system.title}, x0 = {tuple(round(v, 2) for v in record['x0'])} ({gaps_text})"
            trajectory = f"{name}_trajectory_{n}.png"
            plots.plot_trajectory(system, x0, answers, u_opt, head, folder / trajectory)
            phase = f"phase_portrait_{name}_{n}.png"
            plots.plot_phase_portrait(system, x0, answers, u_opt, head, folder / phase)
            figures += [
                (trajectory, f"{name} instance {record['id']}: trajectory"),
                (phase, f"{name} instance {record['id']}: phase portrait"),
            ]
    for r in results:
        run = run_of_description(r["model"])
        if run is None or not (run / "log_history.json").is_file():
            continue
        history = json.loads((run / "log_history.json").read_text())
        beta = _run_beta(run)
        name = f"training_curves_{safe_name(r['label'])}.png"
        if plots.plot_training_curves(
            history, f"training of {r['label']} ({run.parent.name})", folder / name, beta
        ):
            figures.append((name, f"training curves of {r['label']}"))
    return figures


def _gap_text(rows, i: int) -> str:
    if not rows.metrics["parsed"][i]:
        return "n/a (no parse)"
    gap = rows.metrics["gap"][i]
    return f"{100 * gap:.1f}%" + ("" if rows.metrics["feasible"][i] else ", infeasible")


def _run_beta(run: Path) -> float:
    try:
        return float(json.loads((run / "config.json").read_text())["grpo"]["beta"])
    except (OSError, KeyError, TypeError, ValueError):
        return 0.0


def context_title(context: Mapping) -> str:
    """'<dataset>, <mode>' for figure titles, from main_eval's context."""
    return f"{context['dataset']}, {context['eval_mode']}"


def _first_samples(path: Path, model: str) -> dict[str, dict]:
    """record id -> the model's first sample, from an evaluation's samples.jsonl."""
    samples = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("model") == model and entry.get("sample", 0) == 0 and "id" in entry:
            samples[entry["id"]] = entry
    return samples


def grpo_vs_sft(run_dir: Path) -> dict | None:
    """GRPO - SFT on the same held-out problems (paired by record id, first sample of each): gap and score
    S with bootstrap intervals (lib.llm.evaluation.paired_difference); None without both evaluations."""
    from lib.llm.evaluation import paired_difference

    sft_path, grpo_path = (
        run_dir / "sft_evaluation" / "samples.jsonl",
        run_dir / "grpo_evaluation" / "samples.jsonl",
    )
    if not (sft_path.is_file() and grpo_path.is_file()):
        return None
    sft, grpo = _first_samples(sft_path, "sft"), _first_samples(grpo_path, "grpo")
    ids = [i for i in sft if i in grpo]
    if not ids:
        return None

    def column(samples: dict, key: str) -> np.ndarray:
        return np.array(
            [np.nan if samples[i].get(key) is None else samples[i][key] for i in ids], dtype=float
        )

    return {
        "problems": len(ids),
        "gap": paired_difference(column(sft, "gap"), column(grpo, "gap")),
        "score": paired_difference(column(sft, "score"), column(grpo, "score")),
    }


def paired_lines(paired: Mapping) -> list[str]:
    def number(value) -> str:
        return "-" if value is None else f"{value:+.3g}"

    def interval(pair) -> str:
        return f"[{number(pair[0])}, {number(pair[1])}]"

    lines = [
        "## GRPO - SFT on the same problems (paired)",
        "",
        f"{paired['problems']} problems answered by both; a difference counts the problems where both answers "
        "parsed. Negative gap differences and positive S differences mean GRPO did better.",
        "",
        "| metric | problems | mean difference | median difference | median GRPO / median SFT - 1 |",
        "|---|---:|---|---|---|",
    ]
    for key, name in (("gap", "gap (J - J*) / J*"), ("score", "score S")):
        d = paired[key]
        lines.append(
            f"| {name} | {d['n']} | {number(d['mean_diff'])} {interval(d['mean_diff_ci'])} | "
            f"{number(d['median_diff'])} {interval(d['median_diff_ci'])} | "
            f"{number(d['median_change'])} {interval(d['median_change_ci'])} |"
        )
    return lines


def write_pipeline_report(run_dir: Path) -> Path:
    """The pipeline's own report.md, metrics.json and comparison.png: base vs SFT vs GRPO side by side (from
    the evaluation phases' metrics.json), the reference rows, and how long each phase took (its state.json,
    lib.llm.pipeline)."""
    from lib.llm import plots

    state = read_state(run_dir)
    models: dict[str, Mapping] = {}
    references: Mapping = {}
    context: Mapping = {}
    sources = []
    for folder in ("sft_evaluation", "grpo_evaluation"):
        path = run_dir / folder / "metrics.json"
        if not path.is_file():
            continue
        document = json.loads(path.read_text())
        sources.append(folder)
        context = context or document["context"]
        references = references or document["references"]
        for label, entry in document["models"].items():
            models[label] = entry
    out = [f"# Pipeline {run_dir.name}", ""]
    paired = None
    if not models:
        out.append("No evaluation phase has completed: nothing to compare yet.")
    else:
        out += [
            f"Dataset `{context['dataset']}`, {context['records']} held-out eval problems, mode {context['eval_mode']}, "
            f"temperature {context['temperature']}, at most {context['max_new_tokens']} new tokens. "
            f"Sources: {', '.join(f'[{s}]({s}/report.md)' for s in sources)}. Brackets: 95% bootstrap intervals.",
        ]
        systems = _systems_to_show(next(iter(models.values()))["summary"])
        for system in systems:
            rows = {label: entry["summary"][system] for label, entry in models.items()}
            rows.update({REFERENCE_NAMES[name]: references[name][system] for name in references})
            out += [
                "",
                f"## {'All systems' if system == 'all' else system}",
                "",
                *_table(rows, context["samples_per_prompt"]),
            ]
        plots.plot_comparison(
            {label: entry["summary"]["all"] for label, entry in models.items()},
            SUCCESS_KEYS,
            f"{run_dir.name}: {' vs '.join(models)} on {context['dataset']}",
            run_dir / "comparison.png",
        )
        out += ["", "![model comparison](comparison.png)"]
        paired = grpo_vs_sft(run_dir)
        if paired:
            out += ["", *paired_lines(paired)]
    out += ["", "## Phases", "", "| phase | status | exit | elapsed |", "|---|---|---:|---:|"]
    for phase, entry in state["phases"].items():
        if phase == "report" and entry.get("status") == "running":
            continue  # this phase, writing the report now
        elapsed = entry.get("elapsed_s")
        code = entry.get("exit_code")
        out.append(f"| {phase} | {entry.get('status')} | {'' if code is None else code} | "
                   f"{'' if elapsed is None else f'{elapsed:.0f} s'} |")  # fmt: skip
    document = {"pipeline": run_dir.name, "context": context, "models": models, "references": references,
                "phases": state["phases"]}  # fmt: skip
    if paired:
        document["grpo_minus_sft"] = paired
    write_json_atomic(run_dir / "metrics.json", document)
    report = run_dir / "report.md"
    write_text_atomic(report, "\n".join(out) + "\n")
    return report


# ---------------------------------------------------------------- the output folder: what main_eval owns there

MANIFEST = ".main_eval_manifest.json"
MANIFEST_TOOL = "scripts/main_eval.py"
FIXED_FILES = ("metrics.json", "report.md", "samples.jsonl")
TRAINING_CURVES = re.compile(r"training_curves_.+\.png")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    )


def owned_files(folder: Path) -> dict[str, set[str]]:
    """{file name: sha256 values} of the files main_eval wrote into folder, from its manifest (MANIFEST, with
    tool = MANIFEST_TOOL); {} when there is none or it is not ours. Only these files are ever removed or
    replaced, and only while their content is still what main_eval wrote (docs/evaluation.md, "Outputs")."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("tool") != MANIFEST_TOOL:
        return {}
    files = manifest.get("files")
    if not isinstance(files, dict):
        return {}
    owned = {}
    for name, hashes in files.items():
        hashes = [hashes] if isinstance(hashes, str) else hashes
        if _plain_name(name) and isinstance(hashes, list):
            owned[name] = {h for h in hashes if isinstance(h, str)}
    return owned


def _legacy_names(folder: Path) -> set[str]:
    """The files a metrics.json written by main_eval before the manifest existed lists (its context.command
    says so): these may be replaced by files of the same name, never removed (nothing proves their content)."""
    try:
        document = json.loads((Path(folder) / "metrics.json").read_text())
        command = document["context"]["command"]
        files = document["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not (isinstance(command, str) and command.startswith("python scripts/main_eval.py")):
        return set()
    return {name for name in files if _plain_name(name)} if isinstance(files, list) else set()


def _is_ours(folder: Path, name: str, owned: Mapping[str, set[str]]) -> bool:
    path = Path(folder) / name
    return name in owned and path.is_file() and _sha256(path) in owned[name]


def _not_ours(folder: Path, names, owned: Mapping[str, set[str]]) -> list[str]:
    no_manifest = not owned and not (Path(folder) / MANIFEST).exists()
    legacy = (
        _legacy_names(folder) if no_manifest else set()
    )  # main_eval's metrics.json of before the manifest
    return [
        name
        for name in names
        if (Path(folder) / name).exists() and not _is_ours(folder, name, owned) and name not in legacy
    ]


def planned_files(
    records: Sequence[Mapping], models: int, save_plots: bool, plot_instances: int
) -> list[str]:
    """The files an evaluation will write, known before any model runs (training curves aside: their names
    come from the labels, checked by pattern in check_output_folder)."""
    names = list(FIXED_FILES)
    if not save_plots:
        return names
    names.append("performance_summary.png")
    if models > 1:
        names.append("comparison.png")
    counts: dict[str, int] = {}
    for record in records:
        counts[record["system"]] = counts.get(record["system"], 0) + 1
    for system, count in counts.items():
        for n in range(min(count, plot_instances)):
            names += [f"{system}_trajectory_{n}.png", f"phase_portrait_{system}_{n}.png"]
    return names


def _refuse_foreign(folder: Path, foreign: Sequence[str], when: str) -> UsageError:
    listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return UsageError(
        f"--output-dir {folder} already holds {listed}, not written by main_eval.py (no {MANIFEST} entry "
        f"with this content){when}; main_eval replaces only files it wrote itself.",
        fix="pass another --output-dir (eval.output_dir), e.g. results/eval, or move those files away.",
    )


def check_output_folder(folder: Path, planned: Sequence[str], save_plots: bool) -> None:
    """Refuse, before any model is loaded, an --output-dir that cannot take the evaluation: a file, a path
    below a file, a folder this process cannot write, or one holding files of the names it writes that
    another tool (or a person) wrote. Creates nothing."""
    folder = Path(folder)
    fix = "pass a folder you can write to as --output-dir (eval.output_dir), e.g. results/eval; it is created if missing."
    check_writable_folder(folder, "--output-dir", fix)
    if not folder.is_dir():
        return
    owned = owned_files(folder)
    curves = [p.name for p in folder.glob("training_curves_*.png")] if save_plots else []
    foreign = _not_ours(folder, [*planned, *sorted(curves)], owned)
    if foreign:
        raise _refuse_foreign(folder, foreign, "")


def _write_manifest(folder: Path, files: Mapping[str, set[str] | list[str]]) -> None:
    write_json_atomic(
        Path(folder) / MANIFEST,
        {
            "tool": MANIFEST_TOOL,
            "about": "files main_eval.py wrote here and their sha256; it replaces or removes only these, and only "
            "while their content is unchanged",
            "files": {name: sorted(hashes) for name, hashes in sorted(files.items())},
        },
    )


def replace_outputs(folder: Path, staged: Path, files: Sequence[str]) -> list[str]:
    """Move the staged files into folder and remove the files of main_eval's previous evaluation there that
    this one does not write again; returns the names removed. Only files of main_eval's manifest whose content
    is still what it wrote are replaced or removed: a file of the same name from anyone else stops the move
    before anything is touched. The manifest lists old and new hashes while files move, so an interruption
    leaves every file either recognised or untouched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    owned = owned_files(folder)
    foreign = _not_ours(folder, files, owned)
    if foreign:
        raise _refuse_foreign(folder, foreign, " (they appeared while the evaluation ran)")
    new = {name: _sha256(Path(staged) / name) for name in files}
    _write_manifest(
        folder, {n: owned.get(n, set()) | ({new[n]} if n in new else set()) for n in {*owned, *new}}
    )
    for name in files:
        os.replace(Path(staged) / name, folder / name)
    removed = []
    for name in sorted(set(owned) - set(new)):
        if _is_ours(folder, name, owned):
            (folder / name).unlink()
            removed.append(name)
        elif (folder / name).exists():
            log.warning("kept %s: changed since main_eval.py wrote it", folder / name)
    _write_manifest(folder, {name: {digest} for name, digest in new.items()})
    return removed
