"""Check, with real generation, that a model keeps the answer format: `main_eval.py --eval-mode format` by its old name.

Usage:
    make verify-grpo                                   # the newest completed GRPO run, fresh double-integrator problems
    python scripts/verify_grpo_format.py --model-path models/double_integrator/grpo/latest --num-tests 20 \\
        --system double_integrator
    python scripts/verify_grpo_format.py --model-path embedded --dataset test_di --min-score 0.8

An alias with no settings of its own: it runs scripts/main_eval.py with `--eval-mode format`, where
`--num-tests` is `--num-samples` (eval.num_samples) and `--min-score` is eval.min_format_score; every other
flag and key=value is main_eval.py's, with the schema's defaults (model `latest`, the eval split of
--dataset, or eval.num_samples fresh problems of --system). Every answer is checked
(lib.control.answer.format_checks: reasoning tags, control tags, order, numbers, count, bounds);
report.md and metrics.json give each check's rate and the overall score (their mean), samples.jsonl every
answer with its checks. Exit 0 when every model's score is at least --min-score, 1 below it, 2 on bad input.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.common.errors import run_cli

RENAMED = {"--num-tests": "--num-samples", "--num_tests": "--num-samples"}


def main_eval_arguments(argv: Sequence[str]) -> list[str]:
    """This script's flags as main_eval.py's: --num-tests N -> --num-samples N, --min-score S ->
    eval.min_format_score=S, the rest as given, in format mode."""
    out, rest = ["--eval-mode", "format"], list(argv)
    while rest:
        word = rest.pop(0)
        name, equals, value = word.partition("=")
        if name in ("--min-score", "--min_score"):
            out.append(f"eval.min_format_score={value if equals else (rest.pop(0) if rest else '')}")
        else:
            out.append(RENAMED.get(name, name) + equals + value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    arguments = main_eval_arguments(sys.argv[1:] if argv is None else argv)
    main_eval = runpy.run_path(str(Path(__file__).with_name("main_eval.py")))["main"]
    return main_eval(arguments)


if __name__ == "__main__":
    sys.exit(run_cli(main))
