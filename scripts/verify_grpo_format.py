"""Check, with real generation, that a model keeps the answer format <REASONING>...</REASONING><CONTROLS>...</CONTROLS>.

Usage:
    make verify-grpo                                   # the newest completed GRPO run, 10 built-in problems
    python scripts/verify_grpo_format.py --model-path models/double_integrator/grpo/latest --num-tests 20
    python scripts/verify_grpo_format.py --model-path embedded --dataset test_di --min-score 0.8

Problems come from a dataset's eval split (--dataset) or are sampled fresh for --system. The model answers
each one (greedy unless --temperature > 0) and every answer is checked (lib.control.answer.format_checks): reasoning
tags, control tags, proper order, parses as numbers, exact control count, controls within bounds. Prints
the rate of each check and the overall score (their mean); writes summary.json and failures.jsonl (every
answer that failed a check, with the parser's reason) to --output-dir. Exit 0 when the score is at least
--min-score, 1 below it, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.common.atomic import write_json_atomic, write_text_atomic
from lib.common.config import ROOT
from lib.common.errors import EXIT_FAILED, EXIT_OK, UsageError, run_cli


def problems(args: argparse.Namespace, datasets_dir: Path) -> list[tuple[str, list[float], list[dict]]]:
    """(system, x0, prompt) for each test: a dataset's eval records, or freshly sampled initial states."""
    from lib.control.answer import build_prompt
    from lib.control.dataset import read_split, sample_initial_states
    from lib.control.systems import get_system

    if args.dataset:
        path = datasets_dir / args.dataset
        if not path.is_dir():
            raise UsageError(
                f"dataset '{args.dataset}' not found in {datasets_dir}.",
                fix="`python scripts/generate_data.py --list` shows the datasets; or omit --dataset to sample problems.",
            )
        records = read_split(path, "eval")[: args.num_tests]
        return [(r["system"], r["x0"], r["prompt"]) for r in records]
    system = get_system(args.system)
    states = sample_initial_states(system, args.num_tests, seed=args.seed)
    return [(system.name, x0.tolist(), build_prompt(system, x0)) for x0 in states]


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path", default="latest", help="run folder, stage folder, 'latest', or a model"
    )
    parser.add_argument("--num-tests", type=int, default=10)
    parser.add_argument("--dataset", help="take the problems from this dataset's eval split")
    parser.add_argument("--system", default="double_integrator", help="system of the sampled problems")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 when the overall score is below")
    parser.add_argument("--output-dir", type=Path, help="default results/verify_grpo/<time>")
    parser.add_argument(
        "--config", help="config for device, models_dir and datasets_dir (default: schema defaults)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between flags
    if args.num_tests < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        raise UsageError("--num-tests, --max-new-tokens and --batch-size must be at least 1.")
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score must be within [0, 1], got {args.min_score}.")

    from lib.common.config import repo_path, resolve_config
    from lib.common.device import settings_from_config, setup_device
    from lib.control.answer import parse_controls
    from lib.control.systems import get_system
    from lib.llm.evaluation import format_rates
    from lib.llm.generation import generate_completions
    from lib.llm.models import load_model_reference

    cfg = resolve_config(args.config, args.overrides)
    tests = problems(args, repo_path(cfg["data"]["datasets_dir"]))
    setup = setup_device(settings_from_config(cfg))
    model, tokenizer, described = load_model_reference(args.model_path, cfg, setup)
    model.to(setup.device)
    start = time.perf_counter()
    completions = generate_completions(
        model,
        tokenizer,
        [p for _, _, p in tests],
        args.max_new_tokens,
        args.batch_size,
        args.temperature,
        args.seed,
    )
    seconds = time.perf_counter() - start

    rates, checks = format_rates(completions, [name for name, _, _ in tests])
    rows = [
        {"system": name, "x0": x0, "checks": check, "completion": text,
         "reason": parse_controls(text, get_system(name).steps).reason}
        for (name, x0, _), text, check in zip(tests, completions, checks, strict=True)
    ]  # fmt: skip
    score = sum(rates.values()) / len(rates)

    output = args.output_dir or ROOT / "results" / "verify_grpo" / time.strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    failures = [r for r in rows if not all(r["checks"].values())]
    write_text_atomic(output / "failures.jsonl", "".join(json.dumps(r) + "\n" for r in failures))
    summary = {"model": described, "tests": len(rows), "rates": rates, "score": score,
               "min_score": args.min_score, "passed": score >= args.min_score, "generation_seconds": seconds}  # fmt: skip
    write_json_atomic(output / "summary.json", summary)

    print(f"format verification of {described}: {len(rows)} answers, {seconds:.1f} s of generation")
    for check, rate in rates.items():
        print(f"  {check.replace('_', ' '):24s} {rate:6.1%}")
    print(f"  {'overall score':24s} {score:6.1%}  (min {args.min_score:.0%})")
    print(f"{len(failures)} failing answers saved to {output / 'failures.jsonl'}")
    return EXIT_OK if score >= args.min_score else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(run_cli(main))
