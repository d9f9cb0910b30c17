"""Benchmark training on this machine: SFT tokens/s, GRPO seconds per step, peak memory, SFT loss curve.

Usage:
    make bench-train
    python scripts/bench/training.py                         # SmolLM2-135M on CPU, defaults below
    python scripts/bench/training.py --sft-steps 5 --grpo-steps 1 --model /path/to/model   # a quick run

It generates a double-integrator dataset in a temporary folder, then runs the real trainers
(lib/llm/training.py) in child processes, one per stage, so each stage's peak memory (max RSS) is its own:
  SFT  --sft-steps steps, batch --sft-batch, LoRA rank 16, on the dataset's first records;
  GRPO --grpo-steps steps from that SFT run, 2 prompts x 4 generations, --grpo-completion tokens.
Writes results/bench/training.json, training.md (the table) and sft_loss_curve.png, and prints the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lib.common.bench import (
    Stopwatch,
    bench_environment,
    bench_parser,
    check_at_least,
    environment_line,
    write_bench_report,
)
from lib.common.config import ROOT
from lib.common.errors import run_cli

# Run in a child process: train one stage, then print the peak RSS of this process in MB.
CHILD = """
import sys
from lib.common.config import resolve_config
from lib.common.runs import peak_rss_mb
from lib.llm.training import train_from_config
code = train_from_config(resolve_config(None, {overrides!r}), ["scripts/bench/training.py"])
print("PEAK_RSS_MB", peak_rss_mb())
sys.exit(code)
"""


def run_stage(overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one training stage in a fresh process."""
    with Stopwatch() as clock:
        result = subprocess.run(
            [sys.executable, "-c", CHILD.format(overrides=overrides)],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise RuntimeError(f"training failed:\n{result.stderr[-3000:]}")
    return clock.seconds, float(result.stdout.split("PEAK_RSS_MB")[-1].split()[0])


def loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("SFT loss (completion tokens, nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="embedded", help="model.name (default: the embedded SmolLM2-135M)")
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--grpo-completion", type=int, default=400, help="grpo.max_completion_length")
    args = parser.parse_args(argv)
    check_at_least(args, sft_steps=1, sft_batch=1, grpo_steps=1)

    from lib.llm.models import resolve_model_name

    resolve_model_name(args.model)  # convert the embedded model first, so its 30 s is not timed
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records = args.sft_steps * args.sft_batch + 10
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--systems", "double_integrator",
             "--train-samples", str(records), "--eval-samples", "10", "--dataset-name", "bench",
             "--output-dir", str(work / "datasets")],
            check=True, capture_output=True,
        )  # fmt: skip
        common = [
            f"model.name={args.model}",
            "device.type=cpu",
            "data.dataset_name=bench",
            f"data.datasets_dir={work / 'datasets'}",
            f"run.models_dir={work / 'models'}",
            "run.run_id=bench",
            "data.eval_max_samples=0",
        ]
        sft_seconds, sft_peak = run_stage(
            [*common, "training_type=sft", f"sft.max_steps={args.sft_steps}",
             f"sft.per_device_train_batch_size={args.sft_batch}", "sft.logging_steps=1",
             f"sft.save_steps={args.sft_steps}"]
        )  # fmt: skip
        grpo_seconds, grpo_peak = run_stage(
            [*common, "training_type=grpo", f"grpo.max_steps={args.grpo_steps}",
             "grpo.per_device_train_batch_size=8", "grpo.num_generations=4",
             f"grpo.max_completion_length={args.grpo_completion}", f"grpo.save_steps={args.grpo_steps}"]
        )  # fmt: skip
        sft_run = work / "models" / "universal" / "sft" / "bench"
        grpo_run = work / "models" / "universal" / "grpo" / "bench"
        sft_history = json.loads((sft_run / "log_history.json").read_text())
        grpo_history = json.loads((grpo_run / "log_history.json").read_text())
        device = json.loads((sft_run / "run_info.json").read_text())["device"]

    sft_summary = next(h for h in sft_history if "train_runtime" in h)
    tokens = max(h.get("num_tokens", 0) for h in sft_history)
    step_times = [h["step_time"] for h in grpo_history if "step_time" in h]
    completion_lengths = [
        h["completions/mean_length"] for h in grpo_history if "completions/mean_length" in h
    ]
    result = {
        "environment": bench_environment(),
        "device": device,
        "model": args.model,
        "sft": {
            "steps": args.sft_steps,
            "batch": args.sft_batch,
            "train_runtime_s": float(sft_summary["train_runtime"]),
            "tokens": tokens,
            "tokens_per_s": tokens / float(sft_summary["train_runtime"]),
            "seconds_per_step": float(sft_summary["train_runtime"]) / args.sft_steps,
            "process_wall_s": sft_seconds,
            "peak_rss_mb": sft_peak,
            "loss_first": sft_history[0].get("loss"),
            "loss_last": [h["loss"] for h in sft_history if "loss" in h][-1],
        },
        "grpo": {
            "steps": args.grpo_steps,
            "completions_per_step": 8,
            "max_completion_length": args.grpo_completion,
            "seconds_per_step": sum(step_times) / len(step_times) if step_times else None,
            "mean_completion_tokens": sum(completion_lengths) / len(completion_lengths)
            if completion_lengths
            else None,
            "process_wall_s": grpo_seconds,
            "peak_rss_mb": grpo_peak,
        },
    }
    sft, grpo = result["sft"], result["grpo"]
    table = "\n".join(
        [
            f"Training benchmark: {result['model']} ({result['device'].split(' fallbacks')[0]})",
            "",
            environment_line(result["environment"]),
            "",
            "| stage | settings | speed | peak RSS |",
            "| --- | --- | --- | --- |",
            f"| SFT | {sft['steps']} steps x batch {sft['batch']}, LoRA r16 | {sft['tokens_per_s']:.0f} tokens/s "
            f"({sft['seconds_per_step']:.1f} s/step) | {sft['peak_rss_mb']:.0f} MB |",
            f"| GRPO | {grpo['steps']} steps x 8 completions (<= {grpo['max_completion_length']} tokens, mean "
            f"{grpo['mean_completion_tokens']:.0f}) | {grpo['seconds_per_step']:.1f} s/step | {grpo['peak_rss_mb']:.0f} MB |",
            "",
            f"SFT loss: {sft['loss_first']:.3f} at step 1 -> {sft['loss_last']:.3f} at step {sft['steps']} "
            f"(curve: {args.output_dir / 'sft_loss_curve.png'})",
        ]
    )
    json_path, md_path = write_bench_report("training", result, table, args.output_dir)
    loss_curve(
        [h for h in sft_history if "loss" in h],
        args.output_dir / "sft_loss_curve.png",
        f"SFT of {args.model} on double_integrator, batch {args.sft_batch}, LoRA r16, CPU",
    )
    print(table)
    print(f"wrote {json_path}, {md_path} and {args.output_dir / 'sft_loss_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
