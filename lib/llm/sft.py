"""Supervised fine-tuning: what SFT does differently from the other stages (TRL's SFTTrainer, prompt-completion
records, loss on the completion only). The order of a stage is lib/llm/training.py, `train_stage`."""

from __future__ import annotations

from lib.common.device import DeviceSetup
from lib.common.runs import mean_of_last

FIELDS = ("prompt", "completion")  # the columns SFTTrainer reads


def check_config(cfg: dict) -> None:
    """Nothing to check beyond the schema (GRPO checks its rewards here)."""


def training_records(cfg: dict, model, tokenizer, setup: DeviceSetup, train: list[dict], run_dir, processes):
    """SFT trains on the dataset's records as they are. (The corrected stage builds its own here.)"""
    return train


def arguments(cfg: dict, common: dict, setup: DeviceSetup):
    """SFTConfig: the shared TrainingArguments (lib.llm.stages.common_args) plus SFT's own."""
    from trl import SFTConfig

    return SFTConfig(
        **common,
        max_length=cfg["model"]["max_seq_length"],
        completion_only_loss=True,
        per_device_eval_batch_size=cfg["sft"]["per_device_train_batch_size"],
    )


def trainer(cfg: dict, model, tokenizer, peft_config, args, train: list[dict], evaluation: list[dict],
            callbacks: list):  # fmt: skip
    """SFTTrainer over the train records, with the eval split for the final eval loss."""
    from datasets import Dataset
    from trl import SFTTrainer

    def rows(records: list[dict]):
        return Dataset.from_list([{k: r[k] for k in FIELDS} for r in records])

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows(train),
        eval_dataset=rows(evaluation) if evaluation else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def final_metrics(cfg: dict, trainer, output, evaluation: list[dict], stopped: bool) -> dict:
    """metrics.json of a finished run: the training loss, the mean of the last logged losses, and the eval
    loss on the eval split (not when stopped by a signal: the run is resumed, not finished)."""
    metrics = {
        "train_loss": output.training_loss,
        "final_loss": mean_of_last(trainer.state.log_history, "loss"),
    }
    if evaluation and not stopped:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_records"] = len(evaluation)
    return metrics
