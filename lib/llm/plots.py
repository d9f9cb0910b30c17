"""Figures of an evaluation (matplotlib, Agg): trajectories, phase portraits, summaries, training curves.

Every figure is drawn from computed numbers (lib.llm.evaluation, a run's log_history.json), never typed in. The
simulated trajectories come from lib.control.systems.simulate, the same simulator that scored them. Each figure has a
title, axis labels with units, and the control bounds drawn where controls are shown. Files are written to
a temporary name and renamed, so a figure on disk is always complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on clusters and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lib.common.atomic import save_figure  # noqa: E402
from lib.control.systems import System, simulate  # noqa: E402

OPTIMAL_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.5, "label": "optimal"}
BOUND_STYLE = {"color": "tab:red", "linestyle": ":", "linewidth": 1.2}
# ten distinct colours: models, the three references and the four baselines share one figure
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
          "tab:gray", "tab:red")  # fmt: skip


def _rollouts(
    system: System, x0: np.ndarray, answers: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray | None]:
    """label -> simulated states [N+1, n] of each answer; None for an unparsed answer (no finite controls)."""
    out: dict[str, np.ndarray | None] = {}
    for label, u in answers.items():
        u = np.asarray(u, dtype=float)
        valid = u.size > 0 and bool(np.isfinite(u).all())
        out[label] = simulate(system, np.asarray(x0)[None], u[None])[0] if valid else None
    return out


def plot_trajectory(
    system: System,
    x0: np.ndarray,
    answers: Mapping[str, np.ndarray],
    u_opt: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """States vs time and controls vs the optimal controls for one instance, one line per model answer.

    answers: label -> controls [N] (an unparsed answer, all NaN, is listed in the legend as 'no answer').
    """
    t = np.arange(system.steps + 1) * system.dt
    fig, axes = plt.subplots(system.n + 1, 1, figsize=(8, 2.0 * (system.n + 1)), sharex=True)
    optimal = simulate(system, np.asarray(x0)[None], np.asarray(u_opt)[None])[0]
    for j in range(system.n):
        ax = axes[j]
        ax.plot(t, optimal[:, j], **OPTIMAL_STYLE)
        ax.axhline(system.x_target[j], color="grey", linewidth=0.8, alpha=0.6)
        ax.set_ylabel(f"{system.state_names[j]} [{system.state_units[j]}]")
    ax_u = axes[-1]
    ax_u.step(t[:-1], u_opt, where="post", **OPTIMAL_STYLE)
    for color, (label, states) in zip(COLORS, _rollouts(system, x0, answers).items(), strict=False):
        if states is None:
            ax_u.plot([], [], color=color, label=f"{label}: no answer")
            continue
        for j in range(system.n):
            axes[j].plot(t, states[:, j], color=color, label=label)
        ax_u.step(t[:-1], np.asarray(answers[label], dtype=float), where="post", color=color, label=label)
    ax_u.axhline(system.u_max, **BOUND_STYLE, label="bounds")
    ax_u.axhline(system.u_min, **BOUND_STYLE)
    ax_u.set_ylabel(f"{system.control_name} [{system.control_unit}]")
    ax_u.set_xlabel("time [s]")
    axes[0].legend(loc="best", fontsize=8)
    ax_u.legend(loc="best", fontsize=8)
    axes[0].set_title(title)
    return save_figure(fig, path)


def _phase_pairs(system: System) -> list[tuple[int, int]]:
    """Which state pairs make a phase portrait: (position, velocity) of each body."""
    return [(0, 1)] if system.n == 2 else [(0, 2), (1, 3)]


def plot_phase_portrait(
    system: System,
    x0: np.ndarray,
    answers: Mapping[str, np.ndarray],
    u_opt: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """Phase-plane paths of the answers and the optimum, with the start, the target and the initial-state box
    the dataset samples from (dashed)."""
    pairs = _phase_pairs(system)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    optimal = simulate(system, np.asarray(x0)[None], np.asarray(u_opt)[None])[0]
    paths = {label: states for label, states in _rollouts(system, x0, answers).items() if states is not None}
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        (la, ha), (lb, hb) = system.x0_box[a], system.x0_box[b]
        ax.add_patch(
            plt.Rectangle((la, lb), ha - la, hb - lb, fill=False, **{**BOUND_STYLE, "linestyle": "--"})
        )
        ax.plot([], [], **{**BOUND_STYLE, "linestyle": "--"}, label="initial-state box")
        ax.plot(optimal[:, a], optimal[:, b], **OPTIMAL_STYLE)
        for color, (label, states) in zip(COLORS, paths.items(), strict=False):
            ax.plot(states[:, a], states[:, b], color=color, label=label)
        ax.plot(*np.asarray(x0)[[a, b]], "o", color="black", label="start")
        ax.plot(
            *system.x_target[[a, b]],
            "*",
            color="gold",
            markersize=14,
            markeredgecolor="black",
            label="target",
        )
        ax.set_xlabel(f"{system.state_names[a]} [{system.state_units[a]}]")
        ax.set_ylabel(f"{system.state_names[b]} [{system.state_units[b]}]")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def _rate(summary: Mapping, key: str) -> tuple[float, float, float]:
    entry = summary[key]
    low, high = entry["ci"]
    return entry["rate"], entry["rate"] - low, high - entry["rate"]


def _grouped_bars(
    ax, labels: Sequence[str], keys: Sequence[str], summaries: Mapping[str, Mapping], ylabel: str
):
    """Bars of rates (with 95% intervals) for each key, one colour per model/reference."""
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(keys))
    for i, (color, (name, summary)) in enumerate(zip(COLORS * 4, summaries.items(), strict=False)):
        values = [_rate(summary, key) for key in keys]
        heights = [100 * v[0] for v in values]
        errors = np.array([[100 * v[1] for v in values], [100 * v[2] for v in values]])
        ax.bar(
            x + (i - (len(summaries) - 1) / 2) * width,
            heights,
            width,
            yerr=errors,
            capsize=3,
            color=color,
            label=name,
        )
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)


def plot_performance_summary(
    summaries: Mapping[str, Mapping],
    gaps: Mapping[str, np.ndarray],
    success_keys: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Three panels: the distribution of the optimality gap (feasible answers), success@eps, and the parse and
    feasibility rates; one colour per model and per reference controller."""
    fig, (ax_gap, ax_success, ax_rates) = plt.subplots(1, 3, figsize=(16, 4.5))
    finite = {name: np.asarray(g, dtype=float)[np.isfinite(g)] for name, g in gaps.items()}
    floor = 1e-6  # gaps are >= 0 up to rounding; plot log10(max(g, 1e-6)) so the optimum shows at -6
    for color, (name, g) in zip(COLORS * 4, finite.items(), strict=False):
        if g.size:
            ax_gap.hist(
                np.log10(np.maximum(g, floor)),
                bins=30,
                range=(-6, 2),
                alpha=0.55,
                color=color,
                label=f"{name} (n={g.size})",
            )
    for eps, style in zip((0.01, 0.05, 0.10), (":", "--", "-."), strict=True):
        ax_gap.axvline(np.log10(eps), color="grey", linestyle=style, linewidth=1, label=f"gap {eps:.0%}")
    ax_gap.set_xlabel("log10 optimality gap (J - J*) / J*")
    ax_gap.set_ylabel("answers")
    ax_gap.set_title("optimality gap, feasible answers")
    ax_gap.legend(loc="best", fontsize=7)
    _grouped_bars(
        ax_success,
        [k.replace("success@", "gap <= ") for k in success_keys],
        success_keys,
        summaries,
        "success [%]",
    )
    ax_success.set_title("success@eps (parsed, feasible, gap <= eps), 95% CI")
    _grouped_bars(ax_rates, ["parsed", "feasible"], ["parsed", "feasible"], summaries, "answers [%]")
    ax_rates.set_title("parse and feasibility rates, 95% CI")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_comparison(
    summaries: Mapping[str, Mapping], success_keys: Sequence[str], title: str, path: Path
) -> Path:
    """Models side by side (base vs SFT vs GRPO): success@eps, parse rate, and mean score S with 95% CIs."""
    fig, (ax_rates, ax_score) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    keys = ["parsed", "feasible", *success_keys]
    _grouped_bars(ax_rates, [k.replace("success@", "gap <= ") for k in keys], keys, summaries, "answers [%]")
    ax_rates.set_title("rates over all answers, 95% CI")
    names = list(summaries)
    for i, (color, name) in enumerate(zip(COLORS * 4, names, strict=False)):
        entry = summaries[name]["score_parsed"]
        if entry["mean"] is None:
            continue
        low, high = entry["mean_ci"]
        ax_score.bar(
            i, entry["mean"], color=color, yerr=[[entry["mean"] - low], [high - entry["mean"]]], capsize=3
        )
    ax_score.set_xticks(range(len(names)), names, rotation=20)
    ax_score.axhline(1.0, **{**OPTIMAL_STYLE, "label": "optimal (S = 1)"})
    ax_score.axhline(0.0, color="grey", linewidth=1, label="u = 0 (S = 0)")
    ax_score.set_ylabel("mean normalised score S")
    ax_score.set_title("score S of parsed answers, 95% CI")
    ax_score.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


