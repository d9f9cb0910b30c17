"""What an evaluation writes: metrics.json's document, report.md's tables, samples.jsonl, and the figures
it embeds (lib/llm/evaluate.py runs it; docs/ARCHITECTURE.md, "Metrics")."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lib.control.answer import parse_controls
from lib.control.families import record_system
from lib.control.metrics import SUCCESS_EPS
from lib.llm.evaluation import GAP_FLOOR
from lib.llm.models import run_of_description

SUCCESS_KEYS = [f"success@{round(eps * 100)}%" for eps in SUCCESS_EPS]
FIXED_FILES = ("metrics.json", "report.md", "samples.jsonl")  # every evaluation writes these
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
            for text, system, checks, steps in zip(
                result["texts"], result["systems"], result["checks"], result["steps"], strict=True
            ):
                reason = parse_controls(text, steps).reason
                entry = {"model": result["label"], "system": system, "checks": checks, "reason": reason,
                         "completion": text}  # fmt: skip
                lines.append(json.dumps(entry) + "\n")
            continue
        rows = result["rows"]
        for i in range(len(rows)):
            entry = {"model": result["label"], "id": rows.record_id[i], "system": rows.system[i],
                     "sample": i % rows.k, "reason": rows.reason[i], "completion": rows.completion[i]}  # fmt: skip
            entry.update({key: _json_number(values[i]) for key, values in rows.metrics.items()})
            lines.append(json.dumps(entry) + "\n")
    return "".join(lines)


def metrics_document(
    context: Mapping,
    results: Sequence[Mapping],
    summaries: Mapping,
    ref_summaries: Mapping,
    baselines: Mapping,
) -> dict:
    """metrics.json: the context, each model's summary per system and timing (a best-of-k row: the timing of
    its samples, and `best_of`), the reference rows, and (with a train split) the baselines, each model's
    verdict against the best of them, and the coverage."""
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
        if "best_of" in result:  # an inference-time row: k, temperature, its share better than greedy
            models[result["label"]]["best_of"] = result["best_of"]
        if "gap_by_step" in result:
            models[result["label"]]["gap_by_step"] = result["gap_by_step"]
    document = {"context": dict(context), "models": models, "references": dict(ref_summaries)}
    if baselines:
        summaries_of = baselines["summaries"]
        document["baselines"] = {name: {**about, **({"summary": summaries_of[name]} if name in summaries_of else {})}
                                 for name, about in baselines["about"].items()}  # fmt: skip
        document["vs_best_baseline"] = baselines["verdicts"]
        document["vs_each_baseline"] = baselines["vs_each"]
        document["coverage"] = baselines["coverage"]
    else:
        document["baselines"] = {"missing": "no train split: the problems were sampled fresh, or format mode"}
    return document


def _signed_pct(value, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:+.{digits}f}"


def verdict_lines(verdicts: Mapping) -> list[str]:
    """One line per model: its median gap and success@10% against the best baseline's, the paired comparison
    and whether it beats it (lib/llm/verdict.py)."""
    if not verdicts:
        return [
            'No baseline could be fitted on this train split ("Baselines and coverage" says why): no verdict.'
        ]
    lines = []
    for label, v in verdicts.items():
        low, high = v["median_log_gap_ratio_ci"]
        times = _times(v["median_log_gap_ratio"], "infinitely many times (it failed)")
        bounds = f"{_times(low, 'inf')}, {_times(high, 'inf')}"
        dlow, dhigh = v["success@10%_difference_ci"]
        lines.append(
            f"- **{label}** beats the best baseline (**{v['best_baseline']}**): **{v['beats']}**. "
            f"Median gap {_gap_pct(v['median_gap'])} vs {_gap_pct(v['baseline_median_gap'])}; per problem the "
            f"model's gap is {times} the baseline's (median, 95% CI [{bounds}]); success@10% "
            f"{100 * v['success@10%']:.1f}% vs {100 * v['baseline_success@10%']:.1f}% "
            f"({_signed_pct(v['success@10%_difference'], 1)} points [{_signed_pct(dlow)}, {_signed_pct(dhigh)}]); "
            f"{v['problems']} problems."
        )
    return lines


def _times(log_ratio: float | None, failed: str) -> str:
    """x<ratio> from a log-ratio; `failed` for null, metrics.json's +inf (the model failed where the baseline,
    clipped to the bounds, answered)."""
    return failed if log_ratio is None else f"x{np.exp(log_ratio):.3g}"


def each_baseline_lines(vs_each: Mapping) -> list[str]:
    """The table "Against each baseline": per model and baseline, the verdict's paired statistic (lib/llm/
    verdict.py, `versus_each_baseline`); [] without baselines."""
    if not vs_each:
        return []
    out = [
        "## Against each baseline",
        "",
        "Per problem, the model's gap / the baseline's (median over the problems, a failure an infinite gap, gaps "
        f"under {GAP_FLOOR:.1%} equal; 95% bootstrap interval), the share of problems where the model's gap is "
        "lower, and success@10% model - baseline in points.",
        "",
        "| model | baseline | median gap: model vs baseline | model / baseline per problem [95% CI] | "
        "model better on | success@10% difference [95% CI] | beats it |",
        "|---|---|---|---|---:|---|---|",
    ]
    for label, against in vs_each.items():
        for name, v in against.items():
            low, high = v["median_log_gap_ratio_ci"]
            dlow, dhigh = v["success@10%_difference_ci"]
            out.append(
                f"| {label} | {name} | {_gap_pct(v['median_gap'])} vs {_gap_pct(v['baseline_median_gap'])} | "
                f"{_times(v['median_log_gap_ratio'], 'inf')} [{_times(low, 'inf')}, {_times(high, 'inf')}] | "
                f"{100 * v['model_better_share']:.0f}% | {_signed_pct(v['success@10%_difference'], 1)} "
                f"[{_signed_pct(dlow)}, {_signed_pct(dhigh)}] | {v['beats']} |"
            )
    return out


LOG_RATIO_HEADER = [
    "| after vs before | problems | mean ln ratio, both feasible [95% CI] | typical ratio [95% CI] | "
    "after better [95% CI] | median ln ratio, all [95% CI] | failed: only after / only before / both |",
    "|---|---:|---|---|---|---|---|",
]
LOG_RATIO_NOTE = (
    f"Per problem, ln(max(g_after, {GAP_FLOOR:g}) / max(g_before, {GAP_FLOOR:g})) of the two gaps "
    "(lib/llm/evaluation.py, `paired_log_ratio`): its mean over the problems where both answers are feasible, "
    "with a bootstrap interval over problems; the typical ratio exp(mean) (0.9: gaps 10% smaller); the share "
    f"of all problems where after has the lower gap (gaps under {GAP_FLOOR:.1%} equal, a feasible answer beats "
    "a failure, two failures tie); the median over all problems with a failure as an infinite gap; and the problems where one or "
    "both answers failed (unparsed or out of bounds)."
)


def log_ratio_row(name: str, d: Mapping) -> str:
    """One row of LOG_RATIO_HEADER's table from lib.llm.evaluation.paired_log_ratio's dict."""

    def number(value, digits: str = "+.3g") -> str:
        return "-" if value is None else format(value, digits)

    def interval(pair, digits: str = "+.3g") -> str:
        return f"[{number(pair[0], digits)}, {number(pair[1], digits)}]"

    low, high = d["after_better_ci"]
    better = (
        "-"
        if d["after_better"] is None
        else f"{100 * d['after_better']:.1f}% [{100 * low:.0f}, {100 * high:.0f}]"
    )
    cells = [
        name,
        str(d["problems"]),
        f"{number(d['mean_log_ratio'])} {interval(d['mean_log_ratio_ci'])} (n = {d['both_feasible']})",
        f"{number(d['typical_ratio'], '.3g')} {interval(d['typical_ratio_ci'], '.3g')}",
        better,
        f"{number(d['median_log_ratio'])} {interval(d['median_log_ratio_ci'])}",
        f"{d['only_after_failed']} / {d['only_before_failed']} / {d['both_failed']}",
    ]
    return "| " + " | ".join(cells) + " |"


def best_of_lines(results: Sequence[Mapping]) -> list[str]:
    """report.md's "Best of k" section: each best-of-k row against its model's own answers, paired; [] when
    no row is one."""
    rows = [r for r in results if "best_of" in r]
    if not rows:
        return []
    first = rows[0]["best_of"]
    lines = [
        "## Best of k",
        "",
        f"Inference-time rows: each model also drew {first['samples_drawn']} answers per problem at "
        f"temperature {first['temperature']}, and '<model> best-of-k' keeps per problem the best of its "
        "first k as the simulator ranks them (feasible first, then the lowest cost). Legitimate at "
        "inference, since the simulator is known; it bounds what a second stage can distil from the model's own samples. Below, "
        "each against its model's own (greedy) answer to the same problems.",
        "",
        LOG_RATIO_NOTE,
        "",
        *LOG_RATIO_HEADER,
    ]
    lines += [
        log_ratio_row(f"{r['label']} vs {r['best_of']['greedy']}", r["best_of"]["vs_greedy"]) for r in rows
    ]
    return lines


STEPS_SHOWN = 12  # a longer horizon shows the steps whose exact value lowers the median gap most


def gap_by_step_lines(results: Sequence[Mapping]) -> list[str]:
    """report.md's "Where the gap comes from" section (lib.llm.evaluation.gap_by_step): per model and
    system, each step's median error and the median gap with that step exact; [] without such results."""
    rows = [r for r in results if r.get("gap_by_step")]
    if not rows:
        return []
    lines = [
        "## Where the gap comes from, step by step",
        "",
        "Over each model's feasible answers: the median |u_k - u*_k| against the exact optimum, and the median "
        "gap when u_k alone is replaced by the optimum's value (the other controls as answered). A step whose "
        "exact value takes most of the gap away is where the answers are imprecise.",
    ]
    for r in rows:
        for system, d in r["gap_by_step"].items():
            steps = d["steps"]
            note = ""
            if len(steps) > STEPS_SHOWN:
                lowest = sorted(
                    steps,
                    key=lambda s: (
                        math.inf if s["median_gap_step_exact"] is None else s["median_gap_step_exact"]
                    ),
                )  # None: infinite (diverging answers)
                steps = sorted(lowest[:STEPS_SHOWN], key=lambda s: s["step"])  # fmt: skip
                note = f"; the {STEPS_SHOWN} of {len(d['steps'])} steps whose exact value lowers it most"
            lines += [
                "",
                f"**{r['label']}**, {system} ({d['answers']} feasible answers, median gap "
                f"{_gap_pct(d['median_gap'], 'inf')}{note}):",
                "",
                "| step k | answers | median abs error | median gap with u_k exact |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {s['step']} | {s['answers']} | {s['median_abs_error']:.3g} | {_gap_pct(s['median_gap_step_exact'], 'inf')} |"
                for s in steps
            ]
    return lines


