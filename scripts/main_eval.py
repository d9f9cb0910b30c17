"""Evaluate models by simulating what they write, against the certified optimum (docs/ARCHITECTURE.md, "Metrics").

Usage:
    python scripts/main_eval.py --model-path models/double_integrator/sft/latest --dataset di_vdp --save-plots
    python scripts/main_eval.py --model-path embedded models/universal/sft/latest --labels base sft \\
        --dataset di_vdp --num-samples 100 --output-dir results/compare
    python scripts/main_eval.py --model-path latest --dataset di_vdp --eval-mode mpc --replan-every 10
    python scripts/main_eval.py --model-path latest --dataset di_vdp --eval-mode format
    python scripts/main_eval.py --model-path models/double_integrator/sft/latest --dataset di_vdp --best-of-k 4 8 16
    python scripts/main_eval.py --eval-mode analyze --model-type blt --model-path models/blt/latest

--model-path takes one or several of: a run folder (models/<scope>/<stage>/<run_id>), a stage folder with a
`latest` file, 'latest' (the newest completed GRPO run), 'embedded' or another base model. Every model
answers the same --num-samples eval records of --dataset (--samples-per-prompt k answers each, for pass@k;
k > 1 needs --temperature > 0), in batches of --batch-size (vLLM on CUDA when installed, model.generate
elsewhere). --best-of-k 4 8 16 (control mode) adds inference-time rows: each model also draws 16 answers
per problem at --best-of-temperature, and '<label> best-of-k' keeps per problem the best of its first k by
simulation (docs/evaluation.md, "Best of k").

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
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.common.config import override_text, resolve_cli, resolve_config, split_overrides
from lib.common.errors import UsageError, run_cli

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
    "decoding": ("control", "eval.decoding"),
    "batch_size": ("control", "eval.batch_size"),
    "max_new_tokens": ("control", "eval.max_new_tokens"),
    "eval_mode": ("control", "eval.mode"),
    "replan_every": ("control", "eval.replan_every"),
    "best_of_k": ("control", "eval.best_of_k"),
    "best_of_temperature": ("control", "eval.best_of_temperature"),
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
    flag(
        "--decoding",
        choices=("token", "expected_value"),
        help="token: as generate picks (default); expected_value: each control the mean of the model's "
        "distribution over it; eval.decoding",
    )
    flag("--batch-size", type=int, help="answers generated together; eval.batch_size")
    flag("--max-new-tokens", type=int, help="longest answer in tokens; eval.max_new_tokens")
    flag("--eval-mode", choices=MODES, help="eval.mode (analyze: the byte-level model, --model-type blt)")
    flag("--replan-every", type=int, help="MPC: steps applied from each plan; eval.replan_every")
    flag(
        "--best-of-k",
        type=int,
        nargs="+",
        help="control mode: add a '<label> best-of-k' row per k, the best of k sampled answers; eval.best_of_k",
    )
    flag(
        "--best-of-temperature",
        type=float,
        help="temperature of the best-of-k samples; eval.best_of_temperature",
    )
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
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = resolve_eval_config(args)
    if cfg["model_type"] == "blt":  # the byte-level entropy model has its own analysis
        from lib.blt.analysis import analyze_from_config

        return analyze_from_config(cfg)
    from lib.llm.evaluate import evaluate_from_config

    return evaluate_from_config(
        cfg, ["python", "scripts/main_eval.py", *(sys.argv[1:] if argv is None else argv)]
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