CONTROL_PANELS = {  # control-metrics callback keys -> (panel, y label)
    "control/median_gap": ("gap", "median gap (J - J*) / J* of feasible answers"),
    "control/mean_S": ("score", "score S of parsed answers (1 = J*, 0 = u = 0)"),
    "control/median_S": ("score", "score S of parsed answers (1 = J*, 0 = u = 0)"),
    "control/parsed": ("rates", "rate on the watch problems"),
    "control/feasible": ("rates", "rate on the watch problems"),
    "control/success@10%": ("rates", "rate on the watch problems"),
}


LINE_STYLES = ("--", ":", "-.", (0, (5, 1)))
BAR_COLORS = ("tab:gray", "tab:olive", "tab:cyan", "tab:red")  # one per baseline, apart from the curves' own
BASELINE_PREFIX = "control/baseline/"


def baseline_bars(history: Sequence[Mapping]) -> dict[tuple[str, str], float]:
    """{(baseline, metric): value} from the entry the control-metrics callback logs once: each baseline's
    median gap and success@10% on the same watch problems."""
    bars = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith(BASELINE_PREFIX) and isinstance(value, (int, float)):
                name, metric = key[len(BASELINE_PREFIX) :].split("/", 1)
                bars[(name, metric)] = float(value)
    return bars


