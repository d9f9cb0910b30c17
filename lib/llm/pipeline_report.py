"""The pipeline's own report: base vs SFT vs GRPO side by side (from the evaluation phases' metrics.json,
with their best-of-k rows), each second stage - SFT paired on the same problems (differences and the
log-ratio of gaps) and, where the pipeline trained the labels-only control, each second stage against it,
each best-of-k row against its model's greedy answers, the reference rows, and each
phase's time (the folder's format: lib/llm/pipeline_folder.py).

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
from lib.llm.report import (
    LOG_RATIO_HEADER,
    LOG_RATIO_NOTE,
    REFERENCE_NAMES,
    SUCCESS_KEYS,
    decoding_text,
    each_baseline_lines,
    log_ratio_row,
    systems_to_show,
    table_lines,
    verdict_lines,
)


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
    phase = f"eval_{folder.removesuffix('_evaluation')}"  # <stage>_evaluation is written by eval_<stage>
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


def stage_samples(run_dir: Path, stages: list[str]) -> dict[str, dict[str, dict]]:
    """stage -> {record id -> its model's first sample} for each stage whose evaluation wrote samples.jsonl
    (a stage's evaluation labels its model by the stage's name); each file is read once."""
    paths = {stage: run_dir / f"{stage}_evaluation" / "samples.jsonl" for stage in stages}
    return {stage: _first_samples(path, stage) for stage, path in paths.items() if path.is_file()}


def stage_vs(first: Mapping[str, dict], after: Mapping[str, dict]) -> dict | None:
    """after - first on the same held-out problems (paired by record id; `stage_samples` gives each): gap
    and score S with bootstrap intervals (lib.llm.evaluation.paired_difference), and under gap.log_ratio
    the per-problem log-ratio of the gaps, failures counted as infinite gaps (paired_log_ratio); None when
    no problem was answered by both."""
    from lib.llm.evaluation import failures_infinite, paired_difference, paired_log_ratio

    ids = [i for i in first if i in after]
    if not ids:
        return None

    def column(samples: dict, key: str) -> np.ndarray:
        return np.array(
            [np.nan if samples[i].get(key) is None else samples[i][key] for i in ids], dtype=float
        )

    gap = paired_difference(column(first, "gap"), column(after, "gap"))
    gap["log_ratio"] = paired_log_ratio(
        failures_infinite(column(first, "gap"), column(first, "feasible") == 1),
        failures_infinite(column(after, "gap"), column(after, "feasible") == 1),
    )
    return {
        "problems": len(ids),
        "gap": gap,
        "score": paired_difference(column(first, "score"), column(after, "score")),
    }


def paired_lines(paired: Mapping, stage: str) -> list[str]:
    """The '<STAGE> - SFT' section: the paired differences of gap and S, then the log-ratio of gaps."""

    def number(value) -> str:
        return "-" if value is None else f"{value:+.3g}"

    def interval(pair) -> str:
        return f"[{number(pair[0])}, {number(pair[1])}]"

    name = stage.upper()
    lines = [
        f"## {name} - SFT on the same problems (paired)",
        "",
        f"{paired['problems']} problems answered by both; a difference counts the problems where both answers "
        f"parsed. Negative gap differences and positive S differences mean {name} did better.",
        "",
        f"| metric | problems | mean difference | median difference | median {name} / median SFT - 1 |",
        "|---|---:|---|---|---|",
    ]
    for key, metric in (("gap", "gap (J - J*) / J*"), ("score", "score S")):
        d = paired[key]
        lines.append(
            f"| {metric} | {d['n']} | {number(d['mean_diff'])} {interval(d['mean_diff_ci'])} | "
            f"{number(d['median_diff'])} {interval(d['median_diff_ci'])} | "
            f"{number(d['median_change'])} {interval(d['median_change_ci'])} |"
        )
    return [
        *lines,
        "",
        LOG_RATIO_NOTE,
        "",
        *LOG_RATIO_HEADER,
        log_ratio_row(f"{name} vs SFT", paired["gap"]["log_ratio"]),
    ]


def control_lines(pairs: Mapping[str, Mapping]) -> list[str]:
    """The 'against the labels-only control' section: each second stage's log-ratio of gaps against the SFT
    run trained further on labels alone at the corrected stage's steps and rate (the labels phase), on the
    same problems."""
    return [
        "## Second stages - labels only on the same problems (paired)",
        "",
        "LABELS is the SFT model trained further on labels alone, at the corrected stage's steps and rate "
        "(the labels phase): a second stage that does not beat it taught nothing that as many steps on labels "
        "do not (GRPO's own steps may differ: see the config). " + LOG_RATIO_NOTE,
        "",
        *LOG_RATIO_HEADER,
        *(
            log_ratio_row(f"{stage.upper()} vs LABELS", pair["gap"]["log_ratio"])
            for stage, pair in pairs.items()
        ),
    ]


def best_of_pipeline_lines(models: Mapping[str, Mapping]) -> list[str]:
    """Each best-of-k row of the evaluations against its model's greedy answers on the same problems (the
    evaluation's metrics.json: best_of.vs_greedy): what a second stage could distil; [] without such rows."""
    rows = {label: entry["best_of"] for label, entry in models.items() if "best_of" in entry}
    if not rows:
        return []
    return [
        "## Best of k - greedy on the same problems (paired)",
        "",
        "Inference-time rows: '<model> best-of-k' keeps per problem the best of k sampled answers as the "
        "simulator ranks them; the gap it closes against the model's own greedy answer bounds what a second "
        "stage can distil from the model's samples. " + LOG_RATIO_NOTE,
        "",
        *LOG_RATIO_HEADER,
        *(log_ratio_row(f"{label} (samples at temperature {about['temperature']}) vs {about['greedy']}",
                        about["vs_greedy"]) for label, about in rows.items()),
    ]  # fmt: skip


def write_pipeline_report(run_dir: Path) -> Path:
    """The pipeline's own report.md, metrics.json and comparison.png: base vs SFT vs GRPO side by side (from
    the evaluation phases' metrics.json, best-of-k rows included), each model's verdict against the best
    baseline and its paired statistic against each baseline, the reference and baseline rows, best-of-k -
    greedy, each second stage - SFT paired (metrics.json: `<stage>_minus_sft`) and - the labels-only control
    where the pipeline trained one (`<stage>_minus_labels`), and how long each phase
    took (its state.json, lib.llm.pipeline). Replaces only the report files it wrote itself (module
    docstring)."""
    state = read_state(run_dir)
    models: dict[str, Mapping] = {}
    references: Mapping = {}
    baselines: Mapping = {}
    verdicts: dict[str, Mapping] = {}
    vs_each: dict[str, Mapping] = {}
    context: Mapping = {}
    sources = []
    # every evaluation phase of the pipeline (eval_sft, eval_grpo, and any other stage's), in phase order
    stages = [phase.removeprefix("eval_") for phase in state["phases"] if phase.startswith("eval_")]
    for folder in (f"{stage}_evaluation" for stage in stages):
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
        vs_each |= document.get("vs_each_baseline", {})
        for label, entry in document["models"].items():
            models[label] = entry
    files = ["metrics.json", "report.md", *(["comparison.png"] if models else [])]
    check_output_folder(run_dir, files, PIPELINE)
    out = [f"# Pipeline {run_dir.name}", ""]
    paired: dict[str, dict] = {}  # stage -> its paired comparison with SFT
    controlled: dict[str, dict] = {}  # second stage -> its paired comparison with the labels-only control
    if not models:
        out.append("No evaluation phase has completed: nothing to compare yet.")
    else:
        out += [
            f"Dataset `{context['dataset']}`, {context['records']} held-out eval problems, mode {context['eval_mode']}, "
            f"temperature {context['temperature']} ({decoding_text(context)}), at most {context['max_new_tokens']} "
            "new tokens. "
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
        if vs_each:
            out += ["", *each_baseline_lines(vs_each)]
        out += ["", "![model comparison](comparison.png)"]
        best_of = best_of_pipeline_lines(models)
        if best_of:
            out += ["", *best_of]
        samples = stage_samples(run_dir, stages)
        for stage in (s for s in samples if s != "sft"):  # every second stage against the first
            pair = stage_vs(samples.get("sft", {}), samples[stage])
            if pair:
                paired[stage] = pair
                out += ["", *paired_lines(pair, stage)]
        # and every second stage against the labels-only control, where the pipeline trained one
        for stage in (s for s in samples if s not in ("sft", "labels")):
            pair = stage_vs(samples.get("labels", {}), samples[stage])
            if pair:
                controlled[stage] = pair
        if controlled:
            out += ["", *control_lines(controlled)]
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
    for stage, pair in paired.items():
        document[f"{stage}_minus_sft"] = pair
    for stage, pair in controlled.items():
        document[f"{stage}_minus_labels"] = pair
    if baselines:
        document["baselines"], document["vs_best_baseline"] = baselines, verdicts
        document["vs_each_baseline"] = vs_each
    with staging(run_dir, PIPELINE) as staged:
        if models:
            from lib.llm import plots

            # best-of-k rows only in the tables: up to 8 more bars a model would bury base vs SFT vs GRPO
            shown = {label: entry for label, entry in models.items() if "best_of" not in entry}
            title = f"{run_dir.name}: {' vs '.join(shown)} on {context['dataset']}"
            summaries = {label: entry["summary"]["all"] for label, entry in shown.items()}
            plots.plot_comparison(summaries, SUCCESS_KEYS, title, staged / "comparison.png")
        write_json_atomic(staged / "metrics.json", document)
        write_text_atomic(staged / "report.md", "\n".join(out) + "\n")
        replace_outputs(run_dir, staged, files, PIPELINE)
    return run_dir / "report.md"
