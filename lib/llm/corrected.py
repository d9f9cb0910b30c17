"""Solver-corrected on-policy SFT (DAgger with the exact solver as teacher): what this stage does differently
from SFT. The order of a stage is lib/llm/training.py, `train_stage`; docs/training.md, "Solver-corrected SFT".

SFT teaches the rest of an answer that follows an OPTIMAL beginning. At test time the model continues its
OWN slightly wrong beginning, and its errors compound along the horizon (behaviour cloning's error grows
with the square of the horizon, DAgger's linearly: Ross, Gordon & Bagnell, AISTATS 2011). Our labels come
from an exact solver, so the right continuation of any beginning is known:

    1. the start model (corrected.init_from) answers corrected.prompts train prompts greedily;
    2. each answer that parses is cut after k of its controls, for corrected.cuts_per_answer different k
       drawn from 1 .. N-1 (seeded);
    3. the state x_k those k controls reach is simulated (the one simulator), and the rest of the problem,
       same discretisation, bounds, stage and terminal cost over the remaining N - k steps, is solved from
       x_k exactly as the labels are (`optimal_rest`: the QP for linear systems, the certified multi-start
       NLP otherwise) and rounded onto the printed grid as labels are;
    4. the record "prompt + own answer up to its k-th comma -> the optimal rest" is trained with the loss on
       the rest only, mixed with corrected.label_records original labels (loss on the whole answer, as SFT).

corrected.prompts 0 skips steps 1-3: the start model is trained on labels alone (more SFT from a finished
run, and the pipeline's labels phase: the control a second stage is judged against).

The records are token ids with a completion mask (TRL's pre-tokenized format), cut at a token boundary of
the rendered chat text: a label record is exactly the tokens SFT trains on. They are built once per run and
kept in the run folder (RECORDS_FILE), so a run resumed after SIGTERM trains on the same records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from lib.common.atomic import write_text_atomic
from lib.common.device import DeviceSetup
from lib.common.distributed import Processes
from lib.common.errors import ConfigError, UsageError
from lib.common.runs import mean_of_last
from lib.control.answer import format_controls, parse_controls
from lib.control.families import record_system
from lib.control.references import solve_family, solve_linear, solve_nonlinear
from lib.control.systems import System, simulate

log = logging.getLogger(__name__)

FIELDS = ("input_ids", "completion_mask")  # the pre-tokenized columns SFTTrainer reads
RECORDS_FILE = "stage_records.jsonl"  # the run's training records, built once (module docstring)
SUMMARY_FILE = "stage_records.json"  # what was built from how many answers, and the time it took


def check_config(cfg: dict) -> None:
    """Labels only (corrected.prompts 0) needs labels to train on; the start run is checked when resolved."""
    settings = cfg["corrected"]
    if settings["prompts"] == 0 and settings["label_records"] == 0:
        raise ConfigError(
            "corrected.prompts=0 (labels only) with corrected.label_records=0: there would be no records to "
            "train on.",
            fix="set corrected.label_records to the number of labels to train on (-1: every train record), or "
            "corrected.prompts >= 1 for the solver-corrected stage itself.",
        )


def arguments(cfg: dict, common: dict, setup: DeviceSetup):
    """SFTConfig: the shared TrainingArguments plus the completion-only loss on pre-tokenized records (the
    rejection-sampling stage, lib/llm/rft.py, trains the same way)."""
    from trl import SFTConfig

    return SFTConfig(
        **common,
        max_length=cfg["model"]["max_seq_length"],
        completion_only_loss=True,
    )


def trainer(cfg: dict, model, tokenizer, peft_config, args, train: list[dict], evaluation: list[dict],
            callbacks: list):  # fmt: skip
    """SFTTrainer over the mixed records (no eval loss: the held-out control metrics judge this stage)."""
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in FIELDS} for r in train]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def final_metrics(cfg: dict, trainer, output, evaluation: list[dict], stopped: bool) -> dict:
    """metrics.json of a finished run: the training loss and the mean of the last logged losses."""
    return {
        "train_loss": output.training_loss,
        "final_loss": mean_of_last(trainer.state.log_history, "loss"),
    }


# ---------------------------------------------------------------- the records


def training_records(
    cfg: dict, model, tokenizer, setup: DeviceSetup, train: list[dict], run_dir: Path, processes: Processes
) -> list[dict]:
    """The stage's records (module docstring): read from the run folder when an earlier start of this run
    built them, else built from the start model's own answers and written there (main process)."""
    settings, seed = cfg["corrected"], cfg["seed"]

    def rows_from(asked: list[dict]) -> tuple[list[dict], dict]:
        if not asked:  # corrected.prompts 0: labels only, no answers to correct
            return [], {"prompts": 0, "parsed_answers": 0, "corrected_records": 0}
        answers = own_answers(model, tokenizer, setup, asked, settings, seed)
        rows, summary = corrected_records(asked, answers, settings["cuts_per_answer"], cut_rng, seed)
        if not rows:
            raise UsageError(
                f"corrected: none of the start model's {len(asked)} answers parsed with the right number of "
                f"controls ({init_name(run_dir)}), so there is nothing to correct.",
                fix="start from an SFT run whose evaluation parses most answers (train it longer), or raise "
                "corrected.max_new_tokens if its answers were cut short.",
            )
        return rows, summary

    cut_rng = np.random.default_rng([seed, 1])
    return own_answer_records(cfg, "corrected", tokenizer, train, run_dir, processes, rows_from)


