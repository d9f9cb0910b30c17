"""Benchmark the byte-level entropy model's training throughput (bytes/s) at the original config.

Usage:
    make bench-blt
    python scripts/bench/blt.py                                     # CPU, plus CUDA fp32 and mixed where present
    python scripts/bench/blt.py --devices cpu --steps 5 --warmup 1  # a quick run
    python scripts/bench/blt.py --devices cuda --precisions mixed   # a GPU node, mixed precision only
    python scripts/bench/blt.py --threads 1 2                       # CPU with 1 and with 2 torch threads
    python scripts/bench/blt.py hidden_size=256 num_layers=4        # another shape (blt config keys)

The original config is the blt schema's defaults: hidden 128, 2 layers, 4 heads, dropout 0.1, block 128,
batch 16, gradient accumulation 2, so one optimiser step trains on 16 x 2 x 128 = 4,096 target bytes. Each
case builds the model, runs --warmup untimed steps (allocator, kernel selection), then --steps timed steps of
lib.blt.training.train_step, the trainer's own step, with the trainer's batches (lib.blt.training.StepBatches) from the
config's train_data_dir (the default corpus unless overridden). bytes/s = steps x 4,096 / seconds, batch
cutting included. CPU runs in fp32 (mixed precision is used on CUDA only); on CUDA, "mixed" is bf16 where
the GPU supports it, else fp16 with loss scaling. Writes results/bench/blt.json and blt.md; the machine's
load average is recorded, since other processes on the same cores lower the CPU figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import replace

from lib.common.bench import Stopwatch, bench_environment, bench_parser, check_at_least, write_bench_report
from lib.common.errors import UsageError, run_cli
from lib.common.runs import peak_rss_mb


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--devices", nargs="+", choices=("cpu", "cuda"), help="default: cpu, and cuda if present"
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "mixed"), default=["fp32", "mixed"], help="CUDA only"
    )
    parser.add_argument("--threads", nargs="+", type=int, help="CPU torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per case (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (default 5)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="blt config overrides")
    args = parser.parse_args(argv)
    check_at_least(args, steps=1, warmup=0)
    return args


def run_case(cfg: dict, setup, data, steps: int, warmup: int) -> dict:
    """Train `warmup` + `steps` steps from a fresh model; time the last `steps`."""
    import torch

    from lib.blt.model import build_model
    from lib.blt.training import StepBatches, make_optimizer, make_scheduler, train_step

    cfg = {**cfg, "max_steps": warmup + steps}
    model = build_model(cfg).to(setup.device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if setup.precision == "fp16" else None
    batches = StepBatches(data.cache_path, data.n_tokens, cfg)
    cuda = setup.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for step in range(warmup):
        train_step(model, batches[step], optimizer, scheduler, scaler, setup)
    if cuda:
        torch.cuda.synchronize()
    with Stopwatch() as clock:
        for step in range(warmup, warmup + steps):
            # train_step returns Python floats, which waits for the GPU: each step is timed to its end
            losses.append(train_step(model, batches[step], optimizer, scheduler, scaler, setup).loss)
    seconds = clock.seconds
    bytes_per_step = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    return {
        "device": setup.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "precision": setup.precision,
        "threads": torch.get_num_threads() if not cuda else None,
        "steps": steps,
        "seconds": seconds,
        "bytes_per_step": bytes_per_step,
        "bytes_per_second": steps * bytes_per_step / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb(),
        "peak_memory_kind": "CUDA max allocated" if cuda else "process max RSS (whole process)",
        "last_loss": losses[-1],
    }


def markdown(result: dict) -> str:
    cfg = result["config"]
    env = result["environment"]
    lines = [
        "# Byte-level entropy model: training throughput",
        "",
        f"Config: hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, {cfg['num_heads']} heads, block "
        f"{cfg['block_size']}, batch {cfg['batch_size']} x accumulation {cfg['gradient_accumulation_steps']} "
        f"({result['cases'][0]['bytes_per_step']:,} bytes per optimiser step), {result['parameters']:,} parameters. "
        f"Train data: {result['train_bytes']:,} bytes in `{result['train_data_dir']}`.",
        "",
        "| device | precision | threads | bytes/s | s/step | peak memory [MB] | steps timed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['device']} ({c['device_name']}) | {c['precision']} | {c['threads'] or '-'} | "
            f"{c['bytes_per_second']:,.0f} | {c['seconds_per_step']:.4f} | {c['peak_memory_mb']:,.0f} | {c['steps']} |"
        )
    lines += [
        "",
        f"Machine: {env['machine']}; CUDA: {env['cuda'] or 'none'}; torch {env['packages'].get('torch')}. "
        f"Load average (1, 5, 15 min) at the start {tuple(round(x, 2) for x in env['load_average_start'])}, "
        f"at the end {tuple(round(x, 2) for x in result['load_average_end'])}: other processes on the same "
        "cores lower the CPU figures. Peak memory on CPU is the whole process's max RSS (torch included).",
        f"Made by `python scripts/bench/blt.py` at {env['created_at']} (commit {env['git_commit']}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:

    args = parse_args(argv)
    import torch

    from lib.blt.data import ensure_default_corpus, load_byte_data
    from lib.blt.model import build_model, check_config, count_parameters
    from lib.common.config import resolve_config
    from lib.common.device import choose_device, probe_platform, settings_from_config

    cfg = resolve_config(None, args.overrides, schema_name="blt")
    check_config(cfg)
    facts = probe_platform()
    devices = args.devices or (["cpu", "cuda"] if facts.cuda_available else ["cpu"])
    if "cuda" in devices and not facts.cuda_available:
        raise UsageError(
            "--devices cuda: torch sees no CUDA device here.", fix="run on a GPU node, or --devices cpu."
        )
    ensure_default_corpus(cfg["train_data_dir"])
    data = load_byte_data(cfg["train_data_dir"], cfg["cache_dir"], "train_data_dir")
    if data.n_tokens < cfg["block_size"] + 1:
        raise UsageError(f"{data.directory} is shorter than one block.", fix="lower block_size or add text.")
    env = bench_environment(
        torch_default_threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        load_average_start=os.getloadavg(),
    )
    default_threads = torch.get_num_threads()
    cases = []
    for device in devices:
        variants = [(t, False) for t in (args.threads or [default_threads])] if device == "cpu" else []
        if device == "cuda":
            variants = [(None, p == "mixed") for p in args.precisions]
        for threads, mixed in variants:
            if threads:
                torch.set_num_threads(threads)
            setup = choose_device(
                settings_from_config(
                    {**cfg, "device": {**cfg["device"], "type": device}, "mixed_precision": mixed}
                ),
                facts,
            )
            setup = replace(setup, fallbacks=())  # the device is chosen here, never a fallback
            case = run_case(cfg, setup, data, args.steps, args.warmup)
            print(
                f"{device} {case['precision']} threads={case['threads'] or '-'}: {case['bytes_per_second']:,.0f} "
                f"bytes/s ({case['seconds_per_step']:.4f} s/step)"
            )
            cases.append(case)
    torch.set_num_threads(default_threads)
    result = {
        "config": {
            k: cfg[k]
            for k in (
                "hidden_size",
                "num_layers",
                "num_heads",
                "dropout",
                "block_size",
                "batch_size",
                "gradient_accumulation_steps",
                "learning_rate",
                "seed",
            )
        },
        "parameters": count_parameters(build_model(cfg)),
        "train_data_dir": str(data.directory),
        "train_bytes": data.n_bytes,
        "steps": args.steps,
        "warmup": args.warmup,
        "cases": cases,
        "environment": env,
        "load_average_end": os.getloadavg(),
    }
    json_path, md_path = write_bench_report("blt", result, markdown(result), args.output_dir)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
