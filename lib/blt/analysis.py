"""Analysis of a trained byte-level entropy model: bits per byte, next-byte entropy, and the patches it makes.

    metrics = analyze_blt("models/blt/<run_id>", cfg, Path("results/blt_analysis"), save_plots=True)

Entropy is in bits: H_i = -sum_v p(v | bytes before i) log2 p(v | ...), over the model's whole output (256
byte values and 3 specials, so 0 <= H_i <= log2(259) = 8.02). Every byte i of an evaluation file gets the
entropy of the model's prediction FOR it, made from the bytes before it (at least block_size / 2 of them
past the first half-window of a file stream: windows overlap by half, see lib.blt.training.score_tokens). Bits per
byte here therefore come out a little lower than the training evaluation's, whose windows do not overlap.

The patching rules (threshold, rise) are in lib/blt/patches.py, the figures in lib/blt/figures.py.

Writes into output_dir: metrics.json, report.md and, with save_plots, entropy_trace.png,
patch_length_hist.png, bits_per_byte.png (from the run's log_history.json) and
patch_length_vs_threshold.png. That folder is shared with the user (default figures/, main_eval.py's): the
files are written into a hidden folder beside it and moved in at the end, replacing only files main_eval.py
wrote there itself (lib/common/outputs.py, MAIN_EVAL: its manifest); a file of one of these names that it
did not write stops the analysis before the model loads (exit 2).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib.blt.data import VOCAB_SIZE, ensure_default_corpus, load_byte_data
from lib.blt.figures import (
    plot_bits_per_byte,
    plot_entropy_trace,
    plot_length_vs_threshold,
    plot_patch_histogram,
)
from lib.blt.model import load_model, quiet_transformers
from lib.blt.patches import PATCH_RULES, QUANTILES, RULES, patch_lengths, patch_statistics
from lib.blt.training import LN2, checkpoint_steps, score_tokens
from lib.common.atomic import write_text_atomic
from lib.common.config import repo_path
from lib.common.device import settings_from_config, setup_device
from lib.common.errors import EXIT_OK, UsageError
from lib.common.outputs import MAIN_EVAL, check_output_folder, replace_outputs, staging
from lib.common.runs import latest_run

log = logging.getLogger(__name__)

SAMPLE_BYTES = 120  # bytes in the entropy-trace figure: enough for two lines of text, each byte labelled
MAX_ENTROPY_BITS = math.log2(VOCAB_SIZE)


# ---------------------------------------------------------------- finding the model


def resolve_blt_model(model_path: str, cfg: dict) -> tuple[Path, Path | None]:
    """(model folder, run folder or None) for a run folder, a folder with a `latest` file, 'latest' (under
    cfg['output_dir']), a run's model/ or checkpoint folder. An interrupted run gives its last checkpoint."""
    if model_path == "latest":
        output_dir = repo_path(cfg["output_dir"])
        run = latest_run(output_dir)
        if run is None:
            raise UsageError(
                f"no completed byte-level model run in {output_dir} (no `latest` file).",
                fix="train one first (make train-mps, or scripts/main_trainer.py with a configs/blt/ config), "
                "or pass a run folder as the model path.",
            )
        path = run
    else:
        path = Path(model_path).expanduser()
        if not path.exists():
            path = repo_path(model_path)
    if not path.exists():
        raise UsageError(
            f"model path {model_path} does not exist.",
            fix="pass a run folder (models/blt/<run_id>), the folder holding `latest` (models/blt), or 'latest'.",
        )
    if path.name == "latest" and path.is_file():  # the pointer file itself: models/blt/latest
        path = path.parent
    if not (path / "run_info.json").is_file() and (path / "latest").is_file():
        run = latest_run(path)
        if run is None:
            raise UsageError(f"{path}/latest names no run folder.", fix="pass a run folder instead.")
        path = run
    if (path / "run_info.json").is_file():
        if (path / "model" / "config.json").is_file():
            return path / "model", path
        steps = checkpoint_steps(path)
        if not steps:
            raise UsageError(
                f"run {path} has neither a final model nor a checkpoint yet.",
                fix="let it reach save_steps, or finish it with --resume.",
            )
        log.warning("run %s did not complete: analysing its last checkpoint (step %d)", path, steps[-1])
        return path / "checkpoints" / f"checkpoint-{steps[-1]}", path
    if (path / "config.json").is_file():
        for parent in (path.parent, path.parent.parent):  # <run>/model or <run>/checkpoints/checkpoint-N
            if (parent / "run_info.json").is_file():
                return path, parent
        return path, None
    raise UsageError(
        f"{path} is neither a byte-level model run nor a model folder.",
        fix="pass a run folder (models/blt/<run_id>), the folder holding `latest` (models/blt), or 'latest'.",
    )


