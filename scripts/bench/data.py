"""Benchmark the dataset generator and measure the old labels against the exact ones.

Usage:
    make bench
    python scripts/bench/data.py                          # default counts (about a minute on 2 cores)
    python scripts/bench/data.py --samples 200 --nonlinear-samples 8 --quality-samples 200   # a quick run

It measures, in one run and on one core (--workers 1):
  1. samples per second end to end (sample x0, solve, round, format, write jsonl) for each system, after a
     warm-up that builds the per-system QP / NLP once (that one-time set-up is reported separately);
  2. the same count of double-integrator samples labelled the OLD way (clipped infinite-horizon LQR on a
     forward-Euler model, lib/control/references.py), through the same formatting and writing, as the baseline rate;
  3. the quality of those old labels: J_baseline / J* on the default and on the wide initial-state box,
     for every system (median, 90th percentile, max, and the share above 1.01, i.e. worse than 1%), also
     once rounded to 2 decimals as printed, next to our printed labels (J_label / J*).
The baseline's records go through the same formatting as ours only to time it; their text is not a label.
Writes results/bench/bench.json and results/bench/bench.md and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib.common.bench import (
    Stopwatch,
    bench_environment,
    bench_parser,
    check_at_least,
    environment_line,
    write_bench_report,
)
from lib.common.errors import run_cli

SEED = 12345


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--samples", type=int, default=5000, help="samples per linear system (and baseline)")
    parser.add_argument("--nonlinear-samples", type=int, default=48, help="samples per nonlinear system")
    parser.add_argument(
        "--quality-samples", type=int, default=5000, help="x0 per box for J_baseline/J* (linear)"
    )
    args = parser.parse_args(argv)
    check_at_least(args, samples=2, nonlinear_samples=2, quality_samples=2)
    return args


def timed_dataset(system_name: str, count: int, out: Path) -> dict:
    """Generate and write `count` samples of one system; seconds and the dataset's quality figures."""
    from lib.control.dataset import build_dataset, write_dataset

    n_eval = max(1, count // 10)
    with Stopwatch() as clock:
        lines, info = build_dataset([system_name], count - n_eval, n_eval, seed=SEED)
        write_dataset(out, system_name, lines, info, overwrite=True)
    seconds = clock.seconds
    details = info["systems"][system_name]
    return {
        "samples": count,
        "seconds": seconds,
        "samples_per_s": count / seconds,
        "worst_kkt_residual": details["worst_kkt_residual"],
        "min_starts_agreed": details["min_starts_agreed"],
        "starts_total": details["starts_total"],
        "worst_label_gap": details["worst_label_gap"],
    }


def timed_baseline(count: int, out: Path) -> dict:
    """The old labelling of `count` double-integrator samples, through the same formatting and writing."""
    from lib.control.dataset import record_lines, sample_initial_states, write_dataset
    from lib.control.labels import round_plain
    from lib.control.references import ReferenceSolution, clipped_lqr_controls
    from lib.control.systems import get_system, simulate, trajectory_cost

    system = get_system("double_integrator")
    with Stopwatch() as clock:
        x0 = sample_initial_states(system, count, SEED)
        u = clipped_lqr_controls(system, x0)
        label = round_plain(system, u, 2)
        J = trajectory_cost(system, simulate(system, x0, u), u)
        ref = ReferenceSolution(
            u=u,
            J=J,
            u_label=label,
            J_label=trajectory_cost(system, simulate(system, x0, label), label),
            kkt_residual=np.full(count, np.nan),
            starts_agreed=np.zeros(count, dtype=int),
            starts_total=0,
            solver="clipped LQR (forward Euler)",
        )
        lines = record_lines(system, x0, ref, 2)
        n_eval = max(1, count // 10)
        write_dataset(out, "baseline", {"train": lines[n_eval:], "eval": lines[:n_eval]}, {}, overwrite=True)
    return {"samples": count, "seconds": clock.seconds, "samples_per_s": count / clock.seconds}


def _spread(ratio: np.ndarray) -> dict:
    return {
        "median": float(np.median(ratio)),
        "p90": float(np.quantile(ratio, 0.9)),
        "max": float(np.max(ratio)),
        "share_above_1.01": float(np.mean(ratio > 1.01)),
    }


def baseline_quality(system_name: str, count: int, wide: bool) -> dict:
    """J / J* over `count` initial states of one box: the old controls at full precision and as printed
    with 2 decimals (plain rounding), and our printed labels (J_label / J*)."""
    from lib.control.dataset import sample_initial_states
    from lib.control.labels import round_plain
    from lib.control.references import clipped_lqr_controls, solve_reference
    from lib.control.systems import get_system, simulate, trajectory_cost

    system = get_system(system_name)
    x0 = sample_initial_states(system, count, SEED + 1, wide=wide)
    ref = solve_reference(system, x0, seed=SEED)
    u = clipped_lqr_controls(system, x0)
    printed = round_plain(system, u, 2)
    return {
        "box": [list(b) for b in (system.x0_box_wide if wide else system.x0_box)],
        "samples": count,
        "old": _spread(trajectory_cost(system, simulate(system, x0, u), u) / ref.J),
        "old_printed": _spread(trajectory_cost(system, simulate(system, x0, printed), printed) / ref.J),
        "ours_printed": _spread(ref.J_label / ref.J),
    }


def markdown(result: dict) -> str:
    rows = [
        "| system | samples | seconds | samples/s | worst KKT residual | starts agreed (min) | worst label gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["generation"].items():
        rows.append(
            f"| {name} | {r['samples']} | {r['seconds']:.2f} | {r['samples_per_s']:,.1f} | "
            f"{r['worst_kkt_residual']:.1e} | {r['min_starts_agreed']}/{r['starts_total']} | "
            f"{r['worst_label_gap']:.1e} |"
        )
    b = result["baseline"]
    rows.append(
        f"| double_integrator, old labels (clipped LQR) | {b['samples']} | {b['seconds']:.2f} | "
        f"{b['samples_per_s']:,.1f} | - | - | - |"
    )
    setup = ", ".join(f"{name} {s:.2f} s" for name, s in result["setup_seconds"].items())
    quality = [
        "| system | box | samples | old: median | p90 | max | > 1.01 | old printed: p90 | max | ours printed: p90 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, boxes in result["baseline_quality"].items():
        for box, q in boxes.items():
            old, printed, ours = q["old"], q["old_printed"], q["ours_printed"]
            quality.append(
                f"| {name} | {box} {q['box'][0]}^{len(q['box'])} | {q['samples']} | {old['median']:.4f} | "
                f"{old['p90']:.4f} | {old['max']:.4f} | {old['share_above_1.01']:.1%} | {printed['p90']:.4f} | "
                f"{printed['max']:.4f} | {ours['p90']:.6f} | {ours['max']:.6f} |"
            )
    env = result["environment"]
    return "\n".join(
        [
            "# Data generation benchmark",
            "",
            f"{environment_line(env)}, one worker. End to end = sample x0, solve, round, format, write jsonl.",
            "",
            *rows,
            "",
            f"One-time set-up per process, not in the rates above: {setup}.",
            "",
            "## Old labels (clipped infinite-horizon LQR, forward-Euler gain) against the exact optimum: J / J*",
            "",
            "old: the clipped-LQR controls at full precision (J_baseline / J*); old printed: the same rounded to "
            "2 decimals as the old prompts showed them; ours printed: our labels as printed (J_label / J*).",
            "",
            *quality,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    from lib.control.references import condensed_qp, solve_reference
    from lib.control.systems import SYSTEMS

    args = parse_args(argv)
    result: dict = {
        "environment": bench_environment(("numpy", "scipy", "daqp", "casadi"), workers=1),
        "setup_seconds": {},
        "generation": {},
        "baseline_quality": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, system in SYSTEMS.items():
            with Stopwatch() as clock:  # one-time set-up: the condensed QP or the CasADi NLP, once
                if system.is_linear:
                    condensed_qp(system)
                else:
                    solve_reference(system, system.x_target[None] + 0.1)
            result["setup_seconds"][name] = clock.seconds
            count = args.samples if system.is_linear else args.nonlinear_samples
            print(f"generating {count} {name} samples ...", file=sys.stderr)
            result["generation"][name] = timed_dataset(name, count, Path(tmp))
        print(f"labelling {args.samples} double_integrator samples the old way ...", file=sys.stderr)
        result["baseline"] = timed_baseline(args.samples, Path(tmp))
    for name, system in SYSTEMS.items():
        count = args.quality_samples if system.is_linear else args.nonlinear_samples
        print(f"measuring the old labels of {name} ...", file=sys.stderr)
        result["baseline_quality"][name] = {
            box: baseline_quality(name, count, wide=box == "wide") for box in ("default", "wide")
        }
    table = markdown(result)
    json_path, md_path = write_bench_report("bench", result, table, args.output_dir)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
