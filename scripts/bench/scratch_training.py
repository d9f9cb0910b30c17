"""Benchmark the from-scratch model's SFT against this machine's limit: FLOPs per token x tokens/s against the
fp32 matmul FLOP/s torch reaches here; the trainer with and without gradient checkpointing, a bare training
loop, and torch.compile.

Usage:
    make bench-train
    python scripts/bench/scratch_training.py
    python scripts/bench/scratch_training.py --steps 10 --rounds 1      # a quick run

The model is the CPU recipes' (configs/scratch/hour_cpu.yaml: Llama, hidden 128 x 4 layers, 0.6 M parameters)
on --records double_integrator_short problems generated into a temporary folder. It measures, in one run:
  1. the limit: fp32 matmul GFLOP/s at 2048 x 2048 x 2048 and at the model's widest training matmul
     (batch x sequence tokens, 128) @ (128, 256); bf16 at 512^3 (fast only on CPUs with bf16 instructions);
  2. FLOPs per token of one SFT step (forward and backward, torch's FlopCounterMode);
  3. tokens/s of --steps steps of --batch records, --rounds times in turn (a busy machine slows every case
     alike; a case's figure is its best round):
     trainer  SFT through scripts/main_trainer.py as the recipes run it (tokens/s over its train_runtime);
     checkpointed  the same with model.gradient_checkpointing=true (TRL's default; the recipes' until 2026-12-07);
     bare     the same model and batches in a plain loop: forward, backward, clip, AdamW, nothing else;
     compiled the bare loop on torch.compile(model), after --warmup compiled steps (compile time reported);
     bf16     the trainer with device.precision=bf16 (autocast), only on a CPU with bf16 instructions
              (AVX512-BF16, AMX, ARM BF16; elsewhere the run falls back to fp32 and the case is left out).
utilisation = FLOPs per token x tokens/s / matmul GFLOP/s. Writes results/bench/scratch_training.{json,md}.
"""

from __future__ import annotations

import json
import platform
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
from lib.common.config import ROOT, resolve_config
from lib.common.device import cpu_has_bf16
from lib.common.errors import run_cli

CONFIG = ROOT / "configs" / "scratch" / "hour_cpu.yaml"