def config_of_run(model_path: str, cfg: dict, overrides: Sequence[str] = ()) -> dict | None:
    """The resolved config the run behind `model_path` was trained with (its config.json, with `overrides`
    on top), or None for a bare model folder: analyse on the run's own eval_data_dir when the user gave no
    config."""
    from lib.common.config import resolve_config

    _, run_dir = resolve_blt_model(model_path, cfg)
    if run_dir is None or not (run_dir / "config.json").is_file():
        return None
    return resolve_config(run_dir / "config.json", overrides, schema_name="blt")


# ---------------------------------------------------------------- the analysis


def _thresholds(cfg: dict, thresholds: Sequence[float] | None) -> list[float]:
    chosen = list(cfg["analysis_thresholds"] if thresholds is None else thresholds)
    bad = [t for t in chosen if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0)]
    if not chosen or bad:
        raise UsageError(
            f"entropy thresholds must be finite numbers >= 0 (bits); got {bad or 'none'}.",
            fix="pass thresholds such as 0.5 1 2 4 (between 0 and log2(259) = 8.02 bits).",
        )
    return sorted({float(t) for t in chosen} | {float(cfg["entropy_threshold"])})


def _documents(data, tokens_used: int, entropy: np.ndarray) -> list[dict]:
    """Per file (within the first tokens_used tokens): its name, bytes and their entropies."""
    docs = []
    tokens = np.asarray(data.tokens[:tokens_used])
    for name, first, size in data.document_spans():
        end = min(first + size, tokens_used)
        if end <= first:
            continue
        docs.append(
            {
                "file": name,
                "bytes": tokens[first:end].astype(np.uint8),
                "entropy": entropy[first - 1 : end - 1],  # score index t - 1 is the prediction of token t
            }
        )
    return docs


