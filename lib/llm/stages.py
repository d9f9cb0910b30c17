"""What every training stage calls: a stage's run folder, its records, the length check, TrainingArguments,
the start and the end of a run. What each stage does differently: lib/llm/sft.py and lib/llm/grpo.py; the
order of a stage and of the stages: lib/llm/training.py; the trainer's callbacks: lib/llm/callbacks.py.

    models/<system or universal>/<sft|grpo|corrected|rft>/<run_id>/
        config.json       the resolved config          command.txt   the command line
        run_info.json     status, git commit, package versions, device line, dataset, base model, init run
        model/            the LoRA adapter (or the full model) and the tokenizer, written at the end
        checkpoints/      checkpoint-N every save_steps (resumable once it holds CHECKPOINT_DONE)
        log_history.json  trainer_state.json  metrics.json
        stage_records.jsonl, stage_records.json   the corrected / RFT stage's records, built once (resume)
        training_curves.png   loss, rewards and the control metrics of eval.every_steps against step
        tensorboard/      event files (run.report_to: tensorboard)
    models/<scope>/<stage>/latest   the run_id of the last COMPLETED run (written only after it completes)

Run folders follow lib/common/runs.py (docs/ARCHITECTURE.md, "Run folders").
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from lib.common.atomic import write_json_atomic
from lib.common.config import repo_path
from lib.common.device import DeviceSetup
from lib.common.distributed import Processes
from lib.common.errors import UsageError
from lib.common.runs import (
    is_run_folder,
    latest_run,
    mark_completed,
    mark_interrupted,
    newest_run,
    read_run_info,
    start_run_folder,
)
from lib.control.dataset_format import load_records

log = logging.getLogger(__name__)

STAGES = ("sft", "grpo")
SFT_FIELDS = ("prompt", "completion")
GRPO_FIELDS = ("prompt", "system", "x0", "J_opt")
OWN_ANSWER_FIELDS = ("prompt", "completion", "system", "x0", "decimals", "J_opt", "J_floor")  # corrected, rft


def scope_of(cfg: dict) -> str:
    return cfg["data"]["system"] or "universal"


def stage_dir(cfg: dict, stage: str) -> Path:
    return repo_path(cfg["run"]["models_dir"]) / scope_of(cfg) / stage


def resumable_run_id(cfg: dict) -> str:
    """With --resume and no run_id: the newest run of the first stage this job runs."""
    return newest_run(stage_dir(cfg, "sft" if cfg["training_type"] == "both" else cfg["training_type"]))


def load_stage_records(cfg: dict, stage: str) -> tuple[list[dict], list[dict], dict]:
    """(train records, eval records, info) for a stage (lib.control.dataset_format.load_records): filtered to
    data.system, the train split capped at data.grpo_max_samples for GRPO, data.sft_max_samples for the others
    (the corrected and RFT stages answer SFT's prompts), the eval split (for SFT's final eval loss) at
    data.eval_max_samples."""
    data = cfg["data"]
    if not data["dataset_name"]:
        raise UsageError(
            "no dataset given (data.dataset_name is empty).",
            fix="pass --dataset-name NAME (or data.dataset_name=NAME); `python scripts/generate_data.py --list` "
            "shows the datasets.",
        )
    path = repo_path(data["datasets_dir"]) / data["dataset_name"]
    cap = data["grpo_max_samples"] if stage == "grpo" else data["sft_max_samples"]
    train, info = load_records(path, "train", data["system"], cap or None)
    evaluation = []
    if stage == "sft" and data["eval_max_samples"]:
        evaluation = load_records(path, "eval", data["system"], data["eval_max_samples"])[0]
    needed = {
        "sft": SFT_FIELDS,
        "grpo": GRPO_FIELDS,
        "corrected": OWN_ANSWER_FIELDS,
        "rft": OWN_ANSWER_FIELDS,
    }[stage]
    for record in train[:1] + evaluation[:1]:
        missing = [f for f in needed if f not in record]
        if missing:
            raise UsageError(
                f"dataset '{data['dataset_name']}' records lack {', '.join(missing)}, which {stage} needs.",
                fix="regenerate the dataset with scripts/generate_data.py.",
            )
    return train, evaluation, info


def record_texts(records: list[dict]) -> list[str]:
    """Every message of the records (prompt and completion): what a from-scratch tokenizer learns from."""
    return [m["content"] for r in records for m in r["prompt"] + r.get("completion", [])]


def check_lengths(tokenizer, records: list[dict], cfg: dict, stage: str) -> list[dict]:
    """Stop (or, with data.allow_truncation, truncate / drop) when records exceed model.max_seq_length."""
    limit = cfg["model"]["max_seq_length"]

    def tokens(messages: list[dict], add_generation_prompt: bool = False) -> int:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if stage != "grpo":  # SFT, and the corrected stage whose label records are SFT's
        lengths = [tokens(r["prompt"] + r["completion"]) for r in records]
        room = limit
        what = "prompt + completion"
    else:
        lengths = [tokens(r["prompt"], add_generation_prompt=True) for r in records]
        room = limit - cfg["grpo"]["max_completion_length"]
        what = f"prompt + grpo.max_completion_length ({cfg['grpo']['max_completion_length']})"
    too_long = [i for i, n in enumerate(lengths) if n > room]
    log.info(
        "%s: %d records, longest %s = %d tokens (limit %d)", stage, len(records), what, max(lengths), limit
    )
    if not too_long:
        return records
    if not cfg["data"]["allow_truncation"]:
        raise UsageError(
            f"{len(too_long)} of {len(records)} {stage} records are longer than model.max_seq_length = {limit} "
            f"tokens ({what}; the longest needs {max(lengths) + (limit - room)}).",
            fix="raise model.max_seq_length (or --max-seq-length), lower grpo.max_completion_length, or set "
            "data.allow_truncation=true to truncate (SFT) / drop (GRPO) them.",
        )
    if stage != "grpo":
        log.warning(
            "%d SFT records will be truncated to %d tokens (data.allow_truncation)", len(too_long), limit
        )
        return records
    log.warning(
        "dropping %d GRPO prompts that leave no room for the completion (data.allow_truncation)",
        len(too_long),
    )
    keep = set(range(len(records))) - set(too_long)
    return [r for i, r in enumerate(records) if i in keep]


def dataset_styles(info: dict) -> dict:
    """How the dataset words its problems (info.json; datasets made before the styles existed are "full"),
    recorded in every run's run_info.json."""
    return {"prompt_style": info.get("prompt_style", "full"), "reasoning": info.get("reasoning", "full")}


