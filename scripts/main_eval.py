"""Evaluate models by simulating what they write, against the certified optimum (DESIGN.md 6).

Usage:
    python scripts/main_eval.py --model-path models/double_integrator/sft/latest --dataset di_vdp --save-plots
    python scripts/main_eval.py --model-path embedded models/universal/sft/latest --labels base sft \\
        --dataset di_vdp --num-samples 100 --output-dir results/compare
    python scripts/main_eval.py --model-path latest --dataset di_vdp --eval-mode mpc --replan-every 10
    python scripts/main_eval.py --model-path latest --dataset di_vdp --eval-mode format
    python scripts/main_eval.py --eval-mode analyze --model-type blt --model-path models/blt/latest

--model-path takes one or several of: a run folder (models/<scope>/<stage>/<run_id>), a stage folder with a
`latest` file, 'latest' (the newest completed GRPO run), 'embedded' or another base model. Every model
answers the same --num-samples eval records of --dataset (--samples-per-prompt k answers each, for pass@k;
k > 1 needs --temperature > 0), in batches of --batch-size (vLLM on CUDA when installed, model.generate
elsewhere).

Modes: `control` simulates each answer open loop; `mpc` closes the loop, re-planning from the simulated state
every --replan-every steps; `format` reports the answer-format checks of verify_grpo_format.py; `analyze`
analyses the byte-level entropy model (--model-type blt).

Outputs in --output-dir (default figures/, where manual evaluations go): metrics.json (every number, per
model and system, with the optimal controller, the printed label and u = 0 as reference rows), report.md (the
tables, figures embedded), and with --save-plots the figures: <system>_trajectory_<i>.png,
phase_portrait_<system>_<i>.png, performance_summary.png, comparison.png (several models) and
training_curves_<label>.png (for run folders). A run replaces the files of the previous run in the same
folder (listed in its metrics.json) and leaves other files alone. The same seed and model with greedy
decoding give identical metrics. Exit codes: 0 done, 1 failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import ROOT
from lib.common.errors import EXIT_OK, UsageError, run_cli
from lib.common.runs import git_commit

log = logging.getLogger("main_eval")
MODES = ("control", "mpc", "format", "analyze")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument

    def flag(name: str, **kwargs):  # accept --eval-mode and the original project's --eval_mode alike
        under = "--" + name[2:].replace("-", "_")
        return add(name, under, **kwargs) if under != name else add(name, **kwargs)

    flag("--model-path", nargs="+", default=["latest"], help="one or several models to evaluate (see above)")
    flag("--labels", nargs="+", help="a short name per --model-path for tables and figures")
    flag("--model-type", choices=("control", "blt"), default="control")
    flag("--dataset", help="dataset name under data.datasets_dir; its eval split is used")
    flag("--system", help="only this system's records")
    flag("--num-samples", type=int, default=100, help="eval records (round-robin over systems)")
    flag("--samples-per-prompt", type=int, default=1, help="k answers per record, for pass@k")
    flag("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    flag("--greedy", action="store_true", help="same as --temperature 0")
    flag("--batch-size", type=int, default=8)
    flag("--max-new-tokens", type=int, default=512)
    flag("--eval-mode", choices=MODES, default="control")
    flag("--replan-every", type=int, default=10, help="MPC: steps applied from each plan before re-planning")
    flag("--save-plots", action="store_true", help="write the figures too")
    flag("--plot-instances", type=int, default=3, help="instances per system with trajectory figures")
    flag("--output-dir", type=Path, help="default figures/")
    flag("--seed", type=int, default=0)
    flag("--thresholds", type=float, nargs="+", help="analyze: entropy thresholds to sweep (bits)")
    flag("--max-bytes", type=int, help="analyze: analyse at most this many eval bytes")
    flag("--config", help="config for device, models_dir and datasets_dir (default: schema defaults)")
    add("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between flags
    if args.greedy:
        args.temperature = 0.0
    for name in ("num_samples", "samples_per_prompt", "batch_size", "max_new_tokens", "replan_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}.")
    if args.samples_per_prompt > 1 and args.temperature == 0:
        raise UsageError(
            f"--samples-per-prompt {args.samples_per_prompt} with greedy decoding gives {args.samples_per_prompt} "
            "identical answers, so pass@k would equal pass@1.",
            fix="add --temperature 0.7 (or another value > 0) to sample, or use --samples-per-prompt 1.",
        )
    if args.labels and len(args.labels) != len(args.model_path):
        raise UsageError(
            f"{len(args.labels)} --labels for {len(args.model_path)} --model-path values.",
            fix="give one label per model, in the same order, or none.",
        )
    if args.eval_mode == "analyze" and args.model_type != "blt":
        raise UsageError(
            "--eval-mode analyze analyses the byte-level entropy model.", fix="add --model-type blt."
        )
    if args.model_type == "blt" and args.eval_mode != "analyze":
        raise UsageError(
            "the byte-level model is evaluated with --eval-mode analyze.", fix="add --eval-mode analyze."
        )
    if args.eval_mode != "analyze" and not args.dataset:
        raise UsageError(
            "no --dataset given.",
            fix="pass --dataset NAME (`python scripts/generate_data.py --list` shows them).",
        )
    return args


def model_label(described: str, reference: str) -> str:
    """A short name for tables: '<stage>/<run_id>' for runs, the name for base models."""
    if described.startswith("run "):
        run = Path(described[4:])
        return f"{run.parent.name}/{run.name}"
    return Path(reference).name if Path(reference).expanduser().exists() else reference


def make_answerer(model, tokenizer, setup, args: argparse.Namespace, workdir: Path):
    """prompts -> completions with this model: vLLM on CUDA when the device setup chose it, else generate."""
    from lib.llm.generation import generate_completions, vllm_generator

    if setup.vllm:
        merged = workdir / "vllm_model"  # vLLM loads a plain folder: save the merged model once
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        return vllm_generator(str(merged), args.max_new_tokens, args.temperature, args.seed)
    model.to(setup.device)
    return lambda prompts: generate_completions(
        model,
        tokenizer,
        prompts,
        args.max_new_tokens,
        args.batch_size,
        args.temperature,
        args.seed,
        progress=True,
    )


def evaluate_models(args: argparse.Namespace, cfg: dict, records: list[dict], workdir: Path) -> list[dict]:
    """Load each model in turn, let it answer, score the answers; one dict per model."""
    from lib.common.device import settings_from_config, setup_device
    from lib.llm.evaluation import answer_records, format_rates, score_samples
    from lib.llm.models import load_model_reference

    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    results = []
    for i, reference in enumerate(args.model_path):
        model, tokenizer, described = load_model_reference(reference, cfg, setup)
        label = args.labels[i] if args.labels else model_label(described, reference)
        answer = make_answerer(model, tokenizer, setup, args, workdir)
        calls = {"prompts": 0, "seconds": 0.0}

        def timed(prompts, answer=answer, calls=calls):
            start = time.perf_counter()
            texts = answer(prompts)
            calls["seconds"] += time.perf_counter() - start
            calls["prompts"] += len(prompts)
            return texts

        print(f"[{label}] {described}: answering {len(records)} problems x {args.samples_per_prompt}")
        if args.eval_mode == "format":
            texts = timed([r["prompt"] for r in records for _ in range(args.samples_per_prompt)])
            systems = [r["system"] for r in records for _ in range(args.samples_per_prompt)]
            rates, checks = format_rates(texts, systems)
            results.append({"label": label, "model": described, "format_rates": rates, "checks": checks,
                            "texts": texts, "systems": systems, "calls": calls})  # fmt: skip
        else:
            rows = score_samples(
                records,
                answer_records(records, timed, args.samples_per_prompt, args.eval_mode, args.replan_every),
            )
            results.append({"label": label, "model": described, "rows": rows, "calls": calls})
        del model, answer
        gc.collect()
    if len({r["label"] for r in results}) != len(results):
        raise UsageError(
            "two models got the same label: " + ", ".join(r["label"] for r in results) + ".",
            fix="name them with --labels.",
        )
    return results


def write_outputs(output_dir: Path, staged: Path, files: list[str]) -> None:
    """Move the staged files into output_dir, first removing the files of the previous evaluation there."""
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = output_dir / "metrics.json"
    if previous.is_file():
        try:
            old_files = json.loads(previous.read_text()).get("files", [])
        except (json.JSONDecodeError, AttributeError):
            old_files = []
        for name in old_files:
            path = output_dir / name
            if isinstance(name, str) and "/" not in name and path.is_file() and name not in files:
                path.unlink()
    for name in files:
        os.replace(staged / name, output_dir / name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from lib.common.config import repo_path, resolve_config

    output_dir = args.output_dir or ROOT / "figures"
    if args.eval_mode == "analyze":
        from lib.blt.analysis import analyze_blt, config_of_run

        if len(args.model_path) != 1:
            raise UsageError("--eval-mode analyze takes one --model-path.")
        cfg = resolve_config(args.config, args.overrides, schema_name="blt")
        if not args.config:  # no config given: analyse with the one the run was trained with
            cfg = config_of_run(args.model_path[0], cfg, args.overrides) or cfg
        metrics = analyze_blt(
            args.model_path[0], cfg, output_dir, args.save_plots, args.thresholds, args.max_bytes, args.seed
        )
        print(f"bits per byte {metrics.get('bits_per_byte')}; report: {output_dir / 'report.md'}")
        return EXIT_OK

    from lib.llm.evaluation import REFERENCES, load_eval_records, reference_rows, summarize
    from lib.llm.report import (
        figure_files,
        format_report,
        metrics_document,
        render_figures,
        render_report,
        sample_lines,
    )

    cfg = resolve_config(args.config, args.overrides)
    dataset_dir = repo_path(cfg["data"]["datasets_dir"]) / args.dataset
    records, info = load_eval_records(dataset_dir, args.num_samples, args.system)
    staged = Path(output_dir).parent / f".{Path(output_dir).name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        results = evaluate_models(args, cfg, records, staged)
        context = {
            "dataset": args.dataset, "dataset_seed": info.get("seed"), "eval_mode": args.eval_mode,
            "records": len(records), "samples_per_prompt": args.samples_per_prompt,
            "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
            "replan_every": args.replan_every if args.eval_mode == "mpc" else None,
            "command": "python scripts/main_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "git_commit": git_commit(), "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }  # fmt: skip
        if args.eval_mode == "format":
            document = {"context": context, "models": {r["label"]: {"model": r["model"], "format_rates": r["format_rates"],
                        "timing": r["calls"]} for r in results}}  # fmt: skip
            report = format_report(context, results)
            figures: list[str] = []
        else:
            references = {name: reference_rows(records, name) for name in REFERENCES}
            summaries = {r["label"]: summarize(r["rows"], args.seed) for r in results}
            ref_summaries = {name: summarize(rows, args.seed) for name, rows in references.items()}
            figures = (
                render_figures(staged, records, results, references, summaries, ref_summaries, args)
                if args.save_plots
                else []
            )
            document = metrics_document(context, results, summaries, ref_summaries)
            report = render_report(context, results, summaries, ref_summaries, figures)
        (staged / "report.md").write_text(report)
        (staged / "samples.jsonl").write_text(sample_lines(results))
        files = ["metrics.json", "report.md", "samples.jsonl", *figure_files(figures)]
        document["files"] = files
        (staged / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        write_outputs(Path(output_dir), staged, files)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(report.split("\n## Figures")[0])
    print(f"metrics: {Path(output_dir) / 'metrics.json'}; report: {Path(output_dir) / 'report.md'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli(main))