def _sample(docs: list[dict], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    long_enough = [d for d in docs if d["bytes"].size >= SAMPLE_BYTES]
    doc = (
        long_enough[rng.integers(len(long_enough))]
        if long_enough
        else max(docs, key=lambda d: d["bytes"].size)
    )
    offset = (
        int(rng.integers(doc["bytes"].size - SAMPLE_BYTES + 1)) if doc["bytes"].size > SAMPLE_BYTES else 0
    )
    end = offset + SAMPLE_BYTES
    return {
        "file": doc["file"],
        "offset": offset,
        "bytes": doc["bytes"][offset:end].tolist(),
        "entropy": doc["entropy"][offset:end].tolist(),
    }


def analyze_blt(
    model_path: str,
    cfg: dict,
    output_dir: Path,
    save_plots: bool,
    thresholds: Sequence[float] | None = None,
    max_bytes: int | None = None,
    seed: int = 0,
) -> dict:
    """Analyse a byte-level model on cfg['eval_data_dir']; write metrics.json, report.md (+ figures).

    model_path: a run folder, the folder holding `latest`, 'latest' (under cfg['output_dir']), or a model
    folder. cfg: a resolved blt config (its eval_data_dir, cache_dir, entropy_threshold, analysis_thresholds,
    batch_size and device keys are used; the model's shape comes from the model folder). thresholds: the
    sweep in bits (default cfg['analysis_thresholds']; cfg['entropy_threshold'] is always added).
    max_bytes: analyse only the first max_bytes bytes of the eval files (in file order). seed: picks the
    text sample of the entropy-trace figure. Returns the metrics dict written to metrics.json.
    """
    if cfg.get("model_type") != "blt":
        raise UsageError(
            f"the analysis needs a blt config, got model_type '{cfg.get('model_type')}'.",
            fix="pass --config configs/blt/<profile>.json (or none: the blt defaults).",
        )
    sweep_thresholds = _thresholds(cfg, thresholds)
    if max_bytes is not None and max_bytes < 2:
        raise UsageError(
            f"max_bytes={max_bytes} is too small.", fix="pass at least 2, or leave it unset for all."
        )
    model_dir, run_dir = resolve_blt_model(model_path, cfg)
    history, run_metrics = _run_record(run_dir)
    output_dir = Path(output_dir)
    check_output_folder(output_dir, planned_files(save_plots, bool(history)), MAIN_EVAL)
    ensure_default_corpus(cfg["eval_data_dir"])
    data = load_byte_data(cfg["eval_data_dir"], cfg["cache_dir"], "eval_data_dir")

    tokens = np.asarray(data.tokens)
    if max_bytes is not None:
        # cut the stream right after the max_bytes-th byte token (specials around it do not count)
        byte_count = np.cumsum(tokens < 256)
        if byte_count[-1] > max_bytes:
            tokens = tokens[: int(np.searchsorted(byte_count, max_bytes)) + 1]
    setup = setup_device(settings_from_config(cfg))
    quiet_transformers()
    model = load_model(model_dir, setup.device)
    block = int(model.config.n_positions)
    nll, entropy = score_tokens(model, tokens, block, max(block // 2, 1), cfg["batch_size"], setup, True)
    is_byte = tokens[1:] < 256
    n_bytes = int(is_byte.sum())
    if n_bytes == 0:
        raise UsageError(f"eval_data_dir {data.directory} gave no bytes to analyse.", fix="raise max_bytes.")
    bits_per_byte = float(nll[is_byte].sum() / LN2 / n_bytes)
    byte_entropy = entropy[is_byte]
    docs = _documents(data, len(tokens), entropy)

    sweep: dict[str, list[dict]] = {rule: [] for rule in RULES}
    at_threshold: dict[str, np.ndarray] = {}
    for rule, starts_of in PATCH_RULES.items():
        for threshold in sweep_thresholds:
            lengths = np.concatenate(
                [patch_lengths(starts_of(d["entropy"], threshold), d["entropy"].size) for d in docs]
            )
            sweep[rule].append({"threshold": threshold, **patch_statistics(lengths, n_bytes)})
            if threshold == float(cfg["entropy_threshold"]):
                at_threshold[rule] = lengths
    threshold = float(cfg["entropy_threshold"])
    histogram = {}
    for rule, lengths in at_threshold.items():
        counts = np.bincount(np.minimum(lengths, 64))[1:]
        histogram[rule] = {
            "lengths": list(range(1, counts.size + 1)),
            "counts": counts.tolist(),
            "note": "64 = 64 or more",
        }

    sample = _sample(docs, seed)
    with staging(output_dir, MAIN_EVAL) as staged:
        figures = {}
        if save_plots:
            figures["entropy_trace"] = plot_entropy_trace(sample, threshold, staged / "entropy_trace.png")
            figures["patch_length_hist"] = plot_patch_histogram(
                at_threshold, threshold, staged / "patch_length_hist.png"
            )
            if history:
                figures["bits_per_byte"] = plot_bits_per_byte(history, staged / "bits_per_byte.png")
            figures["patch_length_vs_threshold"] = plot_length_vs_threshold(
                sweep, staged / "patch_length_vs_threshold.png"
            )
        metrics = {
            "model_type": "blt",
            "model": str(model_dir),
            "run": str(run_dir) if run_dir else None,
            "eval_data_dir": str(data.directory),
            "eval_files": len(docs),
            "bytes": n_bytes,
            "context": f"windows of {block} bytes overlapping by half: each byte sees >= {block - max(block // 2, 1)} bytes of context past the first window of the stream",
            "bits_per_byte": bits_per_byte,
            "entropy_unit": "bits",
            "entropy": {
                "mean": float(byte_entropy.mean()),
                "max_possible": MAX_ENTROPY_BITS,
                "quantiles": {f"p{round(q * 100)}": float(np.quantile(byte_entropy, q)) for q in QUANTILES},
            },
            "entropy_threshold": threshold,
            "patches": {rule: next(r for r in sweep[rule] if r["threshold"] == threshold) for rule in RULES},
            "patch_length_histogram": histogram,
            "sweep": sweep,
            "training": {
                "eval_bits_per_byte": run_metrics.get("eval_bits_per_byte"),
                "global_step": run_metrics.get("global_step"),
                "eval_points": [h for h in history if "eval_bits_per_byte" in h],
            },
            "sample": {k: sample[k] for k in ("file", "offset")}
            | {"text": bytes(sample["bytes"]).decode("utf-8", "replace")},
            "figures": figures,
            "device": setup.summary(),
            "max_bytes": max_bytes,
            "seed": seed,
        }
        write_text_atomic(staged / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        write_text_atomic(staged / "report.md", report_markdown(metrics))
        replace_outputs(output_dir, staged, ["metrics.json", "report.md", *figures.values()], MAIN_EVAL)
    log.info("blt analysis: %.3f bits per byte over %d bytes; wrote %s", bits_per_byte, n_bytes, output_dir)
    return metrics


def _run_record(run_dir: Path | None) -> tuple[list, dict]:
    """(log history, final metrics) of the run behind the model; empty for a bare model folder."""
    history, run_metrics = [], {}
    if run_dir is not None:
        if (run_dir / "log_history.json").is_file():
            history = json.loads((run_dir / "log_history.json").read_text())
        if (run_dir / "metrics.json").is_file():
            run_metrics = json.loads((run_dir / "metrics.json").read_text())
    return history, run_metrics


def planned_files(save_plots: bool, history: bool) -> list[str]:
    """The files an analysis writes, known before the model loads (bits_per_byte.png needs a log history)."""
    figures = ["entropy_trace.png", "patch_length_hist.png", "patch_length_vs_threshold.png"]
    figures += ["bits_per_byte.png"] if history else []
    return ["metrics.json", "report.md", *(figures if save_plots else [])]


def report_markdown(m: dict) -> str:
    t = m["entropy_threshold"]
    lines = [
        "# Byte-level entropy model: analysis",
        "",
        f"- model: `{m['model']}`",
        f"- eval data: `{m['eval_data_dir']}` ({m['eval_files']} files, {m['bytes']:,} bytes analysed)",
        f"- bits per byte: **{m['bits_per_byte']:.3f}** ({m['context']})",
    ]
    if m["training"]["eval_bits_per_byte"] is not None:
        lines.append(
            f"- at the end of training (non-overlapping windows): {m['training']['eval_bits_per_byte']:.3f} "
            f"bits per byte at step {m['training']['global_step']}"
        )
    q = m["entropy"]["quantiles"]
    lines += [
        f"- next-byte entropy (bits, of at most {m['entropy']['max_possible']:.2f}): mean {m['entropy']['mean']:.3f}, "
        f"median {q['p50']:.3f}, 90th percentile {q['p90']:.3f}",
        "",
        f"## Patches at the configured threshold ({t:g} bits)",
        "",
        "| rule | patches | patches per KB | mean length [bytes] | median | 90th percentile | longest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule in RULES:
        p = m["patches"][rule]
        lines.append(
            f"| {rule} | {p['patches']:,} | {p['patches_per_kb']:.1f} | {p['mean_length']:.2f} | "
            f"{p['length_quantiles']['p50']:g} | {p['length_quantiles']['p90']:g} | {p['max_length']} |"
        )
    lines += [
        "",
        "threshold rule: a patch starts where the entropy exceeds the threshold; rise rule: where it rises by "
        "more than the threshold over the previous byte. Each file starts a patch.",
        "",
        "## Sweep over thresholds",
        "",
        "| threshold [bits] | threshold rule: mean length | patches per KB | rise rule: mean length | patches per KB |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in zip(m["sweep"]["threshold"], m["sweep"]["rise"], strict=True):
        lines.append(
            f"| {a['threshold']:g} | {a['mean_length']:.2f} | {a['patches_per_kb']:.1f} | "
            f"{b['mean_length']:.2f} | {b['patches_per_kb']:.1f} |"
        )
    captions = {
        "entropy_trace": f"Next-byte entropy over a sample of `{m['sample']['file']}` with patch starts",
        "patch_length_hist": "Patch-length histogram at the configured threshold",
        "bits_per_byte": "Bits per byte over training steps",
        "patch_length_vs_threshold": "Patch length vs threshold",
    }
    if m["figures"]:
        lines += ["", "## Figures", ""]
        for key, name in m["figures"].items():
            lines += [f"![{captions[key]}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def analyze_from_config(cfg: dict) -> int:
    """main_eval.py --eval-mode analyze: analyse eval.model_path[0] into eval.output_dir with the config's
    thresholds, byte limit and seed; prints bits per byte and where the report is. The twin of
    lib/llm/evaluate.py's evaluate_from_config."""
    settings = cfg["eval"]
    output_dir = repo_path(settings["output_dir"])
    metrics = analyze_blt(
        settings["model_path"][0],
        cfg,
        output_dir,
        settings["save_plots"],
        None,
        settings["max_bytes"],
        cfg["seed"],
    )
    print(f"bits per byte {metrics.get('bits_per_byte')}; report: {output_dir / 'report.md'}")
    return EXIT_OK
