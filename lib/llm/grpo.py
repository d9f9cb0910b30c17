"""GRPO: completions sampled per prompt, scored by the rewards of lib/llm/rewards.py (TRL's GRPOTrainer),
starting from a finished SFT run (grpo.init_from) or the base model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lib.common.config import repo_path
from lib.common.device import DeviceSetup
from lib.common.distributed import Processes
from lib.common.errors import UsageError
from lib.common.runs import StopOnSignal, latest_run, mean_of_last, read_run_info
from lib.llm.models import SCRATCH, load_start_model, start_model_name
from lib.llm.rewards import reward_functions
from lib.llm.stages import (
    attach_trainer,
    check_lengths,
    common_args,
    dataset_styles,
    finish_run,
    last_checkpoint,
    load_stage_records,
    record_texts,
    stage_callbacks,
    stage_dir,
    start_run,
)


def train_grpo(
    cfg: dict,
    setup: DeviceSetup,
    run_id: str,
    argv: Sequence[str],
    init_run: Path | None,
    processes: Processes | None = None,
) -> tuple[Path, bool]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    grpo = cfg["grpo"]
    functions, weights = reward_functions(grpo)
    if not functions:
        raise UsageError(
            "every GRPO reward has weight 0.", fix="give at least one of grpo.rewards.* a weight > 0."
        )
    train, _, info = load_stage_records(cfg, "grpo")
    base = start_model_name(cfg, record_texts(train)) if init_run is None else cfg["model"]["name"]
    model, tokenizer, peft_config = load_start_model(cfg, setup, init_run, base)
    train = check_lengths(tokenizer, train, cfg, "grpo")
    columns = ("prompt", "system", "x0", "J_opt", "J_floor", "J_zero")  # J_zero: no u = 0 simulation
    run_dir = start_run(
        cfg,
        "grpo",
        run_id,
        argv,
        setup,
        {
            "init_run": str(init_run) if init_run else None,
            "base_model": base if cfg["model"]["name"] == SCRATCH else cfg["model"]["name"],
            "train_records": len(train),
            **dataset_styles(info),
        },
        processes,
    )
    args = GRPOConfig(
        **common_args(grpo, cfg, setup, run_dir),
        num_generations=grpo["num_generations"],
        max_completion_length=grpo["max_completion_length"],
        temperature=grpo["temperature"],
        beta=grpo["beta"],
        loss_type=grpo["loss_type"],
        scale_rewards=grpo["scale_rewards"],
        mask_truncated_completions=grpo["mask_truncated_completions"],
        reward_weights=weights,
        log_completions=grpo["log_completions"],
        use_vllm=setup.vllm,
        vllm_mode=grpo["vllm_mode"],
        vllm_gpu_memory_utilization=grpo["vllm_gpu_memory_utilization"],
    )
    with StopOnSignal() as stop:
        callbacks = stage_callbacks(cfg, tokenizer, run_dir, stop)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=functions,
            args=args,
            train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in train]),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        attach_trainer(trainer, callbacks)
        trainer.train(resume_from_checkpoint=last_checkpoint(run_dir))
    history = trainer.state.log_history
    metrics = {"reward": mean_of_last(history, "reward")}
    for function in functions:
        metrics[f"rewards/{function.__name__}"] = mean_of_last(history, f"rewards/{function.__name__}/mean")
    return run_dir, finish_run(run_dir, trainer, tokenizer, metrics, stop.signal_name, processes)


def grpo_init_run(cfg: dict, sft_run: Path | None) -> Path | None:
    """Which finished SFT run GRPO starts from: the one just trained, `latest`, a path, or none ('base')."""
    if sft_run is not None:
        return sft_run
    choice = cfg["grpo"]["init_from"]
    if choice == "base":
        return None
    if choice == "latest":
        run = latest_run(stage_dir(cfg, "sft"))
        if run is None:
            raise UsageError(
                f"grpo.init_from=latest but there is no completed SFT run in {stage_dir(cfg, 'sft')}.",
                fix="train SFT first (--training-type sft or both), or set grpo.init_from=base.",
            )
        return run
    run = repo_path(choice)
    read_run_info(run)
    return run
