"""Benchmark the dataset generator and measure the old labels against the exact ones.

Usage:
    make bench
    python scripts/bench/data.py                          # default counts (about three minutes on 2 cores)
    python scripts/bench/data.py --samples 200 --nonlinear-samples 8 --quality-samples 200   # a quick run
    python scripts/bench/data.py --family-samples 2000 --family-old-samples 200   # nonlinear labels at scale

It measures, in one run and on one core (--workers 1):
  1. samples per second end to end (sample x0, solve, round, format, write jsonl) for each system, after a
     warm-up that builds the per-system QP / NLP once (that one-time set-up is reported separately);
  2. the same count of double-integrator samples labelled the OLD way (clipped infinite-horizon LQR on a
     forward-Euler model, lib/control/references.py), through the same formatting and writing, as the baseline rate;
  3. the quality of those old labels: J_baseline / J* on the default and on the wide initial-state box,
     for every system (median, 90th percentile, max, and the share above 1.01, i.e. worse than 1%), also
     once rounded to 2 decimals as printed, next to our printed labels (J_label / J*).
  4. nonlinear labels at scale: van_der_pol_family labels per second by solve_family (one NLP per (family, N),
     warm starts, cold starts until agreement; lib/control/references.py) with one worker and with
     --family-workers, against today's per-System path (solve_reference on each member, which builds its own
     NLP and runs all 5 cold starts; one process, as it cannot use more) on the first --family-old-samples of
     the same records, and the ratios; those old answers are the checked sample (J of the new path against
     the best of 5 cold starts). The fixed van_der_pol's labels per second (5 cold starts, NLP built once)
     are there for reference.
The baseline's records go through the same formatting as ours only to time it; their text is not a label.
Writes results/bench/bench.json and results/bench/bench.md and prints the table.
"""

from __future__ import annotations

import argparse
import resource
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
from lib.common.errors import UsageError, run_cli

SEED = 12345


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--samples", type=int, default=5000, help="samples per linear system (and baseline)")
    parser.add_argument("--nonlinear-samples", type=int, default=48, help="samples per nonlinear system")
    parser.add_argument(
        "--quality-samples", type=int, default=5000, help="x0 per box for J_baseline/J* (linear)"
    )
    parser.add_argument(
        "--family-samples",
        type=int,
        default=2000,  # ~40 s with one worker, ~25 s with two: enough to amortise the workers' ~3 s spawn
        help="van_der_pol_family records for the new label path",
    )
    parser.add_argument(
        "--family-old-samples",
        type=int,
        default=100,  # ~14 s
        help="of those, how many today's per-System path labels too (the rate's baseline and the checked sample)",
    )
    parser.add_argument(
        "--family-workers", type=int, default=2, help="worker processes for the second new run"
    )
    args = parser.parse_args(argv)
    check_at_least(
        args, samples=2, nonlinear_samples=2, quality_samples=2, family_samples=2, family_old_samples=1,
        family_workers=1,
    )  # fmt: skip
    if args.family_old_samples > args.family_samples:
        raise UsageError(
            f"--family-old-samples {args.family_old_samples} is more than --family-samples {args.family_samples}.",
            fix="the old path labels a subset of the same records: pass at most --family-samples.",
        )
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


