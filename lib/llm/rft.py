"""Rejection-sampling fine-tuning (RFT, expert iteration): what this stage does differently from SFT. The
order of a stage is lib/llm/training.py, `train_stage`; docs/training.md, "Rejection-sampling fine-tuning".

The SFT model's own samples hold better controllers than its greedy answer (best-of-k, the evaluation's
inference-time rows, measures how much better). RFT pulls greedy towards them without a reward model or a
policy gradient (RAFT, Xiong et al. 2025; ReST-EM, Singh et al. 2023):

    1. the start model (rft.init_from) answers rft.prompts train prompts greedily and with rft.samples
       samples at rft.temperature;
    2. every answer is simulated and scored like an evaluation's (lib.llm.evaluation.score_samples), and the
       best sample of each prompt is chosen by the best-of-k rule (`best_of_rows`);
    3. where it beats the greedy answer (feasible, and greedy infeasible or costlier), "prompt -> that
       sample" is trained, the loss on the whole answer, mixed with rft.label_records original labels.

It trains like the solver-corrected stage (lib/llm/corrected.py: pre-tokenized records, kept in the run
folder so a resumed run trains on the same ones); only the records differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.common.device import DeviceSetup
from lib.common.distributed import Processes
from lib.common.errors import UsageError
from lib.llm.corrected import (  # trains as the corrected stage: SFT on pre-tokenized records
    arguments,
    final_metrics,
    init_name,
    own_answer_records,
    own_answers,
    trainer,
)
from lib.llm.evaluation import answer_records, best_of_rows, score_samples

__all__ = ["arguments", "check_config", "final_metrics", "trainer", "training_records"]


def check_config(cfg: dict) -> None:
    """Nothing to check beyond the schema: the start run is checked when it is resolved."""


def training_records(
    cfg: dict, model, tokenizer, setup: DeviceSetup, train: list[dict], run_dir: Path, processes: Processes
) -> list[dict]:
    """The stage's records (module docstring), built once per run and kept in its folder."""
    settings, seed = cfg["rft"], cfg["seed"]
    k = settings["samples"]

    def rows_from(asked: list[dict]) -> tuple[list[dict], dict]:
        greedy = own_answers(model, tokenizer, setup, asked, settings, seed)
        samples = own_answers(model, tokenizer, setup, asked, settings, seed, settings["temperature"], k)
        rows, summary = better_samples(asked, greedy, samples, k)
        if not rows:
            raise UsageError(
                f"rft: on none of {len(asked)} train prompts did the best of {k} samples beat the greedy answer "
                f"({init_name(run_dir)}), so there is nothing to learn from.",
                fix="raise rft.temperature or rft.samples, or start from an SFT run whose answers parse (train "
                "it longer, or raise rft.max_new_tokens if its answers were cut short).",
            )
        return rows, summary

    return own_answer_records(cfg, "rft", tokenizer, train, run_dir, processes, rows_from)


def better_samples(
    records: list[dict], greedy: list[str], samples: list[str], k: int
) -> tuple[list[dict], dict]:
    """(rows, summary): for each record whose best of its k samples (record-major) beats its greedy answer,
    a row {record, content, cut 0, id, k, gap, greedy_gap}; the summary gives the headroom on these prompts
    (median gap of greedy and of best-of-k over the problems both answered feasibly)."""
    greedy_rows = score_samples(records, answer_records(records, lambda _: greedy, 1))
    best = best_of_rows(score_samples(records, answer_records(records, lambda _: samples, k)), k)
    g, b = greedy_rows.metrics, best.metrics
    # strictly better: a tie (the sample IS the greedy answer) teaches nothing new
    beats = b["feasible"] & (~g["feasible"] | (b["J"] < g["J"]))
    rows = [
        {"record": records[i], "content": best.completion[i], "cut": 0, "id": records[i]["id"], "k": k,
         "gap": float(b["gap"][i]), "greedy_gap": float(g["gap"][i]) if g["feasible"][i] else None}
        for i in np.flatnonzero(beats)
    ]  # fmt: skip
    both = g["feasible"] & b["feasible"]
    summary = {
        "prompts": len(records),
        "samples_per_prompt": k,
        "greedy_feasible": int(g["feasible"].sum()),
        "best_feasible": int(b["feasible"].sum()),
        "greedy_median_gap": float(np.median(g["gap"][both])) if both.any() else None,
        "best_median_gap": float(np.median(b["gap"][both])) if both.any() else None,
        "kept_samples": len(rows),
    }
    return rows, summary