def _gap_pct(value: float | None, infinite: str = "infinite (most answers failed)") -> str:
    return infinite if value is None else f"{100 * value:.3g}%"


def coverage_lines(coverage: Mapping) -> list[str]:
    lines = []
    for system, c in coverage.items():
        grid = c.get("problems")
        held = (f"the sampled region holds {grid:,} distinct problems at the printed precision, training took "
                f"{100 * c['train_fraction']:.2g}% of them; " if isinstance(grid, int) else "")  # fmt: skip
        far = c["nearest_train_distance"]
        lines.append(f"- {system}: {held}{c['train_records']} train records; an evaluated problem lies "
                     f"{far['median']:.3g} (median) to {far['max']:.3g} (max) from the nearest training "
                     "problem, in standardized units of the features.")  # fmt: skip
    return lines


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


def systems_to_show(summary: Mapping) -> list[str]:
    """'all' and each system; just the system when there is one (its table would repeat 'all')."""
    names = [name for name in summary if name != "all"]
    return names if len(names) == 1 else ["all", *names]


def table_lines(rows: Mapping[str, Mapping], k: int) -> list[str]:
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


def decoding_text(context: Mapping) -> str:
    """How the answers were written, for the report's opening paragraph."""
    if context.get("decoding") == "expected_value":  # metrics.json files from before 2026-12-07 lack the key
        return "each control the expected value of the model's distribution over it, the rest greedy"
    return "greedy" if context["temperature"] == 0 else "sampled"


