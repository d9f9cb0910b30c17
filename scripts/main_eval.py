"""Evaluate models by simulating what they write, against the certified optimum (docs/ARCHITECTURE.md, "Metrics").

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

Every setting is a key of the config (schemas/control.schema.json; blt.schema.json for analyze): each flag is
a shorthand for one (`--batch-size 4` is `eval.batch_size=4`, `--dataset` is `data.dataset_name`, `--seed` is
`seed`), and the defaults are the schema's. `--config FILE` and `key=value` overrides work as for
main_trainer.py; precedence: schema defaults < `extends:` parents < the config file < flags < key=value. The
resolved config is recorded in metrics.json (context.config).

Outputs in --output-dir (default figures/, where manual evaluations go): metrics.json (every number, per
model and system, with the optimal controller, the printed label and u = 0 as reference rows), report.md (the
tables, figures embedded), and with --save-plots the figures: <system>_trajectory_<i>.png,
phase_portrait_<system>_<i>.png, performance_summary.png, comparison.png (several models) and
training_curves_<label>.png (for run folders). main_eval records what it wrote, with each file's sha256, in
.main_eval_manifest.json there: a run replaces or removes only files of the previous run listed there and
still unchanged, and leaves every other file alone; a file of a name it writes that it did not write (another
tool's metrics.json, say) is refused up front (exit 2: pick another --output-dir). The output folder, the
models' folders and the settings are checked before any model is loaded. The same seed and model with greedy
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

from lib.common.config import override_text, repo_path, resolve_cli, resolve_config, split_overrides
from lib.common.errors import EXIT_OK, UsageError, run_cli
from lib.common.runs import git_commit

log = logging.getLogger("main_eval")
MODES = ("control", "mpc", "format", "analyze")

# Each flag's key in the config: (schema, dotted key); the schema defaults are the flags' defaults.
# "both": the key exists in the control and the blt schema alike.
FLAG_KEYS = {
    "model_path": ("both", "eval.model_path"),
    "labels": ("control", "eval.labels"),
    "dataset": ("control", "data.dataset_name"),
    "system": ("control", "data.system"),
    "num_samples": ("control", "eval.num_samples"),
    "samples_per_prompt": ("control", "eval.samples_per_prompt"),
    "temperature": ("control", "eval.temperature"),
    "batch_size": ("control", "eval.batch_size"),
    "max_new_tokens": ("control", "eval.max_new_tokens"),
    "eval_mode": ("control", "eval.mode"),
    "replan_every": ("control", "eval.replan_every"),
    "save_plots": ("both", "eval.save_plots"),
    "plot_instances": ("control", "eval.plot_instances"),
    "output_dir": ("both", "eval.output_dir"),
    "seed": ("both", "seed"),
    "thresholds": ("blt", "analysis_thresholds"),
    "max_bytes": ("blt", "eval.max_bytes"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument

    def flag(name: str, **kwargs):  # accept --eval-mode and the original project's --eval_mode alike
        under = "--" + name[2:].replace("-", "_")
        return add(name, under, **kwargs) if under != name else add(name, **kwargs)

    # No defaults here (argparse's None = not given): they are the schema's (FLAG_KEYS).
    flag("--model-path", nargs="+", help="one or several models to evaluate (see above); eval.model_path")
    flag("--labels", nargs="+", help="a short name per --model-path for tables and figures; eval.labels")
    flag("--model-type", choices=("control", "blt"), help="the config's model_type (blt for analyze)")
    flag("--dataset", help="dataset name under data.datasets_dir; its eval split is used; data.dataset_name")
    flag("--system", help="only this system's records; data.system")
    flag("--num-samples", type=int, help="eval records (round-robin over systems); eval.num_samples")
    flag("--samples-per-prompt", type=int, help="k answers per record, for pass@k; eval.samples_per_prompt")
    flag("--temperature", type=float, help="0 = greedy (the default); eval.temperature")
    flag("--greedy", action="store_true", help="same as --temperature 0")
    flag("--batch-size", type=int, help="answers generated together; eval.batch_size")
    flag("--max-new-tokens", type=int, help="longest answer in tokens; eval.max_new_tokens")
    flag("--eval-mode", choices=MODES, help="eval.mode (analyze: the byte-level model, --model-type blt)")
    flag("--replan-every", type=int, help="MPC: steps applied from each plan; eval.replan_every")
    flag("--save-plots", action="store_const", const=True, help="write the figures too; eval.save_plots")
    flag(
        "--plot-instances", type=int, help="instances per system with trajectory figures; eval.plot_instances"
    )
    flag("--output-dir", type=Path, help="default figures/; eval.output_dir")
    flag("--seed", type=int, help="seed (bootstrap intervals, sampling, the analysis sample)")
    flag(
        "--thresholds",
        type=float,
        nargs="+",
        help="analyze: entropy thresholds to sweep (bits); analysis_thresholds",
    )
    flag("--max-bytes", type=int, help="analyze: analyse at most this many eval bytes; eval.max_bytes")
    flag("--config", help="a config file (default: the schema defaults)")
    add("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.batch_size=4")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between flags
    swallowed = []
    for name in ("model_path", "labels"):  # `--model-path a b eval.batch_size=4`
        values, more = split_overrides(getattr(args, name))
        setattr(args, name, values)
        swallowed += more
    args.overrides = [*swallowed, *args.overrides]
    if args.greedy:
        args.temperature = 0.0
    if args.output_dir is not None:  # a path on the command line is from the current folder
        args.output_dir = args.output_dir.expanduser().absolute()
    return args


def resolve_eval_config(args: argparse.Namespace) -> dict:
    """The resolved config: schema defaults < extends < --config < flags < key=value. Flags of the other
    model family (e.g. --batch-size for the byte-level analysis) are refused, naming the flag."""
    kind = resolve_config(args.config, schema_name=args.model_type)["model_type"]
    if args.eval_mode == "analyze" and kind != "blt":
        raise UsageError(
            "--eval-mode analyze analyses the byte-level entropy model.", fix="add --model-type blt."
        )
    if kind == "blt" and args.eval_mode != "analyze":
        raise UsageError(
            "the byte-level model is evaluated with --eval-mode analyze.", fix="add --eval-mode analyze."
        )
    flags = {}
    for name, (schema, key) in FLAG_KEYS.items():
        value = getattr(args, name)
        option = "--" + name.replace("_", "-")
        if value is None or (name == "eval_mode" and kind == "blt"):
            continue
        if schema not in ("both", kind):
            where = "--eval-mode analyze only" if schema == "blt" else "control, mpc and format evaluations"
            raise UsageError(f"{option} applies to {where}.", fix=f"drop {option}.")
        flags[key] = (option, str(value) if isinstance(value, Path) else value)
    cfg = resolve_cli(args.config, flags, args.overrides, schema_name=kind)
    if kind == "blt" and not args.config:  # no config given: analyse with the one the run was trained with
        from lib.blt.analysis import config_of_run

        overrides = [f"{key}={override_text(value)}" for key, (_, value) in flags.items()]
        cfg = config_of_run(cfg["eval"]["model_path"][0], cfg, [*overrides, *args.overrides]) or cfg
    if kind == "control":
        check_control_settings(cfg)
    return cfg


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
    if not cfg["data"]["dataset_name"]:
        raise UsageError(
            "no --dataset given (data.dataset_name).",
            fix="pass --dataset NAME or data.dataset_name=NAME (`python scripts/generate_data.py --list` "
            "shows them).",
        )


def model_label(described: str, reference: str) -> str:
    """A short name for tables: '<stage>/<run_id>' for runs, the name for base models."""
    from lib.llm.models import run_of_description

    run = run_of_description(described)
    if run is not None:
        return f"{run.parent.name}/{run.name}"
    return Path(reference).name if Path(reference).expanduser().exists() else reference


def make_answerer(model, tokenizer, setup, cfg: dict, workdir: Path):
    """prompts -> completions with this model: vLLM on CUDA when the device setup chose it, else generate."""
    from lib.llm.generation import generate_completions, vllm_generator

    settings = cfg["eval"]
    if setup.vllm:
        merged = workdir / "vllm_model"  # vLLM loads a plain folder: save the merged model once
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        return vllm_generator(str(merged), settings["max_new_tokens"], settings["temperature"], cfg["seed"])
    model.to(setup.device)
    return lambda prompts: generate_completions(
        model,
        tokenizer,
        prompts,
        settings["max_new_tokens"],
        settings["batch_size"],
        settings["temperature"],
        cfg["seed"],
        progress=True,
    )


def evaluate_models(cfg: dict, records: list[dict], workdir: Path) -> list[dict]:
    """Load each model in turn, let it answer, score the answers; one dict per model."""
    from lib.common.device import settings_from_config, setup_device
    from lib.llm.evaluation import answer_records, format_rates, score_samples
    from lib.llm.models import load_model_reference

    settings = cfg["eval"]
    k, mode = settings["samples_per_prompt"], settings["mode"]
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    results = []
    for i, reference in enumerate(settings["model_path"]):
        model, tokenizer, described = load_model_reference(reference, cfg, setup)
        label = settings["labels"][i] if settings["labels"] else model_label(described, reference)
        answer = make_answerer(model, tokenizer, setup, cfg, workdir)
        calls = {"prompts": 0, "seconds": 0.0}

        def timed(prompts, answer=answer, calls=calls):
            start = time.perf_counter()
            texts = answer(prompts)
            calls["seconds"] += time.perf_counter() - start
            calls["prompts"] += len(prompts)
            return texts

        print(f"[{label}] {described}: answering {len(records)} problems x {k}")
        if mode == "format":
            texts = timed([r["prompt"] for r in records for _ in range(k)])
            systems = [r["system"] for r in records for _ in range(k)]
            rates, checks = format_rates(texts, systems)
            results.append({"label": label, "model": described, "format_rates": rates, "checks": checks,
                            "texts": texts, "systems": systems, "calls": calls})  # fmt: skip
        else:
            rows = score_samples(
                records,
                answer_records(records, timed, k, mode, settings["replan_every"]),
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = resolve_eval_config(args)
    settings = cfg["eval"]
    output_dir = repo_path(settings["output_dir"])
    if cfg["model_type"] == "blt":
        from lib.blt.analysis import analyze_blt

        metrics = analyze_blt(
            settings["model_path"][0], cfg, output_dir, settings["save_plots"], None, settings["max_bytes"],
            cfg["seed"],
        )  # fmt: skip
        print(f"bits per byte {metrics.get('bits_per_byte')}; report: {output_dir / 'report.md'}")
        return EXIT_OK

    from lib.llm.evaluation import REFERENCES, load_eval_records, reference_rows, summarize
    from lib.llm.models import check_model_reference
    from lib.llm.report import (
        check_output_folder,
        figure_files,
        format_report,
        metrics_document,
        planned_files,
        render_figures,
        render_report,
        replace_outputs,
        sample_lines,
    )

    dataset = cfg["data"]["dataset_name"]
    mode, seed = settings["mode"], cfg["seed"]
    dataset_dir = repo_path(cfg["data"]["datasets_dir"]) / dataset
    records, info = load_eval_records(dataset_dir, settings["num_samples"], cfg["data"]["system"])
    # Everything that can be refused is refused before any model is loaded (non-finite numbers: the loader).
    save_plots = settings["save_plots"] and mode != "format"
    planned = planned_files(records, len(settings["model_path"]), save_plots, settings["plot_instances"])
    check_output_folder(output_dir, planned, save_plots)
    for reference in settings["model_path"]:
        check_model_reference(reference, cfg)
    staged = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        staged.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(
            f"--output-dir {output_dir}: cannot create {staged.parent}/ ({exc.strerror or exc}).",
            fix="pass a folder you can write to as --output-dir (eval.output_dir), e.g. results/eval.",
        ) from None
    try:
        results = evaluate_models(cfg, records, staged)
        context = {
            "dataset": dataset, "dataset_seed": info.get("seed"), "eval_mode": mode,
            "records": len(records), "samples_per_prompt": settings["samples_per_prompt"],
            "temperature": settings["temperature"], "max_new_tokens": settings["max_new_tokens"], "seed": seed,
            "replan_every": settings["replan_every"] if mode == "mpc" else None,
            "command": "python scripts/main_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "git_commit": git_commit(), "created_at": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg,
        }  # fmt: skip
        if mode == "format":
            document = {"context": context, "models": {r["label"]: {"model": r["model"], "format_rates": r["format_rates"],
                        "timing": r["calls"]} for r in results}}  # fmt: skip
            report = format_report(context, results)
            figures: list[str] = []
        else:
            references = {name: reference_rows(records, name) for name in REFERENCES}
            summaries = {r["label"]: summarize(r["rows"], seed) for r in results}
            ref_summaries = {name: summarize(rows, seed) for name, rows in references.items()}
            figures = (
                render_figures(
                    staged,
                    records,
                    results,
                    references,
                    summaries,
                    ref_summaries,
                    context,
                    settings["plot_instances"],
                )  # fmt: skip
                if settings["save_plots"]
                else []
            )
            document = metrics_document(context, results, summaries, ref_summaries)
            report = render_report(context, results, summaries, ref_summaries, figures)
        (staged / "report.md").write_text(report)
        (staged / "samples.jsonl").write_text(sample_lines(results))
        files = ["metrics.json", "report.md", "samples.jsonl", *figure_files(figures)]
        document["files"] = files
        (staged / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        for name in replace_outputs(output_dir, staged, files):
            log.info("removed %s of the previous evaluation", output_dir / name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(report.split("\n## Figures")[0])
    print(f"metrics: {output_dir / 'metrics.json'}; report: {output_dir / 'report.md'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli(main))
