"""GRPO: what it does differently from SFT (TRL's GRPOTrainer: completions sampled per prompt, scored by the
rewards of lib/llm/rewards.py), and where it starts (grpo.init_from). The order of a stage is
lib/llm/training.py, `train_stage`."""

from __future__ import annotations

import json
from pathlib import Path

from lib.common.device import DeviceSetup
from lib.common.errors import UsageError
from lib.common.runs import mean_of_last
from lib.llm.rewards import reward_functions
from lib.llm.stages import stage_start_run

# the columns the rewards read besides the prompt; J_zero spares the optimality reward a u = 0 simulation
FIELDS = ("prompt", "system", "x0", "J_opt", "J_floor", "J_zero")


def check_config(cfg: dict) -> None:
    if not reward_functions(cfg["grpo"])[0]:
        raise UsageError(
            "every GRPO reward has weight 0.", fix="give at least one of grpo.rewards.* a weight > 0."
        )


def training_records(cfg: dict, model, tokenizer, setup: DeviceSetup, train: list[dict], run_dir, processes):
    """GRPO samples its answers from the dataset's prompts as they are. (The corrected stage builds its own here.)"""
    return train


def arguments(cfg: dict, common: dict, setup: DeviceSetup):
    """GRPOConfig: the shared TrainingArguments (lib.llm.stages.common_args) plus GRPO's own."""
    from trl import GRPOConfig

    grpo = cfg["grpo"]
    return GRPOConfig(
        **common,
        num_generations=grpo["num_generations"],
        max_completion_length=grpo["max_completion_length"],
        temperature=grpo["temperature"],
        beta=grpo["beta"],
        loss_type=grpo["loss_type"],
        scale_rewards=grpo["scale_rewards"],
        mask_truncated_completions=grpo["mask_truncated_completions"],
        reward_weights=reward_functions(grpo)[1],
        log_completions=grpo["log_completions"],
        use_vllm=setup.vllm,
        vllm_mode=grpo["vllm_mode"],
        vllm_gpu_memory_utilization=grpo["vllm_gpu_memory_utilization"],
    )


def trainer(cfg: dict, model, tokenizer, peft_config, args, train: list[dict], evaluation: list[dict],
            callbacks: list):  # fmt: skip
    """GRPOTrainer over the train records (no eval loss: the control-metrics callback measures GRPO)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    return GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(cfg["grpo"])[0],
        args=args,
        # a family member's values travel as JSON text (one string column whatever the families), so each
        # reward scores a completion with its own problem (lib/llm/rewards.py, problem_params)
        train_dataset=Dataset.from_list(
            [{k: r[k] for k in FIELDS} | {"params": json.dumps(r.get("params"))} for r in train]
        ),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def final_metrics(cfg: dict, trainer, output, evaluation: list[dict], stopped: bool) -> dict:
    """metrics.json of a finished run: the mean of the last logged rewards, in total and per reward."""
    history = trainer.state.log_history
    metrics = {"reward": mean_of_last(history, "reward")}
    for function in reward_functions(cfg["grpo"])[0]:
        metrics[f"rewards/{function.__name__}"] = mean_of_last(history, f"rewards/{function.__name__}/mean")
    return metrics


def grpo_init_run(cfg: dict, sft_run: Path | None) -> Path | None:
    """Which finished SFT run GRPO starts from: the one just trained, `latest`, a path, or none ('base')."""
    if sft_run is not None:
        return sft_run
    if cfg["grpo"]["init_from"] == "base":
        return None
    return stage_start_run(cfg, "grpo")
