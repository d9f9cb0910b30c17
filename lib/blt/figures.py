"""The figures of the byte-level model's analysis (lib/blt/analysis.py): the entropy trace of a text sample with
its patch starts, the patch-length histogram, bits per byte over training, and patch length against the
entropy threshold. Each is saved atomically (lib.common.atomic.save_figure) and returns its file name.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on clusters and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lib.blt.patches import RULES, patch_starts_rise, patch_starts_threshold  # noqa: E402
from lib.common.atomic import save_figure  # noqa: E402


def _byte_label(value: int) -> str:
    if value == 10:
        return "\\n"
    if value == 32:
        return "\u00b7"  # a middle dot shows a space
    if 33 <= value < 127:
        return chr(value)
    return f"{value:02x}"  # other bytes (UTF-8 continuation bytes, tabs, ...) in hex


def plot_entropy_trace(sample: dict, threshold: float, path: Path) -> str:
    entropy = np.asarray(sample["entropy"])
    x = np.arange(entropy.size)
    starts = patch_starts_threshold(entropy, threshold)
    rise = patch_starts_rise(entropy, threshold)
    fig, ax = plt.subplots(figsize=(max(10.0, entropy.size * 0.12), 4.2))
    ax.bar(x, entropy, width=0.8, color="tab:blue", label="next-byte entropy")
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g} bits")
    for i, s in enumerate(starts):
        ax.axvline(
            s - 0.5,
            color="black",
            linewidth=0.7,
            alpha=0.6,
            label="patch start (threshold)" if i == 0 else None,
        )
    ax.plot(
        rise, entropy[rise] + 0.15, "v", color="tab:orange", markersize=4, label="patch start (rise rule)"
    )
    ax.set_xticks(x)
    ax.set_xticklabels([_byte_label(b) for b in sample["bytes"]], fontsize=6, fontfamily="monospace")
    ax.set_xlim(-0.5, entropy.size - 0.5)
    ax.set_ylim(0, max(float(entropy.max()) + 0.6, threshold + 0.5))
    ax.set_xlabel(f"byte of {sample['file']} from offset {sample['offset']} (each label is the byte itself)")
    ax.set_ylabel("entropy of the next-byte prediction [bits]")
    ax.set_title(
        f"Next-byte entropy over {entropy.size} bytes: {starts.size} patches at threshold {threshold:g} bits, "
        f"{rise.size} by the rise rule"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, ncol=4, frameon=False)
    return save_figure(fig, path).name


def plot_patch_histogram(lengths: dict[str, np.ndarray], threshold: float, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    longest = max(int(v.max()) for v in lengths.values() if v.size)
    bins = np.arange(1, min(longest, 64) + 2) - 0.5  # one bin per length; everything above 64 in the last one
    for rule, color in zip(RULES, ("tab:blue", "tab:orange"), strict=True):
        values = np.minimum(lengths[rule], 64)
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            color=color,
            label=f"{rule} rule (mean {lengths[rule].mean():.2f})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("patch length [bytes] (lengths above 64 counted at 64)")
    ax.set_ylabel("number of patches")
    ax.set_title(f"Patch lengths on the eval files at threshold {threshold:g} bits")
    ax.legend()
    return save_figure(fig, path).name


def plot_bits_per_byte(history: list[dict], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    train = [(h["step"], h["bits_per_byte"]) for h in history if "bits_per_byte" in h]
    evals = [(h["step"], h["eval_bits_per_byte"]) for h in history if "eval_bits_per_byte" in h]
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", linewidth=1, label="train (mean since last log)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color="tab:red", markersize=3, label="eval")
    ax.axhline(8.0, color="gray", linestyle=":", linewidth=1, label="uniform guess over 256 bytes (8 bits)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("bits per byte")
    ax.set_title("Bits per byte over training")
    ax.legend()
    return save_figure(fig, path).name


def plot_length_vs_threshold(sweep: dict[str, list[dict]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rule, color in zip(RULES, ("tab:blue", "tab:orange"), strict=True):
        rows = sweep[rule]
        thresholds = [r["threshold"] for r in rows]
        ax.plot(thresholds, [r["mean_length"] for r in rows], "o-", color=color, label=f"{rule} rule: mean")
        ax.plot(
            thresholds,
            [r["length_quantiles"]["p90"] for r in rows],
            "--",
            color=color,
            alpha=0.7,
            label=f"{rule} rule: 90th percentile",
        )
    ax.set_yscale("log")
    ax.set_xlabel("entropy threshold [bits]")
    ax.set_ylabel("patch length [bytes]")
    ax.set_title("Patch length vs entropy threshold (eval files)")
    ax.legend()
    return save_figure(fig, path).name