def common_args(stage_cfg: dict, cfg: dict, setup: DeviceSetup, run_dir: Path) -> dict:
    """TrainingArguments shared by SFT and GRPO, from the stage's config section."""
    return {
        "output_dir": str(run_dir / "checkpoints"),
        "learning_rate": stage_cfg["learning_rate"],
        "max_steps": stage_cfg["max_steps"],
        "num_train_epochs": stage_cfg["num_train_epochs"],
        "per_device_train_batch_size": stage_cfg["per_device_train_batch_size"],
        "gradient_accumulation_steps": stage_cfg["gradient_accumulation_steps"],
        "warmup_steps": stage_cfg["warmup_ratio"],  # transformers reads a value below 1 as a ratio
        "lr_scheduler_type": stage_cfg["lr_scheduler_type"],
        # only warmup_stable_decay reads it: hold the rate, then decay it over the last decay_ratio of the
        # steps (check_relations refuses it without max_steps)
        "lr_scheduler_kwargs": (
            {"num_decay_steps": max(1, round(stage_cfg["decay_ratio"] * stage_cfg["max_steps"]))}
            if stage_cfg["lr_scheduler_type"] == "warmup_stable_decay"
            else {}
        ),
        "weight_decay": stage_cfg["weight_decay"],
        "logging_steps": stage_cfg["logging_steps"],
        "save_strategy": "steps",
        "save_steps": stage_cfg["save_steps"],
        # the trainer's own rotation counts checkpoints by number, complete or not, so it could delete the
        # last complete one while a newer one is unfinished: prune_checkpoints (after CHECKPOINT_DONE) keeps
        # save_total_limit complete ones instead
        "save_total_limit": None,
        "seed": cfg["seed"],
        "bf16": setup.precision == "bf16",
        "fp16": setup.precision == "fp16",
        "use_cpu": setup.device == "cpu",
        # TensorBoard gets its own callback (report_callbacks), so its files go to the run folder
        "report_to": ["wandb"] if cfg["run"]["report_to"] == "wandb" else [],
        "dataloader_num_workers": 0,
        "gradient_checkpointing": cfg["model"]["gradient_checkpointing"],
    }


def start_run(
    cfg: dict,
    stage: str,
    run_id: str,
    argv: Sequence[str],
    setup: DeviceSetup,
    extra: dict,
    processes: Processes | None = None,
) -> Path:
    """The stage's run folder, started (or reopened) by the main process only (one writer per folder)."""
    processes = processes or Processes()
    run_dir = stage_dir(cfg, stage) / run_id
    if processes.is_main:  # the trainer makes checkpoints/ on any rank
        fields = {
            "stage": stage,
            "scope": scope_of(cfg),
            "device": setup.summary(),
            "world_size": processes.world_size,
            "base_model": cfg["model"]["name"],
            "adapter": cfg["model"]["lora"]["enabled"],
            "dataset": cfg["data"]["dataset_name"],
            **extra,
        }
        start_run_folder(run_dir, cfg, argv, fields)
        discard_incomplete_checkpoints(run_dir)
    return run_dir


