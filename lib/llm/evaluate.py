"""One evaluation from a resolved config: every model of eval.model_path answers the same held-out problems,
each answer is simulated and scored, and metrics.json, report.md, samples.jsonl and the figures are written
(docs/ARCHITECTURE.md, "Metrics"). The twin of lib/llm/training.py's `train_from_config`:
scripts/main_eval.py parses flags into a config and calls `evaluate_from_config`.

The order, top to bottom: the problems (a dataset's eval split, or fresh ones for the format check), every
check that can fail before a model loads (settings, output folder, models), then each model in turn
(load, answer, score; with eval.best_of_k also K sampled answers and a best-of-k row per k), the
reference rows, the baselines fitted on the dataset's train split with the models' verdict against the best
of them (lib/llm/verdict.py), and the files, staged in a hidden folder and moved in at the end
(lib/common/outputs.py decides what may be replaced).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import repo_path
from lib.common.errors import EXIT_FAILED, EXIT_OK, UsageError
from lib.common.outputs import MAIN_EVAL, check_output_folder, replace_outputs, staging
from lib.common.runs import git_commit
from lib.control.answer import build_prompt
from lib.control.baselines import BASELINES, dataset_baselines
from lib.control.dataset import sample_initial_states
from lib.control.dataset_format import load_records
from lib.control.families import record_system
from lib.control.systems import get_system
from lib.llm.evaluation import (
    REFERENCES,
    SampleRows,
    answer_records,
    best_of_rows,
    format_rates,
    gap_by_step,
    paired_log_ratio,
    reference_rows,
    score_samples,
    summarize,
)
from lib.llm.models import check_model_reference, load_model_reference, run_of_description
from lib.llm.report import (
    figure_files,
    format_report,
    metrics_document,
    planned_files,
    render_figures,
    render_report,
    sample_lines,
)
from lib.llm.verdict import (
    baseline_rows,
    baselines_about,
    coverage,
    problem_gaps,
    verdicts,
    versus_each_baseline,
)

log = logging.getLogger(__name__)


def check_control_settings(cfg: dict) -> None:
    """What the schema cannot say about the eval settings."""
    settings = cfg["eval"]
    k = settings["samples_per_prompt"]
    if k > 1 and settings["temperature"] == 0:
        raise UsageError(
            f"--samples-per-prompt {k} (eval.samples_per_prompt) with greedy decoding gives {k} identical "
            "answers, so pass@k would equal pass@1.",
            fix="add --temperature 0.7 (or another value > 0) to sample, or use --samples-per-prompt 1.",
        )
    labels, models = settings["labels"], settings["model_path"]
    if labels and len(labels) != len(models):
        raise UsageError(
            f"{len(labels)} --labels (eval.labels) for {len(models)} --model-path values (eval.model_path).",
            fix="give one label per model, in the same order, or none.",
        )
    best_of = settings["best_of_k"]
    if best_of and settings["mode"] != "control":
        # MPC re-plans from states the samples would each lead to differently, and the format check has no
        # cost to rank by: best of k is defined for open-loop answers only
        raise UsageError(
            f"--best-of-k {' '.join(map(str, best_of))} (eval.best_of_k) ranks open-loop answers by their "
            f"simulated cost; --eval-mode {settings['mode']} has no such ranking.",
            fix="drop --best-of-k, or evaluate with --eval-mode control.",
        )
    if cfg["data"]["dataset_name"]:
        return
    if settings["mode"] != "format":
        raise UsageError(
            "no --dataset given (data.dataset_name).",
            fix="pass --dataset NAME or data.dataset_name=NAME (`python scripts/generate_data.py --list` "
            "shows them).",
        )
    if not cfg["data"]["system"]:
        raise UsageError(
            "the format check needs problems: no --dataset (data.dataset_name) and no --system (data.system).",
            fix="pass --dataset NAME to use its eval split, or --system NAME to sample fresh problems.",
        )


def fresh_problems(cfg: dict) -> list[dict]:
    """eval.num_samples problems of data.system, initial states drawn from its box (seeded by `seed`), for the
    format check when no dataset is given: what format_checks and the decoders need (system, prompt in
    generate.prompt_style with generate.decimals, decimals)."""
    system = get_system(cfg["data"]["system"])
    states = sample_initial_states(system, cfg["eval"]["num_samples"], seed=cfg["seed"])
    decimals, style = cfg["generate"]["decimals"], cfg["generate"]["prompt_style"]
    return [
        {"id": f"fresh-{i}", "system": system.name, "x0": x0.tolist(), "decimals": decimals,
         "prompt": build_prompt(system, x0, decimals, style)}
        for i, x0 in enumerate(states)
    ]  # fmt: skip


def model_label(described: str, reference: str) -> str:
    """A short name for tables: '<stage>/<run_id>' for runs, the name for base models."""
    run = run_of_description(described)
    if run is not None:
        return f"{run.parent.name}/{run.name}"
    return Path(reference).name if Path(reference).expanduser().exists() else reference


def make_answerer(
    model, tokenizer, setup, cfg: dict, workdir: Path, records: list[dict], temperature: float | None = None
):
    """prompts -> completions with this model: vLLM on CUDA when the device setup chose it, else generate;
    at eval.temperature unless `temperature` is given (the best-of-k samples, always sampled token by
    token); with eval.decoding expected_value (and no `temperature`), every control written as the mean of
    the model's distribution over it, clipped to the control bounds its prompt states (`stated_bounds`: a
    record's, an MPC re-plan's and a fresh problem's alike) and written to the records' decimals
    (transformers only: vLLM gives no such tree)."""
    from lib.llm.generation import expected_value_answerer, generate_completions, vllm_generator

    settings = cfg["eval"]
    if settings["decoding"] == "expected_value" and temperature is None:
        model.to(setup.device)
        return expected_value_answerer(
            model, tokenizer, records, settings["max_new_tokens"], settings["batch_size"], progress=True
        )
    temperature = settings["temperature"] if temperature is None else temperature
    if setup.vllm:
        merged = workdir / "vllm_model"  # vLLM loads a plain folder: save the merged model once
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        return vllm_generator(str(merged), settings["max_new_tokens"], temperature, cfg["seed"])
    model.to(setup.device)
    return lambda prompts: generate_completions(
        model,
        tokenizer,
        prompts,
        settings["max_new_tokens"],
        settings["batch_size"],
        temperature,
        cfg["seed"],
        progress=True,
    )


def timed_answerer(answer):
    """(answer counting its prompts and seconds, the counts): what metrics.json reports as timing."""
    calls = {"prompts": 0, "seconds": 0.0}

    def timed(prompts):
        start = time.perf_counter()
        texts = answer(prompts)
        calls["seconds"] += time.perf_counter() - start
        calls["prompts"] += len(prompts)
        return texts

    return timed, calls


def best_of_results(
    label: str,
    described: str,
    greedy: SampleRows,
    samples: SampleRows,
    best_of: Sequence[int],
    temperature: float,
    calls: dict,
    seed: int,
) -> list[dict]:
    """One result per k of eval.best_of_k: '<label> best-of-<k>', the best of each record's first k samples
    (lib.llm.evaluation.best_of_rows), with what makes it an inference-time row (`best_of`): k, the
    temperature, the samples drawn per problem, and against the model's own row `greedy` (its first answer
    of each problem: greedy unless eval.temperature > 0) the paired log-ratio of gaps (`vs_greedy`) and the
    share of problems where it beats that answer (`beats_greedy`: a lower gap, gaps under GAP_FLOOR equal,
    or feasible where the greedy answer is not)."""
    out = []
    for k in best_of:
        rows = best_of_rows(samples, k)
        paired = paired_log_ratio(problem_gaps(greedy), problem_gaps(rows), seed)
        about = {"k": k, "temperature": temperature, "samples_drawn": samples.k, "greedy": label,
                 "beats_greedy": paired["after_better"], "vs_greedy": paired}  # fmt: skip
        out.append({"label": f"{label} best-of-{k}", "model": described, "rows": rows, "calls": calls,
                    "best_of": about})  # fmt: skip
    return out


def evaluate_models(cfg: dict, records: list[dict], workdir: Path) -> list[dict]:
    """Load each model in turn, let it answer, score the answers; one dict per model, followed by its
    best-of-k rows when eval.best_of_k is set (`best_of_results`)."""
    from lib.common.device import settings_from_config, setup_device

    settings = cfg["eval"]
    k, mode, best_of = settings["samples_per_prompt"], settings["mode"], settings["best_of_k"]
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    results = []
    for i, reference in enumerate(settings["model_path"]):
        model, tokenizer, described = load_model_reference(reference, cfg, setup)
        label = settings["labels"][i] if settings["labels"] else model_label(described, reference)
        timed, calls = timed_answerer(make_answerer(model, tokenizer, setup, cfg, workdir, records))
        print(f"[{label}] {described}: answering {len(records)} problems x {k}")
        if mode == "format":
            texts = timed([r["prompt"] for r in records for _ in range(k)])
            systems = [r["system"] for r in records for _ in range(k)]
            steps = [record_system(r).steps for r in records]
            rates, checks = format_rates(texts, records, k)
            results.append({"label": label, "model": described, "format_rates": rates, "checks": checks,
                            "texts": texts, "systems": systems, "steps": [s for s in steps for _ in range(k)],
                            "calls": calls})  # fmt: skip
        else:
            rows = score_samples(records, answer_records(records, timed, k, mode, settings["replan_every"]))
            results.append({"label": label, "model": described, "rows": rows, "calls": calls})
            if mode == "control":  # MPC applies pieces of several plans: no one answer to take apart
                results[-1]["gap_by_step"] = gap_by_step(records, rows)
        if best_of:  # check_control_settings allows it in control mode only
            most, temperature = max(best_of), settings["best_of_temperature"]
            print(f"[{label}] best of {', '.join(map(str, best_of))}: {len(records)} problems x {most} "
                  f"samples at temperature {temperature}")  # fmt: skip
            sampler, sampled = timed_answerer(
                make_answerer(model, tokenizer, setup, cfg, workdir, records, temperature=temperature)
            )
            samples = score_samples(records, answer_records(records, sampler, most, "control"))
            results += best_of_results(
                label, described, rows, samples, best_of, temperature, sampled, cfg["seed"]
            )
            del sampler
        del model, timed
        gc.collect()
    if len({r["label"] for r in results}) != len(results):
        raise UsageError(
            "two models got the same label: " + ", ".join(r["label"] for r in results) + ".",
            fix="name them with --labels.",
        )
    return results


def format_document(context: dict, results: list[dict], min_score: float) -> dict:
    """metrics.json of the format check: per model the rate of each check, their mean (score) and whether it
    reaches eval.min_format_score."""
    models = {}
    for r in results:
        rates = r["format_rates"]
        score = sum(rates.values()) / len(rates) if rates else 0.0
        models[r["label"]] = {"model": r["model"], "format_rates": rates, "score": score,
                              "passed": score >= min_score, "timing": r["calls"]}  # fmt: skip
    return {"context": {**context, "min_format_score": min_score}, "models": models}


def score_baselines(cfg: dict, records: list[dict], info: dict, fitted: dict) -> dict:
    """The baselines' rows, summaries and description, the models' verdicts come later (`verdicts`); {} in
    format mode or without a dataset (fresh problems have no train split)."""
    if not fitted:
        return {}
    settings = cfg["eval"]
    rows = {}
    for name in BASELINES:
        if any(name not in model.missing for model in fitted.values()):
            rows[name] = baseline_rows(records, fitted, name, settings["mode"], settings["replan_every"])
    return {"rows": rows, "summaries": {name: summarize(r, cfg["seed"]) for name, r in rows.items()},
            "about": baselines_about(fitted), "coverage": coverage(info, records, fitted)}  # fmt: skip


def write_evaluation(folder: Path, cfg: dict, records: list[dict], results: list[dict], context: dict,
                     baselines: dict):  # fmt: skip
    """Write metrics.json, report.md, samples.jsonl and the figures into folder; (document, report, files)."""
    settings, seed = cfg["eval"], cfg["seed"]
    figures: list[tuple[str, str]] = []
    if settings["mode"] == "format":
        document = format_document(context, results, settings["min_format_score"])
        report = format_report(context, results)
    else:
        references = {name: reference_rows(records, name) for name in REFERENCES}
        summaries = {r["label"]: summarize(r["rows"], seed) for r in results}
        ref_summaries = {name: summarize(rows, seed) for name, rows in references.items()}
        if baselines:
            answers = {r["label"]: r["rows"] for r in results}
            baselines["vs_each"] = versus_each_baseline(answers, baselines["rows"], seed)
            baselines["verdicts"] = verdicts(baselines["vs_each"], baselines["rows"])
        if settings["save_plots"]:
            figures = render_figures(folder, records, results, references, summaries, ref_summaries, context,
                                     settings["plot_instances"], baselines)  # fmt: skip
        document = metrics_document(context, results, summaries, ref_summaries, baselines)
        report = render_report(context, results, summaries, ref_summaries, figures, baselines)
    files = ["metrics.json", "report.md", "samples.jsonl", *figure_files(figures)]
    document["files"] = files
    (folder / "report.md").write_text(report)
    (folder / "samples.jsonl").write_text(sample_lines(results))
    (folder / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return document, report, files


def evaluate_from_config(cfg: dict, command: Sequence[str]) -> int:
    """Evaluate every model of eval.model_path on the config's problems; 0 when done (format mode: 1 when a
    model's format score is below eval.min_format_score)."""
    check_control_settings(cfg)
    settings, data = cfg["eval"], cfg["data"]
    output_dir = repo_path(settings["output_dir"])
    mode = settings["mode"]
    if data["dataset_name"]:
        dataset_dir = repo_path(data["datasets_dir"]) / data["dataset_name"]
        records, info = load_records(
            dataset_dir, "eval", data["system"], settings["num_samples"], round_robin=True
        )
    else:  # the format check of sampled problems (check_control_settings allows it only there)
        records, info = fresh_problems(cfg), {}
    # Everything that can be refused is refused before any model is loaded (non-finite numbers: the loader).
    save_plots = settings["save_plots"] and mode != "format"
    planned = planned_files(records, len(settings["model_path"]), save_plots, settings["plot_instances"])
    check_output_folder(output_dir, planned, MAIN_EVAL, ["training_curves_*.png"] if save_plots else [])
    for reference in settings["model_path"]:
        check_model_reference(reference, cfg)
    # The baselines are fitted (or read from their cache) before any model runs: seconds, not an hour later.
    fitted = {}
    if data["dataset_name"] and mode != "format":
        fitted = dataset_baselines(dataset_dir, info, [r["system"] for r in records])
    with staging(output_dir, MAIN_EVAL) as staged:
        results = evaluate_models(cfg, records, staged)
        context = {
            "dataset": data["dataset_name"] or f"fresh {data['system']} problems", "dataset_seed": info.get("seed"),
            "eval_mode": mode, "records": len(records), "samples_per_prompt": settings["samples_per_prompt"],
            "temperature": settings["temperature"], "decoding": settings["decoding"],
            "max_new_tokens": settings["max_new_tokens"],
            "seed": cfg["seed"], "replan_every": settings["replan_every"] if mode == "mpc" else None,
            "command": " ".join(command), "git_commit": git_commit(),
            "created_at": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg,
        }  # fmt: skip
        baselines = score_baselines(cfg, records, info, fitted)
        document, report, files = write_evaluation(staged, cfg, records, results, context, baselines)
        for name in replace_outputs(output_dir, staged, files, MAIN_EVAL):
            log.info("removed %s of the previous evaluation", output_dir / name)
    print(report.split("\n## Figures")[0])
    print(f"metrics: {output_dir / 'metrics.json'}; report: {output_dir / 'report.md'}")
    if mode == "format" and not all(entry["passed"] for entry in document["models"].values()):
        print(
            f"format score below eval.min_format_score ({settings['min_format_score']}): exit {EXIT_FAILED}"
        )
        return EXIT_FAILED
    return EXIT_OK
