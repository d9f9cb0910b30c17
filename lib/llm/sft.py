"""Supervised fine-tuning: what SFT does differently from the other stages (TRL's SFTTrainer, prompt-completion
records, loss on the completion only). The order of a stage is lib/llm/training.py, `train_stage`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lib.common.device import DeviceSetup
from lib.common.errors import UsageError
from lib.common.runs import mean_of_last
from lib.control.answer import TAGS

if TYPE_CHECKING:
    import torch

FIELDS = ("prompt", "completion")  # the columns SFTTrainer reads
CONTROLS_OPEN = TAGS[2]


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
    """SFTTrainer over the train records, with the eval split for the final eval loss; with
    sft.first_control_weight != 1, the training loss weighs the first control's tokens that many times
    (`first_control_weights`)."""
    from datasets import Dataset
    from trl import SFTTrainer

    def rows(records: list[dict]):
        return Dataset.from_list([{k: r[k] for k in FIELDS} for r in records])

    weight = cfg["sft"]["first_control_weight"]
    token_texts = [tokenizer.decode([i]) for i in range(len(tokenizer))] if weight != 1 else []

    class FirstControlWeighted(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:  # the eval loss stays the plain mean, comparable across runs
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            weights = first_control_weights(token_texts, inputs["input_ids"], inputs["labels"], weight)
            # TRL's fused head returns log p(token t+1) at position t, for the labels shifted by one
            scaled = ScaledLogProbs(model, weights[:, 1:])
            return super().compute_loss(scaled, inputs, return_outputs, num_items_in_batch)

    return (SFTTrainer if weight == 1 else FirstControlWeighted)(
        model=model,
        args=args,
        train_dataset=rows(train),
        eval_dataset=rows(evaluation) if evaluation else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def first_control_weights(token_texts: list[str], input_ids, labels, weight: float) -> torch.Tensor:
    """[batch, seq] loss weights: `weight` on the completion tokens that write the first number after
    <CONTROLS> (its sign and digits, up to the comma or closing tag; a token that also holds part of the tag,
    as a subword tokenizer may merge ">-", counts), 1 elsewhere. Found on the tokens' text, so any tokenizer
    works; a completion without <CONTROLS> gets no extra weight. Built on the CPU, moved once.

    Why: the double integrator's whole gap sits in u_0, the one control computed from the state; the rest
    follow from the controls already written (docs/TRAINING_APPROACHES.md, "What limits SFT's precision")."""
    import torch

    weights = torch.ones(labels.shape, dtype=torch.float32)
    for row, (ids, row_labels) in enumerate(zip(input_ids.tolist(), labels.tolist(), strict=True)):
        positions = [t for t, label in enumerate(row_labels) if label != -100]
        pieces = [token_texts[ids[t]] for t in positions]
        text = "".join(pieces)
        opened = text.find(CONTROLS_OPEN)
        if opened < 0:
            continue
        start = opened + len(CONTROLS_OPEN)
        ends = [i for i in (text.find(",", start), text.find("<", start)) if i >= 0]
        end = min(ends, default=len(text))
        offset = 0
        for t, piece in zip(positions, pieces, strict=True):
            if offset < end and offset + len(piece) > start:
                weights[row, t] = weight
            offset += len(piece)
    return weights.to(labels.device)


class ScaledLogProbs:
    """The model, called as TRL's SFTTrainer calls it for the training loss (`fused_lm_head=True`: per-token
    log-probabilities), with those log-probabilities multiplied by `scale`. SFTTrainer's loss, minus their
    sum over the number of completion tokens, then has each u_0 term multiplied by the weight (not a weighted
    mean: the divisor stays the token count, so the logged training loss grows with the weight); its entropy
    and accuracy logs stay as they are. A trainer that builds its loss another way is refused, not ignored."""

    def __init__(self, model: Any, scale: torch.Tensor) -> None:
        self.model, self.scale = model, scale

    def __call__(self, **kwargs: Any) -> Any:
        outputs = self.model(**kwargs)
        if not kwargs.get("fused_lm_head"):
            return outputs  # TRL's extra forward for logits (return_outputs=True): not the loss
        if getattr(outputs, "log_probs", None) is None:
            raise UsageError(
                "sft.first_control_weight scales the per-token log-probabilities of TRL's fused LM head "
                "(TRL >= 1.16, no Unsloth); this trainer's forward returned none, so the weight would be "
                "ignored.",
                fix="set sft.first_control_weight=1, or train with TRL >= 1.16 without Unsloth "
                "(device.unsloth=off).",
            )
        outputs.log_probs = outputs.log_probs * self.scale
        return outputs


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