def render_report(
    context: Mapping,
    results: Sequence[Mapping],
    summaries: Mapping,
    ref_summaries: Mapping,
    figures: Sequence[tuple[str, str]],
    baselines: Mapping,
) -> str:
    """report.md: the verdict against the best baseline first, what was evaluated, one table per system
    (models and their best-of-k rows, the reference controllers, the baselines), each model against each
    baseline, coverage, each best-of-k row against its model's answers, the parse failures by reason,
    generation speed, and the figures."""
    k = context["samples_per_prompt"]
    mode = context["eval_mode"] + (
        f" (re-plan every {context['replan_every']} steps)" if context["replan_every"] else ""
    )
    models = [r for r in results if "best_of" not in r]
    out = [
        f"# Evaluation on `{context['dataset']}` ({context['records']} eval problems, mode {mode})",
        "",
        "Models: " + ", ".join(f"**{r['label']}** ({r['model']})" for r in models) + ". "
        f"{k} answer(s) per problem, temperature {context['temperature']} "
        f"({decoding_text(context)}), at most {context['max_new_tokens']} new tokens, "
        f"seed {context['seed']}; commit {context['git_commit']}, {context['created_at']}.",
        "",
        "Rates are over all answers (an answer that does not parse is a failure, never padded); the gap "
        "(J - J*)/J* is over feasible answers, the score S = (J0 - J)/(J0 - J*) (1 = optimal, 0 = doing nothing) "
        "and the terminal error ||x_N - x*|| over parsed answers. Brackets: 95% bootstrap intervals. "
        "Reference rows: the exact optimum, the printed label the model is trained on, and u = 0. Baseline rows: "
        "controllers fitted on the dataset's train split in seconds (nearest label, k-NN, affine least squares, "
        "a small MLP), rounded like a label; one answer per problem, so their pass@k is their pass@1.",
    ]
    if baselines:
        out[1:1] = ["", "## Verdict", "", *verdict_lines(baselines["verdicts"])]
    else:
        out += ["", "No baseline rows: there is no train split to fit them on (fresh problems)."]
    systems = systems_to_show(next(iter(summaries.values())))
    for system in systems:
        rows = {r["label"]: summaries[r["label"]][system] for r in results}
        rows.update({REFERENCE_NAMES[name]: ref_summaries[name][system] for name in ref_summaries})
        for name, summary in (baselines.get("summaries") or {}).items():
            if system in summary:
                rows[f"baseline: {name}"] = summary[system]
        out += ["", f"## {'All systems' if system == 'all' else system}", "", *table_lines(rows, k)]
    if baselines:
        out += ["", *each_baseline_lines(baselines["vs_each"])]
        out += ["", "## Baselines and coverage", ""]
        for name, about in baselines["about"].items():
            details = "; ".join(f"{system}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                for system, d in about.get("systems", {}).items())  # fmt: skip
            missing = "; ".join(
                f"not fitted for {system}: {why}" for system, why in about.get("missing", {}).items()
            )
            out.append(f"- **{name}**: {about['what']} ({'; '.join(x for x in (details, missing) if x)}).")
        out += ["", *coverage_lines(baselines["coverage"])]
    best_of = best_of_lines(results)
    if best_of:
        out += ["", *best_of]
    by_step = gap_by_step_lines(results)
    if by_step:
        out += ["", *by_step]
    out += ["", "## Parse failures", ""]
    for r in results:
        failures = summaries[r["label"]]["all"]["parse_failures"]
        listed = "; ".join(f"{reason}: {count}" for reason, count in failures.items()) or "none"
        out.append(f"- **{r['label']}**: {listed}")
    out += ["", "## Generation", ""]
    for r in results:
        calls = r["calls"]
        if "best_of" in r and r["best_of"]["k"] != r["best_of"]["samples_drawn"]:
            continue  # the best-of rows of a model share its samples: listed once, under the largest k
        speed = f"{calls['prompts'] / calls['seconds']:.2f} answers/s" if calls["seconds"] > 0 else "-"
        name = f"{r['best_of']['greedy']} samples for best-of-k" if "best_of" in r else r["label"]
        out.append(f"- **{name}**: {calls['prompts']} answers in {calls['seconds']:.1f} s ({speed})")
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
    baselines: Mapping,
) -> list[tuple[str, str]]:
    """Draw every figure into folder; returns (file name, title) pairs in report order. context: main_eval's
    (dataset, eval_mode, samples_per_prompt); plot_instances: instances per system with trajectory figures.
    Best-of-k rows are left out: up to 8 more curves and bars of the same model would bury the models and
    baselines (their numbers are in the tables), and a figure's file names stay what `planned_files` knows."""
    from lib.llm import plots

    results = [r for r in results if "best_of" not in r]
    figures: list[tuple[str, str]] = []
    labels = [r["label"] for r in results]
    all_rows = {REFERENCE_NAMES[n]: ref_summaries[n]["all"] for n in ("optimal", "zero")}
    model_rows = {label: summaries[label]["all"] for label in labels}
    gaps = {r["label"]: r["rows"].metrics["gap"][r["rows"].metrics["feasible"]] for r in results}
    gaps[REFERENCE_NAMES["label"]] = references["label"].metrics["gap"][
        references["label"].metrics["feasible"]
    ]
    for name, rows in (baselines.get("rows") or {}).items():
        label = f"baseline: {name}"
        all_rows[label] = baselines["summaries"][name]["all"]
        gaps[label] = rows.metrics["gap"][rows.metrics["feasible"]]
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
        for n, i in enumerate(indices[:plot_instances]):
            record = records[i]
            system = record_system(record)  # a family member's own problem
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
