"""Benchmark evaluation throughput: batched generation vs one answer at a time, in one run.

Usage:
    make bench-eval                                  # SmolLM2-135M on this machine's device (CPU here)
    python scripts/bench/eval.py --instances 16 --batch-size 16 --max-new-tokens 128

Both arms run the same code main_eval.py runs (lib.llm.generation.generate_completions, greedy, stopping at the
end-of-turn token) on the same double-integrator prompts; only batch_size differs (1 vs --batch-size). The
order of the arms alternates over --repeats so that a slow spell of this shared machine hits both. Prints and
writes results/bench/eval.{json,md}: instances/s and generated tokens/s of each arm and their ratio.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lib.common.bench import (
    Stopwatch,
    bench_environment,
    bench_parser,
    check_at_least,
    environment_line,
    write_bench_report,
)
from lib.common.errors import EXIT_OK, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model-path", default="embedded")
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each arm (alternating)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (device.type=cpu)"
    )
    args = parser.parse_args(argv)
    check_at_least(args, instances=1, batch_size=1, max_new_tokens=1, repeats=1)

    import numpy as np

    from lib.common.config import resolve_config
    from lib.common.device import settings_from_config, setup_device
    from lib.control.answer import build_prompt
    from lib.control.dataset import sample_initial_states
    from lib.control.systems import get_system
    from lib.llm.generation import generate_completions
    from lib.llm.models import load_model_reference

    cfg = resolve_config(None, args.overrides)
    env = bench_environment(("torch", "transformers"))
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    model, tokenizer, described = load_model_reference(args.model_path, cfg, setup)
    model.to(setup.device)
    system = get_system("double_integrator")
    prompts = [build_prompt(system, x0) for x0 in sample_initial_states(system, args.instances, seed=7)]
    generate_completions(model, tokenizer, prompts[:2], 8, batch_size=2)  # warm-up: first-call overheads

    arms = {"one_at_a_time": 1, "batched": args.batch_size}
    seconds = {name: [] for name in arms}
    tokens = {}
    for repeat in range(args.repeats):
        for name in arms if repeat % 2 == 0 else reversed(arms):
            with Stopwatch() as clock:
                texts = generate_completions(model, tokenizer, prompts, args.max_new_tokens, arms[name])
            seconds[name].append(clock.seconds)
            tokens[name] = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            print(f"{name}: {seconds[name][-1]:.1f} s for {args.instances} instances")
    result = {"environment": env, "model": described, "device": setup.summary(), "instances": args.instances,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats}  # fmt: skip
    for name in arms:
        best = float(np.median(seconds[name]))
        result[name] = {"seconds": seconds[name], "instances_per_s": args.instances / best,
                        "generated_tokens": tokens[name], "tokens_per_s": tokens[name] / best}  # fmt: skip
    result["speedup"] = result["batched"]["instances_per_s"] / result["one_at_a_time"]["instances_per_s"]

    table = [
        f"# Evaluation throughput ({described}, {args.instances} double-integrator prompts, greedy, "
        f"at most {args.max_new_tokens} new tokens)",
        "",
        f"{environment_line(env)}. {setup.summary()}",
        "",
        "| arm | batch | instances/s | generated tokens/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {arms[name]} | {result[name]['instances_per_s']:.3f} | {result[name]['tokens_per_s']:.1f} |"
            for name in arms
        ),  # fmt: skip
        "",
        f"Batched / one at a time: **{result['speedup']:.2f}x** (median of {args.repeats} run(s) each, same process).",
    ]
    json_path, md_path = write_bench_report("eval", result, "\n".join(table), args.output_dir)
    print("\n".join(table))
    print(f"wrote {json_path} and {md_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli(main))
