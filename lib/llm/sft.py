"""Supervised fine-tuning: prompt-completion records, loss on the completion only (TRL's SFTTrainer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lib.common.device import DeviceSetup
from lib.common.distributed import Processes
from lib.common.runs import StopOnSignal, mean_of_last
from lib.llm.models import SCRATCH, load_start_model, start_model_name
from lib.llm.stages import (
    SFT_FIELDS,
    attach_trainer,
    check_lengths,
    common_args,
    dataset_styles,
    finish_run,
    last_checkpoint,
    load_stage_records,
    record_texts,
    stage_callbacks,
    start_run,
)


def train_sft(
    cfg: dict, setup: DeviceSetup, run_id: str, argv: Sequence[str], processes: Processes | None = None
) -> tuple[Path, bool]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    train, evaluation, info = load_stage_records(cfg, "sft")
    base = start_model_name(cfg, record_texts(train))
    model, tokenizer, peft_config = load_start_model(cfg, setup, None, base)
    train = check_lengths(tokenizer, train, cfg, "sft")
    extra = {"init_run": None, "base_model": base if cfg["model"]["name"] == SCRATCH else cfg["model"]["name"],
             "train_records": len(train), **dataset_styles(info)}  # fmt: skip
    run_dir = start_run(cfg, "sft", run_id, argv, setup, extra, processes)
    fields = list(SFT_FIELDS)
    args = SFTConfig(
        **common_args(cfg["sft"], cfg, setup, run_dir),
        max_length=cfg["model"]["max_seq_length"],
        completion_only_loss=True,
        per_device_eval_batch_size=cfg["sft"]["per_device_train_batch_size"],
    )
    with StopOnSignal() as stop:
        callbacks = stage_callbacks(cfg, tokenizer, run_dir, stop)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{k: r[k] for k in fields} for r in train]),
            eval_dataset=Dataset.from_list([{k: r[k] for k in fields} for r in evaluation])
            if evaluation
            else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        attach_trainer(trainer, callbacks)
        output = trainer.train(resume_from_checkpoint=last_checkpoint(run_dir))
    metrics = {
        "train_loss": output.training_loss,
        "final_loss": mean_of_last(trainer.state.log_history, "loss"),
    }
    if evaluation and not stop.signal_name:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_records"] = len(evaluation)
    return run_dir, finish_run(run_dir, trainer, tokenizer, metrics, stop.signal_name, processes)