def own_answer_records(
    cfg: dict,
    stage: str,
    tokenizer,
    train: list[dict],
    run_dir: Path,
    processes: Processes,
    rows_from: Callable[[list[dict]], tuple[list[dict], dict]],
) -> list[dict]:
    """What the corrected and RFT stages share: the records an earlier start of this run kept, or else the
    first `<stage>.prompts` train records in a seeded shuffle, turned into rows by `rows_from` (the start
    model answers them there), mixed with labels (`mixed_records`) and kept in the run folder."""
    kept = kept_records(run_dir)
    if kept is not None:
        return kept
    start = time.perf_counter()
    order = np.random.default_rng(cfg["seed"]).permutation(len(train))
    rows, summary = rows_from([train[i] for i in order[: cfg[stage]["prompts"]]])
    records, counts = mixed_records(cfg, stage, tokenizer, train, order, rows)
    keep_records(
        run_dir, records, summary | counts | {"seconds": round(time.perf_counter() - start, 1)}, processes
    )
    return records


def kept_records(run_dir: Path) -> list[dict] | None:
    """The records an earlier start of this run built (RECORDS_FILE), or None."""
    path = run_dir / RECORDS_FILE
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines()]
    log.info("%s: %d records from %s (built when the run started)", run_dir.parent.name, len(records), path)
    return records


def keep_records(run_dir: Path, records: list[dict], summary: dict, processes: Processes) -> None:
    """Write the records and what was built (SUMMARY_FILE) into the run folder, main process only."""
    log.info("%s: %s", run_dir.parent.name, summary)
    if processes.is_main:
        write_text_atomic(run_dir / RECORDS_FILE, "".join(json.dumps(r) + "\n" for r in records))
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def mixed_records(
    cfg: dict, stage: str, tokenizer, train: list[dict], order: np.ndarray, rows: list[dict]
) -> tuple[list[dict], dict]:
    """(records, counts): the stage's rows {record, content, cut, ...} tokenized (`tokenized`: the loss from
    character `cut` of the answer on), and `cfg[stage]["label_records"]` original labels (the first of `order`;
    -1: as many as rows, or every train record when no answer was asked for, corrected.prompts 0), in one
    seeded shuffle, so a run capped by max_steps sees both kinds from its first step. A record longer than
    model.max_seq_length is dropped: TRL would cut it, its trained part included."""
    wanted = cfg[stage]["label_records"]
    if wanted < 0:
        wanted = len(rows) if cfg[stage]["prompts"] else len(train)
    labels = [train[i] for i in order[: min(wanted, len(train))]]
    records = [
        _with(tokenized(tokenizer, r["prompt"], r["completion"][-1]["content"], 0), id=r["id"], k=0)
        for r in labels
    ]
    for row in rows:
        fields = {key: value for key, value in row.items() if key not in ("record", "content", "cut")}
        records.append(
            _with(tokenized(tokenizer, row["record"]["prompt"], row["content"], row["cut"]), **fields)
        )
    limit = cfg["model"]["max_seq_length"]
    kept = [
        r for r in records if r is not None and len(r["input_ids"]) <= limit and any(r["completion_mask"])
    ]
    kept = [kept[i] for i in np.random.default_rng([cfg["seed"], 2]).permutation(len(kept))]
    counts = {
        "label_records": len(labels),
        "records": len(kept),
        "dropped_too_long_or_unrendered": len(records) - len(kept),
    }
    return kept, counts


def _with(tokens: dict | None, **fields) -> dict | None:
    return None if tokens is None else tokens | fields


def init_name(run_dir: Path) -> str:
    """The start run as run_info.json records it, for messages."""
    try:
        return "start run " + json.loads((run_dir / "run_info.json").read_text())["init_run"]
    except (OSError, ValueError, KeyError):
        return "the start run"


