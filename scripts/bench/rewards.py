"""Benchmark the GRPO rewards: today's shared path against the per-reward path it replaced, in one run.

Usage:
    make bench                                           # runs it after scripts/bench/data.py
    python scripts/bench/rewards.py                      # 2,000 completions, best of 5 passes (~30 s)
    python scripts/bench/rewards.py --completions 400 --repeats 2   # a quick run

On one core (single-threaded, OMP/BLAS threads 1; --cpu N also pins it), it scores the same
completions with the four rewards (format, feasibility, optimality, terminal), called one after the other
with the same batch as TRL's GRPOTrainer calls them, through two paths:
  baseline  a verbatim copy of the rewards before the shared path (below, BASELINE): every reward parses
            and simulates each answer again, and simulates u = 0 again;
  shared    lib/llm/rewards.py: parse and simulate once per batch (score_batch), J_zero from the column.
in TRL-sized batches of 16, one completion at a time, and in one call of all of them; and optimality alone.
The batch cache is cleared before every pass, so each batch's first reward call does the full work; the two
paths' passes alternate (best of --repeats each). Rates are per CPU second of this single-threaded process
(time.process_time: what other programs on a shared machine do not inflate), wall-clock rates beside them.
The completions are a realistic mix for double_integrator and double_integrator_short (shuffled together):
exact labels, perturbed labels, out-of-bounds answers, unparsable answers, truncated answers.
Writes results/bench/rewards.json and results/bench/rewards.md (atomically) and prints the table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy is imported
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402

from lib.common.bench import (  # noqa: E402
    Stopwatch,
    bench_environment,
    bench_parser,
    check_at_least,
    environment_line,
    write_bench_report,
)
from lib.common.errors import UsageError, run_cli  # noqa: E402
from lib.control.answer import TAGS, format_answers, format_controls, parse_controls  # noqa: E402
from lib.control.metrics import ControlMetrics, evaluate_completions, j_floor, zero_control_cost  # noqa: E402
from lib.control.systems import get_system  # noqa: E402
from lib.llm import rewards as shared  # noqa: E402

SEED = 12345
SYSTEMS = ("double_integrator", "double_integrator_short")
MIX = {"exact": 0.3, "perturbed": 0.3, "infeasible": 0.15, "unparsable": 0.1, "truncated": 0.15}
SINGLE = 200  # completions timed one at a time
BATCH = 16  # a TRL step's completions (per_device_train_batch_size x gradient steps / num_generations)

# ----------------------------------------------------------------------------------------------------------
# BASELINE: the per-reward path as it was before the shared one (lib/llm/rewards.py at the time), copied
# verbatim so that both are measured in the same run. Each scoring reward calls score_completions again.


def _baseline_score_completions(completions, system, x0, J_opt, J_floor) -> list[tuple[ControlMetrics, int]]:
    texts = [shared.completion_text(c) for c in completions]
    out: list[tuple[ControlMetrics, int] | None] = [None] * len(texts)
    for name in dict.fromkeys(system):
        rows = [i for i, s in enumerate(system) if s == name]
        metrics = evaluate_completions(
            get_system(name),
            np.array([x0[i] for i in rows], dtype=float),
            [texts[i] for i in rows],
            np.array([J_opt[i] for i in rows], dtype=float),
            float(J_floor[rows[0]]),
        )
        for j, i in enumerate(rows):
            out[i] = (metrics, j)
    return out  # type: ignore[return-value]


def _baseline_decay(value: float, scale: float) -> float:
    value = float(value)
    return math.exp(-value / scale) if math.isfinite(value) else 0.0


def baseline_format_reward(prompts, completions, system, **columns) -> list[float]:
    rewards = []
    for completion, name in zip(completions, system, strict=True):
        text = shared.completion_text(completion)
        if parse_controls(text, get_system(name).steps).ok:
            rewards.append(1.0)
            continue
        positions = [text.find(tag) for tag in TAGS]
        in_order = all(p >= 0 for p in positions) and positions == sorted(positions)
        rewards.append(0.25 if in_order else 0.0)
    return rewards


def baseline_feasibility_reward(prompts, completions, system, x0, J_opt, J_floor, **columns) -> list[float]:
    scores = _baseline_score_completions(completions, system, x0, J_opt, J_floor)
    return [
        _baseline_decay(m.violation[j], shared.VIOLATION_SCALE) if m.parsed[j] else 0.0 for m, j in scores
    ]


def baseline_optimality_reward(
    prompts, completions, system, x0, J_opt, J_floor, optimality_sigma: float = 0.1, **columns
) -> list[float]:
    scores = _baseline_score_completions(completions, system, x0, J_opt, J_floor)
    return [
        _baseline_decay(max(m.gap[j], 0.0), optimality_sigma) if m.feasible[j] else 0.0 for m, j in scores
    ]


def baseline_terminal_reward(
    prompts, completions, system, x0, J_opt, J_floor, terminal_scale: float = 0.1, **columns
) -> list[float]:
    scores = _baseline_score_completions(completions, system, x0, J_opt, J_floor)
    return [_baseline_decay(m.terminal_error[j], terminal_scale) if m.parsed[j] else 0.0 for m, j in scores]


BASELINE = [
    baseline_format_reward,
    baseline_feasibility_reward,
    baseline_optimality_reward,
    baseline_terminal_reward,
]
# ----------------------------------------------------------------------------------------------------------

SHARED = [shared.format_reward, shared.feasibility_reward, shared.optimality_reward, shared.terminal_reward]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--completions", type=int, default=2000, help="completions in the mix (both systems)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (Linux)")
    args = parser.parse_args(argv)
    check_at_least(args, completions=BATCH, repeats=1)
    return args


def pin(cpu: int | None) -> str:
    """Pin this process to `cpu` when asked (and the OS allows it); what was done, in words. Unpinned, the
    process still runs on one core at a time: it is single-threaded, numpy's threads are set to 1."""
    if cpu is None:
        return "single-threaded, not pinned"
    if not hasattr(os, "sched_setaffinity"):
        raise UsageError("--cpu needs os.sched_setaffinity (Linux).", fix="leave --cpu out.")
    os.sched_setaffinity(0, {cpu})
    return f"single-threaded, pinned to CPU {cpu}"


