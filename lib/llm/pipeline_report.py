"""The pipeline's own report: base vs SFT vs GRPO side by side (from the evaluation phases' metrics.json),
GRPO - SFT paired on the same problems, the reference rows, and each phase's time (the folder's format:
lib/llm/pipeline_folder.py).

The pipeline folder is shared with the user (notes, a report.md of their own): the report phase replaces only
the report.md, metrics.json and comparison.png it wrote itself (lib/common/outputs.py, PIPELINE: its
manifest), and refuses up front (exit 2) a file of one of those names it did not write. An evaluation's
metrics.json or samples.jsonl it cannot read is refused (exit 2) naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lib.common.atomic import write_json_atomic, write_text_atomic
from lib.common.errors import UsageError
from lib.common.outputs import Writer, check_output_folder, replace_outputs, staging
from lib.llm.pipeline_folder import read_state
from lib.llm.report import REFERENCE_NAMES, SUCCESS_KEYS, systems_to_show, table_lines, verdict_lines


def _pipeline_legacy(folder: Path) -> set[str]:
    """The report files of a report phase that ran before the manifest existed: its metrics.json names the
    folder and its phases."""
    try:
        document = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return set()
    ours = isinstance(document, dict) and document.get("pipeline") == folder.name and "phases" in document
    return {"metrics.json", "report.md", "comparison.png"} if ours else set()


PIPELINE = Writer(
    tool="scripts/run_pipeline.py",
    manifest=".run_pipeline_manifest.json",
    folder="the pipeline folder",
    fix="move those files out of the pipeline folder (keep them elsewhere), then run the report phase again: "
    "python scripts/run_pipeline.py --run-dir FOLDER --phase report --rerun",
    fix_unwritable="make the pipeline folder writable by this user, then run the report phase again.",
    legacy=_pipeline_legacy,
)


def _unreadable(path: Path, what: str) -> UsageError:
    """An evaluation phase's file the report cannot use: moved away, the phase writes it again."""
    run_dir, folder = path.parent.parent, path.parent.name
    phase = {"sft_evaluation": "eval_sft", "grpo_evaluation": "eval_grpo"}.get(folder, "its evaluation")
    return UsageError(
        f"{path} {what}: the report reads each evaluation phase's metrics.json and samples.jsonl.",
        fix=f"move {path} away (the evaluation replaces only files it wrote itself), then run that phase "
        f"again: python scripts/run_pipeline.py --run-dir {run_dir} --phase {phase} report --rerun",
    )


def read_evaluation(path: Path) -> dict:
    """An evaluation phase's metrics.json, with the parts the report reads (context, models with their
    summary, references); UsageError naming the file when it is not one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, f"is not readable JSON ({exc})") from None
    parts = (
        [document.get(key) for key in ("context", "models", "references")]
        if isinstance(document, dict)
        else []
    )
    if not (parts and all(isinstance(part, dict) for part in parts)) or not all(
        isinstance(entry, dict) and isinstance(entry.get("summary"), dict)
        for entry in document["models"].values()
    ):
        raise _unreadable(path, "is not an evaluation's metrics.json (no context, models and references)")
    return document


def _first_samples(path: Path, model: str) -> dict[str, dict]:
    """record id -> the model's first sample, from an evaluation's samples.jsonl."""
    samples = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _unreadable(path, f"line {number} is not JSON ({exc})") from None
        if (
            isinstance(entry, dict)
            and entry.get("model") == model
            and entry.get("sample", 0) == 0
            and "id" in entry
        ):
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
    the evaluation phases' metrics.json), each model's verdict against the best baseline, the reference and
    baseline rows, and how long each phase took (its state.json, lib.llm.pipeline). Replaces only the report
    files it wrote itself (module docstring)."""
    state = read_state(run_dir)
    models: dict[str, Mapping] = {}
    references: Mapping = {}
    baselines: Mapping = {}
    verdicts: dict[str, Mapping] = {}
    context: Mapping = {}
    sources = []
    for folder in ("sft_evaluation", "grpo_evaluation"):
        path = run_dir / folder / "metrics.json"
        if not path.is_file():
            continue
        document = read_evaluation(path)
        sources.append(folder)
        context = context or document["context"]
        references = references or document["references"]
        if not baselines and any("summary" in b for b in document.get("baselines", {}).values()):
            baselines = {name: b for name, b in document["baselines"].items() if "summary" in b}
        verdicts |= document.get("vs_best_baseline", {})
        for label, entry in document["models"].items():
            models[label] = entry
    files = ["metrics.json", "report.md", *(["comparison.png"] if models else [])]
    check_output_folder(run_dir, files, PIPELINE)
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
        if verdicts:
            out[2:2] = ["## Verdict", "", *verdict_lines(verdicts), ""]
        systems = systems_to_show(next(iter(models.values()))["summary"])
        for system in systems:
            rows = {label: entry["summary"][system] for label, entry in models.items()}
            rows.update({REFERENCE_NAMES[name]: references[name][system] for name in references})
            rows.update({f"baseline: {name}": b["summary"][system] for name, b in baselines.items()
                         if system in b["summary"]})  # fmt: skip
            out += [
                "",
                f"## {'All systems' if system == 'all' else system}",
                "",
                *table_lines(rows, context["samples_per_prompt"]),
            ]
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
    if baselines:
        document["baselines"], document["vs_best_baseline"] = baselines, verdicts
    with staging(run_dir, PIPELINE) as staged:
        if models:
            from lib.llm import plots

            title = f"{run_dir.name}: {' vs '.join(models)} on {context['dataset']}"
            summaries = {label: entry["summary"]["all"] for label, entry in models.items()}
            plots.plot_comparison(summaries, SUCCESS_KEYS, title, staged / "comparison.png")
        write_json_atomic(staged / "metrics.json", document)
        write_text_atomic(staged / "report.md", "\n".join(out) + "\n")
        replace_outputs(run_dir, staged, files, PIPELINE)
    return run_dir / "report.md"