def plot_training_curves(
    history: Sequence[Mapping], title: str, path: Path, beta: float = 0.0
) -> Path | None:
    """Loss, each reward function's mean (GRPO), the KL (only when beta > 0) and the control metrics of the
    held-out watch problems (eval.every_steps: gap, S, rates) against the optimiser step, with the baselines'
    median gap and success@10% on the same problems as horizontal lines, from a run's log_history.json. None
    when the history has no logged step."""
    logged = [h for h in history if "step" in h]
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in logged:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and (
                key in ("loss", "eval_loss", "reward", "kl")
                or key in CONTROL_PANELS
                or (key.startswith("rewards/") and key.endswith("/mean"))
            ):
                series.setdefault(key, []).append((entry["step"], float(value)))
    if beta <= 0:
        series.pop("kl", None)
    if not series:
        return None
    control = {}
    for key, (panel, _) in CONTROL_PANELS.items():
        control.setdefault(panel, []).append(key)
    panels = [p for p in (["loss", "eval_loss"], ["reward"] + sorted(k for k in series if k.startswith("rewards/")),
                          ["kl"], *control.values()) if any(k in series for k in p)]  # fmt: skip
    bars = baseline_bars(history)
    watched = [h["step"] for h in logged if "control/parsed" in h]
    labels = {"loss": "loss [nats/token]", "reward": "reward (mean)", "kl": "KL to start model [nats]"}
    labels.update({key: label for key, (_, label) in CONTROL_PANELS.items()})
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for ax, keys in zip(axes.flat, panels, strict=False):
        for key in keys:
            if key in series:
                steps, values = zip(*series[key], strict=True)
                ax.plot(steps, values, marker="o", markersize=3, label=key)
        for (name, metric), value in bars.items():  # the baselines on the same watch problems: the bar
            if (metric, keys[0]) in (("median_gap", "control/median_gap"), ("success@10%", "control/parsed")):
                i = list(dict.fromkeys(n for n, _ in bars)).index(name)
                ax.axhline(value, color=BAR_COLORS[i % len(BAR_COLORS)], linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                           linewidth=1.2, label=f"{name} baseline ({metric})")  # fmt: skip
        if keys[0] in CONTROL_PANELS and watched:  # every measurement's step, even where a value is missing
            pad = max(1, (max(watched) - min(watched)) // 20)
            ax.set_xlim(min(watched) - pad, max(watched) + pad)
        if keys[0] == "control/median_gap":
            ax.set_yscale("log")  # gaps span 1e-3 (near optimal) to 1e2 (far worse than J*)
        if keys[0] == "control/mean_S":
            ax.axhline(0.0, color="grey", linewidth=1)
            ax.set_ylim(bottom=max(ax.get_ylim()[0], -3.0))  # S is unbounded below; below -3 is "far worse"
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(labels[keys[0]])
        ax.legend(loc="best", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, path)