def trainer_tokens_per_s(work: Path, overrides: list[str], run_id: str) -> float:
    """SFT through main_trainer.py: tokens over train_runtime (num_tokens counts what the attention mask
    keeps; loading, tokenising and saving are outside train_runtime)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "main_trainer.py"), "--config", str(CONFIG), *overrides,
         f"run.run_id={run_id}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"SFT through main_trainer.py failed:\n{result.stderr[-3000:]}")
    history = json.loads((work / "models" / "universal" / "sft" / run_id / "log_history.json").read_text())
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    return max(h.get("num_tokens", 0) for h in history) / runtime


def bare_tokens_per_s(model, batches: list[dict], warmup: int) -> tuple[float, float]:
    """(tokens/s over the batches after the first `warmup`, seconds of the warm-up steps): the trainer's
    arithmetic (forward, backward, gradient clipping at 1.0, AdamW) and nothing else."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, seconds, warm_seconds = 0, 0.0, 0.0
    for i, batch in enumerate(batches):
        with Stopwatch() as clock:
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if i < warmup:
            warm_seconds += clock.seconds
        else:
            tokens, seconds = tokens + int(batch["attention_mask"].sum()), seconds + clock.seconds
    return tokens / seconds, warm_seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=60, help="timed steps a case and round (default 60)")
    parser.add_argument("--batch", type=int, default=64, help="records a step (the recipes': 64)")
    parser.add_argument("--rounds", type=int, default=2, help="times each case runs, in turn (default 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of the bare loops (default 3)")
    parser.add_argument("--records", type=int, default=2000, help="problems generated (default 2,000)")
    args = parser.parse_args(argv)
    check_at_least(args, steps=1, batch=1, rounds=1, warmup=1, records=args.batch)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.llm.models import scratch_model
    from lib.llm.stages import load_stage_records, record_texts
    from lib.llm.throughput import matmul_gflops, training_flops_per_token

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--config", str(CONFIG),
             "--train-samples", str(args.records), "--eval-samples", "10", "--dataset-name", "bench",
             "--output-dir", str(work / "datasets")],
            check=True, capture_output=True,
        )  # fmt: skip
        overrides = [
            "training_type=sft", "data.dataset_name=bench", f"data.datasets_dir={work / 'datasets'}",
            f"run.models_dir={work / 'models'}", "eval.every_steps=0", f"sft.max_steps={args.steps}",
            f"sft.per_device_train_batch_size={args.batch}", f"sft.save_steps={args.steps}",
            f"sft.logging_steps={args.steps}",
        ]  # fmt: skip
        cfg = resolve_config(CONFIG, overrides)
        train = load_stage_records(cfg, "sft")[0]
        # the model main_trainer.py builds from these records (the same cache entry): every case starts here
        model_dir = scratch_model(cfg, record_texts(train))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in train]
        batches = []
        for i in range(args.warmup + args.steps):  # the records in order, as many batches as steps
            first = i * args.batch % (len(texts) - args.batch + 1)
            batch = dict(tokenizer(texts[first : first + args.batch], return_tensors="pt", padding=True))
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            batches.append(batch)

        def fresh_model():
            return AutoModelForCausalLM.from_pretrained(model_dir).train()

        model = fresh_model()
        flops_per_token = training_flops_per_token(model, batches[0])
        tokens_per_step = int(batches[0]["attention_mask"].sum())
        config = model.config
        limits = {
            "fp32 2048 x 2048 x 2048": matmul_gflops(2048, 2048, 2048),
            f"fp32 ({tokens_per_step} x {config.hidden_size}) @ ({config.hidden_size} x "
            f"{config.intermediate_size}), the model's MLP": matmul_gflops(
                tokens_per_step, config.hidden_size, config.intermediate_size
            ),
            "bf16 512 x 512 x 512": matmul_gflops(512, 512, 512, "bfloat16", repeats=2),
        }
        compiled = torch.compile(fresh_model())
        with Stopwatch() as compile_clock:
            bare_tokens_per_s(compiled, batches[:2], warmup=1)  # the first compiled step compiles
        figures: dict[str, list[float]] = {"trainer": [], "checkpointed": [], "bare": [], "compiled": []}
        bf16 = cpu_has_bf16(platform.system(), platform.machine())
        if bf16:
            figures["bf16"] = []
        for round_ in range(args.rounds):
            if bf16:
                figures["bf16"].append(
                    trainer_tokens_per_s(work, [*overrides, "device.precision=bf16"], f"bf16{round_}")
                )
            figures["trainer"].append(trainer_tokens_per_s(work, overrides, f"round{round_}"))
            figures["checkpointed"].append(
                trainer_tokens_per_s(work, [*overrides, "model.gradient_checkpointing=true"], f"gc{round_}")
            )
            figures["bare"].append(bare_tokens_per_s(model, batches, args.warmup)[0])
            figures["compiled"].append(bare_tokens_per_s(compiled, batches, args.warmup)[0])

    peak = limits["fp32 2048 x 2048 x 2048"]
    what = {
        "trainer": "SFT through main_trainer.py, as the recipes run it",
        "checkpointed": "the same with gradient checkpointing (TRL's default)",
        "bare": "the same steps in a plain loop (forward, backward, clip, AdamW)",
        "compiled": f"the plain loop on torch.compile(model) (compiled in {compile_clock.seconds:.0f} s)",
        "bf16": "the trainer with device.precision=bf16 (autocast; this CPU has bf16 instructions)",
    }
    cases = {
        name: {"what": what[name], "rounds": values, "tokens_per_s": max(values),
               "achieved_gflops": flops_per_token * max(values) / 1e9,
               "utilisation": flops_per_token * max(values) / 1e9 / peak}
        for name, values in figures.items()
    }  # fmt: skip
    parameters = sum(p.numel() for p in model.parameters())
    result = {
        "environment": bench_environment(torch_threads=torch.get_num_threads()),
        "config": str(CONFIG.relative_to(ROOT)),
        "parameters": parameters,
        "steps": args.steps,
        "batch": args.batch,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "matmul_gflops": limits,
        "compile_seconds": compile_clock.seconds,
        "cases": cases,
    }
    base = cases["trainer"]["tokens_per_s"]
    table = "\n".join(
        [
            f"From-scratch SFT against this machine's limit ({result['config']}, {parameters:,} parameters)",
            "",
            f"{environment_line(result['environment'])}, {torch.get_num_threads()} torch threads",
            "",
            "| matmul | GFLOP/s |",
            "| --- | ---: |",
            *[f"| {shape} | {value:.1f} |" for shape, value in limits.items()],
            "",
            f"One step of {args.batch} records = {tokens_per_step:,} tokens; {flops_per_token / 1e6:.2f} MFLOP a "
            f"token (forward + backward, FlopCounterMode; 6 x parameters = {6 * parameters / 1e6:.2f}).",
            "",
            f"| case | what | tokens/s (best of {args.rounds}) | x trainer | GFLOP/s | of the 2048^3 matmul |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *[
                f"| {name} | {c['what']} | {c['tokens_per_s']:,.0f} | {c['tokens_per_s'] / base:.2f} | "
                f"{c['achieved_gflops']:.1f} | {c['utilisation']:.0%} |"
                for name, c in cases.items()
            ],
            *(
                []
                if bf16
                else ["", "bf16: left out, this CPU has no bf16 instructions (the run would be fp32)."]
            ),
        ]
    )
    json_path, md_path = write_bench_report("scratch_training", result, table, args.output_dir)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