def completion_mix(count: int, seed: int = SEED) -> tuple[list, dict]:
    """`count` conversational completions with their columns (system, x0, J_opt, J_floor, J_zero), half per
    system, in the proportions of MIX, shuffled together; and the count of each kind."""
    from lib.control.dataset import sample_initial_states
    from lib.control.references import solve_reference

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, dict]] = []
    for s, name in enumerate(SYSTEMS):
        system = get_system(name)
        n = count // len(SYSTEMS) + (1 if s < count % len(SYSTEMS) else 0)
        x0 = sample_initial_states(system, n, seed + s)
        ref = solve_reference(system, x0)
        columns = {
            "system": [name] * n,
            "x0": x0.tolist(),
            "J_opt": ref.J.tolist(),
            "J_floor": [j_floor(ref.J)] * n,
            "J_zero": zero_control_cost(system, x0).tolist(),
        }
        kinds = rng.choice(list(MIX), size=n, p=list(MIX.values()))
        u = ref.u_label.copy()
        perturbed = kinds == "perturbed"
        u[perturbed] = np.clip(
            u[perturbed] + rng.normal(0, 0.3, u[perturbed].shape), system.u_min, system.u_max
        )
        infeasible = kinds == "infeasible"
        u[infeasible] = u[infeasible] * 1.5 + np.sign(u[infeasible]) * system.u_max * 0.5
        u = np.round(u, 2)
        texts = format_answers(system, x0, u, ref.J, 2)
        for i, kind in enumerate(kinds):
            text = texts[i]
            if kind == "truncated":  # cut by max_completion_length somewhere in the answer
                text = text[: int(rng.integers(1, len(text)))]
            elif kind == "unparsable":
                broken = rng.integers(3)
                values = format_controls(u[i]).split(", ")
                if broken == 0:  # one number too few
                    text = f"<REASONING>r</REASONING><CONTROLS>{', '.join(values[:-1])}</CONTROLS>"
                elif broken == 1:  # a word among the numbers
                    values[int(rng.integers(len(values)))] = "zero"
                    text = f"<REASONING>r</REASONING><CONTROLS>{', '.join(values)}</CONTROLS>"
                else:  # prose, no tags
                    text = "The optimal controls are " + ", ".join(values)
            rows.append((str(kind), {k: v[i] for k, v in columns.items()} | {"text": text}))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    kinds_count = {kind: sum(1 for k, _ in rows if k == kind) for kind in MIX}
    return [r for _, r in rows], kinds_count


def batches(records: list[dict], size: int) -> list[tuple[list, dict]]:
    """(completions in TRL's chat format, columns) per batch of `size` records, as TRL passes them."""
    out = []
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        completions = [[{"role": "assistant", "content": r["text"]}] for r in chunk]
        columns = {k: [r[k] for r in chunk] for k in ("system", "x0", "J_opt", "J_floor", "J_zero")}
        out.append((completions, columns))
    return out