def finish_run(
    run_dir: Path,
    trainer,
    tokenizer,
    metrics: dict,
    stopped_by: str | None,
    processes: Processes | None = None,
) -> bool:
    """Write the model, history and metrics; mark the run completed and move `latest` (unless stopped).

    Every process calls it (saving a sharded FSDP / DeepSpeed model needs all of them), the main one
    writes, and all wait for it, so a later stage on any rank reads a complete run folder.
    """
    processes = processes or Processes()
    step = trainer.state.global_step
    if processes.distributed:  # each rank says it trained, so a multi-process log shows all of them
        log.info("%s: %s finished at step %d", processes.describe(), run_dir.parent.name, step)
    if not stopped_by:
        trainer.save_model(str(run_dir / "model"))  # a collective under FSDP / DeepSpeed; rank 0 writes
    if processes.is_main:
        _write_run_end(run_dir, trainer, tokenizer, metrics, stopped_by)
    processes.barrier()
    return not stopped_by


def _write_run_end(run_dir: Path, trainer, tokenizer, metrics: dict, stopped_by: str | None) -> None:
    from lib.llm.plots import plot_training_curves

    step = trainer.state.global_step
    write_json_atomic(run_dir / "log_history.json", trainer.state.log_history)
    trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
    beta = getattr(trainer.args, "beta", 0.0) or 0.0  # GRPO's KL weight (the KL panel only when > 0)
    title = f"{run_dir.parent.name} run {run_dir.name}"
    plot_training_curves(trainer.state.log_history, title, run_dir / "training_curves.png", beta)
    if stopped_by:
        mark_interrupted(run_dir, stopped_by, step)
        return
    tokenizer.save_pretrained(run_dir / "model")
    mark_completed(
        run_dir, step, {"global_step": step, **{k: v for k, v in metrics.items() if v is not None}}
    )


# The trainer writes checkpoint-N in place, file by file, so a run killed (kill -9, a full disk, a node
# lost) while saving leaves a folder that looks like the newest checkpoint and cannot be loaded. A checkpoint
# counts only once this file is in it: callbacks.checkpoint_done_callback writes it after the trainer saved.
CHECKPOINT_DONE = "checkpoint_complete.json"


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoints/checkpoint-N folders, oldest (lowest N) first, complete or not."""
    folder = run_dir / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()]
    return sorted((p for p in found if p.is_dir()), key=lambda p: int(p.name.removeprefix("checkpoint-")))


def is_complete_checkpoint(checkpoint: Path) -> bool:
    return (checkpoint / CHECKPOINT_DONE).is_file()


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest COMPLETE checkpoint (with CHECKPOINT_DONE) to resume from, or None; newer unfinished ones
    are skipped, and logged."""
    checkpoints = numbered_checkpoints(run_dir)
    complete = [p for p in checkpoints if is_complete_checkpoint(p)]
    newest = complete[-1] if complete else None
    skipped = [p.name for p in checkpoints[checkpoints.index(newest) + 1 if newest else 0 :]]
    if skipped:
        log.warning(
            "%s: skipping unfinished checkpoint(s) %s (the run stopped while saving); resuming from %s",
            run_dir,
            ", ".join(skipped),
            newest.name if newest else "the start",
        )
    return str(newest) if newest else None


def discard_incomplete_checkpoints(run_dir: Path) -> None:
    """Remove the checkpoints without CHECKPOINT_DONE (never resumed from; left, the trainer would write
    into them again) from a run folder of ours. The caller holds the run's lock (lib.common.runs.run_lock),
    so no trainer is writing one of them now."""
    if not is_run_folder(run_dir):
        return
    for checkpoint in numbered_checkpoints(run_dir):
        if not is_complete_checkpoint(checkpoint):
            log.warning("removing %s: unfinished (the run stopped while saving it)", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints of a run folder of ours; older complete ones go. Called
    only after a checkpoint got CHECKPOINT_DONE, so the one to resume from is never removed."""
    if not is_run_folder(run_dir):
        return
    complete = [p for p in numbered_checkpoints(run_dir) if is_complete_checkpoint(p)]
    for old in complete[: max(len(complete) - keep, 0)]:
        (old / CHECKPOINT_DONE).unlink()  # first: a removal cut short leaves an unfinished checkpoint
        shutil.rmtree(old, ignore_errors=True)


def stage_start_run(cfg: dict, stage: str) -> Path:
    """The finished run a later stage starts from, `<stage>.init_from`: 'latest' (the newest completed SFT run)
    or a run folder (GRPO's 'base' and the run just trained: lib/llm/grpo.py, grpo_init_run)."""
    choice = cfg[stage]["init_from"]
    if choice == "latest":
        run = latest_run(stage_dir(cfg, "sft"))
        if run is None:
            base = (
                ", or set grpo.init_from=base"
                if stage == "grpo"
                else f", or set {stage}.init_from to a run folder"
            )
            raise UsageError(
                f"{stage}.init_from=latest but there is no completed SFT run in {stage_dir(cfg, 'sft')}.",
                fix=f"train SFT first (--training-type sft or both){base}.",
            )
        return run
    run = repo_path(choice)
    read_run_info(run)
    return run