def own_answers(
    model,
    tokenizer,
    setup: DeviceSetup,
    records: list[dict],
    settings: dict,
    seed: int,
    temperature: float = 0.0,
    per_prompt: int = 1,
) -> list[str]:
    """The start model's answers to each record's prompt, `per_prompt` of them (record-major) at
    `temperature`; greedy by default (the answers the evaluation sees)."""
    from lib.llm.generation import generate_completions

    model.to(setup.device)
    prompts = [r["prompt"] for r in records for _ in range(per_prompt)]
    return generate_completions(
        model, tokenizer, prompts, settings["max_new_tokens"], settings["generation_batch_size"], temperature,
        seed, progress=True,
    )  # fmt: skip


def corrected_records(
    records: list[dict], answers: list[str], cuts: int, rng: np.random.Generator, seed: int = 0
) -> tuple[list[dict], dict]:
    """(rows, summary): for each answer that parses, `cuts` rows {record, content, cut, id, k, x_k}: the
    answer's text up to the comma after its k-th control (character `cut`), then the optimal rest of the
    record's problem from the state x_k those k controls reach, printed as its label is."""
    planned = []  # (record, answer, parsed controls, k)
    for record, answer in zip(records, answers, strict=True):
        system = record_system(record)
        parsed = parse_controls(answer, system.steps)
        if not parsed.ok or system.steps < 2:
            continue
        ks = rng.choice(np.arange(1, system.steps), size=min(cuts, system.steps - 1), replace=False)
        planned += [(record, answer, parsed.values, int(k)) for k in sorted(ks)]
    groups: dict[tuple, list[int]] = {}  # one solve per (problem, k): a fixed system's rows in one batch
    systems: dict[tuple, System] = {}
    for i, (record, _, _, k) in enumerate(planned):
        system = record_system(record)
        groups.setdefault((id(system), k), []).append(i)
        systems[(id(system), k)] = system
    rows: list[dict] = [{}] * len(planned)
    for key, idx in groups.items():
        system, k = systems[key], key[1]
        x0 = np.array([planned[i][0]["x0"] for i in idx], dtype=float)
        prefix = np.array([planned[i][2][:k] for i in idx])
        x_k, rest = optimal_rest(system, x0, prefix, planned[idx[0]][0]["decimals"], seed)
        for j, i in enumerate(idx):
            record, answer, _, _ = planned[i]
            if not np.all(np.isfinite(x_k[j])):
                continue  # the own controls diverged: no rest problem to solve
            cut = _after_control(answer, k)
            content = answer[:cut] + " " + format_controls(rest[j], record["decimals"]) + "</CONTROLS>"
            rows[i] = {"record": record, "content": content, "cut": cut, "id": record["id"], "k": k,
                       "x_k": x_k[j].tolist()}  # fmt: skip
    rows = [r for r in rows if r]
    summary = {
        "prompts": len(records),
        "parsed_answers": len({id(p[0]) for p in planned}),
        "corrected_records": len(rows),
    }
    return rows, summary


def optimal_rest(
    system: System, x0: np.ndarray, prefix: np.ndarray, decimals: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(x_k [B, n], rest [B, N-k]): the state the controls `prefix` [B, k] reach from x0 [B, n], and the
    label of the rest of the problem from there: the same problem over the remaining N - k steps (the
    stage cost of x_k is a constant there), solved and rounded onto the grid as labels are."""
    k = prefix.shape[1]
    x_k = simulate(system, x0, prefix)[:, -1]
    rest = replace(system, steps=system.steps - k)
    finite = np.all(np.isfinite(x_k), axis=1)
    out = np.full((len(x0), rest.steps), np.nan)
    if not finite.any():
        return x_k, out
    if rest.is_linear:
        out[finite] = solve_linear(rest, x_k[finite], decimals).u_label
    elif rest.family:
        solved = solve_family([rest] * int(finite.sum()), x_k[finite], decimals, seed)
        out[finite] = np.stack([s.u_label[0] for s in solved])
    else:
        out[finite] = solve_nonlinear(rest, x_k[finite], decimals, seed).u_label
    return x_k, out


def _after_control(answer: str, k: int) -> int:
    """Where the answer's text continues after its k-th control: the index just past the k-th comma of its
    <CONTROLS> block (the answer parsed, so the block and k + 1 numbers are there)."""
    at = answer.index("<CONTROLS>") + len("<CONTROLS>")
    for _ in range(k):
        at = answer.index(",", at) + 1
    return at


def tokenized(tokenizer, prompt: list[dict], content: str, cut: int) -> dict | None:
    """{input_ids, completion_mask} of the chat `prompt` answered with `content`, the loss on the answer from
    character `cut` on (0: the whole answer, as SFT). The rendered text is tokenized whole, as SFT's
    records are, and every token that ends after the cut is trained: a token spanning the cut (", -" in a
    tokenizer that merges them) belongs to the rest. None when the chat template does not render the
    answer's beginning verbatim."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": content}], tokenize=False)
    if not full.startswith(head + content[:cut]):
        return None
    boundary = len(head) + cut
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(end > boundary) for _, end in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "completion_mask": mask}