def _seconds(functions: list[Callable], data: list[tuple[list, dict]]) -> tuple[float, float]:
    """One pass, every batch through every function in turn (cache cleared first): (CPU s, wall s)."""
    shared.clear_batch_cache()
    with Stopwatch() as clock:
        for completions, columns in data:
            prompts = [[]] * len(completions)
            for function in functions:
                function(prompts=prompts, completions=completions, completion_ids=None, **columns)
    return clock.cpu_seconds, clock.seconds


def measure(old: list[Callable], new: list[Callable], data: list[tuple[list, dict]], repeats: int) -> dict:
    """Completions per CPU second (and per wall second) of both paths, best of `repeats` passes each, the
    passes alternating. CPU time is the process's own (single-threaded: time on one core), which other
    programs on a shared machine do not inflate; wall time is reported beside it."""
    count = sum(len(c) for c, _ in data)
    best = {path: [math.inf, math.inf] for path in ("baseline", "shared")}
    for _ in range(repeats):
        for path, functions in (("baseline", old), ("shared", new)):
            best[path] = [min(b, t) for b, t in zip(best[path], _seconds(functions, data), strict=True)]
    out = {path: count / cpu for path, (cpu, _) in best.items()}
    out |= {f"{path}_wall": count / wall for path, (_, wall) in best.items()}
    return out


def check_agreement(data: list[tuple[list, dict]]) -> int:
    """The two paths give the same rewards on every batch (exactly); the count of rewards compared."""
    compared = 0
    shared.clear_batch_cache()
    for completions, columns in data:
        for old, new in zip(BASELINE, SHARED, strict=True):
            a = old([[]] * len(completions), completions, **columns)
            b = new([[]] * len(completions), completions, **columns)
            if a != b:
                raise AssertionError(f"{new.__name__}: the shared path differs from the baseline")
            compared += len(a)
    return compared


def markdown(result: dict) -> str:
    env = result["environment"]
    rows = [
        "| measurement | baseline (completions/s) | shared (completions/s) | shared / baseline "
        "| wall clock: baseline | shared |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in result["rates"].items():
        rows.append(
            f"| {label} | {r['baseline']:,.0f} | {r['shared']:,.0f} | {r['ratio']:.1f}x "
            f"| {r['baseline_wall']:,.0f} | {r['shared_wall']:,.0f} |"
        )
    kinds = ", ".join(f"{k} {v}" for k, v in result["mix"].items())
    return "\n".join(
        [
            "# GRPO reward throughput: shared path vs per-reward path",
            "",
            f"{environment_line(env)}, one core ({result['pinning']}, {env['threads']}), best of {result['repeats']} alternating passes. "
            "Rates are completions per CPU second of the process (time on one core, not inflated by other "
            "programs on the machine); wall-clock rates beside them.",
            "",
            f"{result['completions']} completions, double_integrator and double_integrator_short shuffled together: "
            f"{kinds}. All four rewards are called one after the other with the same batch, as TRL does; the "
            "batch cache is cleared before each pass.",
            "baseline: the per-reward path before the change (a verbatim copy in scripts/bench/rewards.py); "
            "shared: lib/llm/rewards.py (parse and simulate once per batch, J_zero from the column). "
            f"Both give identical rewards ({result['rewards_compared']:,} compared).",
            "",
            *rows,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pinning = pin(args.cpu)
    print(f"building {args.completions} completions ...", file=sys.stderr)
    records, mix = completion_mix(args.completions)
    by_batch, whole = batches(records, BATCH), batches(records, len(records))
    single = batches(records[:SINGLE], 1)  # a subset: the baseline scores ~170 a second this way
    compared = check_agreement(by_batch) + check_agreement(whole)
    measurements = {
        f"all four rewards, batches of {BATCH}": (by_batch, None),
        f"all four rewards, one call of {len(records):,}": (whole, None),
        f"all four rewards, one completion at a time ({len(single)})": (single, None),
        f"optimality alone, batches of {BATCH}": (by_batch, 2),
        f"optimality alone, one call of {len(records):,}": (whole, 2),
    }
    rates = {}
    for label, (data, only) in measurements.items():
        print(f"timing {label} ...", file=sys.stderr)
        old = BASELINE if only is None else [BASELINE[only]]
        new = SHARED if only is None else [SHARED[only]]
        r = measure(old, new, data, args.repeats)
        rates[label] = r | {"ratio": r["shared"] / r["baseline"]}
    result = {
        "environment": bench_environment(("numpy",), threads="OMP/OPENBLAS/MKL_NUM_THREADS=1"),
        "pinning": pinning,
        "completions": len(records),
        "repeats": args.repeats,
        "mix": mix,
        "rewards_compared": compared,
        "rates": rates,
    }
    table = markdown(result)
    json_path, md_path = write_bench_report("rewards", result, table, args.output_dir)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