def family_label_rates(count: int, old_count: int, workers: int) -> dict:
    """Labels per second of `count` van_der_pol_family records (drawn as a dataset draws them) by solve_family,
    with one worker (its NLPs built first, timed apart) and with `workers`, against today's per-System path on
    the first `old_count` of them; that path's answers (best of 5 cold starts) check the new ones."""
    from lib.control.dataset import family_initial_states
    from lib.control.families import FAMILIES, draw_parameters, family_system
    from lib.control.references import AGREE_RTOL, member_nlp, solve_family, solve_reference
    from lib.control.systems import get_system

    family = FAMILIES["van_der_pol_family"]
    rng = np.random.default_rng(SEED)
    params = draw_parameters(family, count, rng)
    systems = [family_system(family.name, p) for p in params]
    x0 = np.stack([family_initial_states(system, rng, 2, False) for system in systems])
    with Stopwatch() as setup:  # one NLP per horizon N, built once per process
        for system in {system.steps: system for system in systems}.values():
            member_nlp(system)
    with Stopwatch() as one:
        refs = solve_family(systems, x0, seed=SEED, workers=1)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Stopwatch() as several:  # spawning the workers and their own NLP builds included
        again = solve_family(systems, x0, seed=SEED, workers=workers)
    # the workers' CPU seconds (counted once the pool has joined them)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    same = all(
        np.array_equal(a.u_label, b.u_label) and a.J[0] == b.J[0] for a, b in zip(refs, again, strict=True)
    )
    with Stopwatch() as old:  # what dataset.py did for a family: every member its own NLP and 5 cold starts
        J_old = [solve_reference(systems[i], x0[i : i + 1], seed=SEED + i).J[0] for i in range(old_count)]
    fixed = get_system("van_der_pol")
    solve_reference(fixed, fixed.x_target[None] + 0.1)  # its NLP, built once
    fixed_x0 = np.stack([family_initial_states(fixed, rng, 2, False) for _ in range(old_count)])
    with Stopwatch() as fixed_clock:
        solve_reference(fixed, fixed_x0, seed=SEED)
    J_new = np.array([ref.J[0] for ref in refs[:old_count]])
    J_old = np.array(J_old)
    difference = (J_new - J_old) / np.maximum(1.0, J_old)
    totals = np.array([ref.starts_total for ref in refs])
    old_rate, old_cpu_rate = old_count / old.seconds, old_count / old.cpu_seconds
    return {
        "records": count,
        "old_records": old_count,
        "workers": workers,
        "setup_seconds": setup.seconds,
        "new_seconds": one.seconds,
        "new_per_s": count / one.seconds,
        "new_per_s_with_setup": count / (setup.seconds + one.seconds),
        "new_cpu_seconds": one.cpu_seconds,
        "new_workers_seconds": several.seconds,
        "new_workers_cpu_seconds": workers_cpu,
        "new_workers_per_s": count / several.seconds,
        "same_answers_with_workers": same,
        "old_seconds": old.seconds,
        "old_cpu_seconds": old.cpu_seconds,
        "old_per_s": old_rate,
        "ratio": count / one.seconds / old_rate,
        # CPU seconds a label: unlike the wall clock, not inflated by other programs on a shared machine
        "ratio_cpu": count / one.cpu_seconds / old_cpu_rate,
        "ratio_with_setup": count / (setup.seconds + one.seconds) / old_rate,
        "ratio_workers": count / several.seconds / old_rate,
        "mean_starts": float(totals.mean()),
        "all_cold_share": float(np.mean(totals >= 5)),
        "min_starts_agreed": int(min(ref.starts_agreed[0] for ref in refs)),
        "worst_kkt_residual": float(max(ref.kkt_residual[0] for ref in refs)),
        "check_max_rel_difference": float(difference.max()),
        "check_min_rel_difference": float(difference.min()),
        "check_above_tolerance": int(np.sum(difference > AGREE_RTOL)),
        "fixed_van_der_pol_per_s": old_count / fixed_clock.seconds,
    }


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
            *family_markdown(result["family_labels"]),
        ]
    )


def family_markdown(f: dict) -> list[str]:
    return [
        "## Nonlinear labels at scale: van_der_pol_family",
        "",
        f"{f['records']} records, each its own problem. New: solve_family (one NLP per (family, N), warm start from "
        "the nearest solved member, cold starts until three starts agree, all 5 where bang-bang). Old: solve_reference "
        "on each member (its "
        f"own NLP, 5 cold starts; one process whatever the workers), on the first {f['old_records']} records.",
        "",
        "| path | workers | labels/s | x old | CPU ms a label |",
        "|---|---:|---:|---:|---:|",
        f"| old: solve_reference per member | 1 | {f['old_per_s']:.2f} | 1 | "
        f"{1000 * f['old_cpu_seconds'] / f['old_records']:.0f} |",
        f"| new: solve_family | 1 | {f['new_per_s']:.1f} | {f['ratio']:.1f} (CPU: {f['ratio_cpu']:.1f}) | "
        f"{1000 * f['new_cpu_seconds'] / f['records']:.1f} |",
        f"| new, NLP builds included ({f['setup_seconds']:.1f} s) | 1 | {f['new_per_s_with_setup']:.1f} | "
        f"{f['ratio_with_setup']:.1f} | - |",
        f"| new, spawn and builds included | {f['workers']} | {f['new_workers_per_s']:.1f} | "
        f"{f['ratio_workers']:.1f} | {1000 * f['new_workers_cpu_seconds'] / f['records']:.1f} |",
        f"| fixed van_der_pol (reference: NLP built once, 5 cold starts) | 1 | {f['fixed_van_der_pol_per_s']:.1f} | - | - |",
        "",
        "x old: labels/s over the old path's (CPU: over CPU seconds, which other programs on a shared machine do "
        "not inflate). With workers, each process spawns and builds its own NLPs (~3 s), which a small run "
        "does not amortise.",
        "",
        f"Starts per record: {f['mean_starts']:.2f} on average, all 5 cold on {f['all_cold_share']:.1%} (a chain's "
        f"first member, no agreement, or bang-bang); at least {f['min_starts_agreed']} starts agree on every record; worst KKT "
        f"residual {f['worst_kkt_residual']:.1e}. Checked sample ({f['old_records']} records): (J_new - J_old) / "
        f"max(1, J_old) from {f['check_min_rel_difference']:.1e} to {f['check_max_rel_difference']:.1e}, "
        f"{f['check_above_tolerance']} above AGREE_RTOL. Same answers with {f['workers']} workers: "
        f"{'yes' if f['same_answers_with_workers'] else 'NO'}.",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from lib.control.references import condensed_qp, solve_reference
    from lib.control.systems import SYSTEMS

    args = parse_args(argv)
    result: dict = {
        "environment": bench_environment(("numpy", "scipy", "daqp", "casadi"), workers=1),
        "setup_seconds": {},
        "generation": {},
        "baseline_quality": {},
        "family_labels": {},
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
    print(
        f"labelling {args.family_samples} van_der_pol_family records, new and old paths ...", file=sys.stderr
    )
    result["family_labels"] = family_label_rates(
        args.family_samples, args.family_old_samples, args.family_workers
    )
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
