"""Training runs: SFT then GRPO with TRL, on CUDA (Unsloth / vLLM when installed), Apple MPS or CPU.

    models/<system or universal>/<sft|grpo>/<run_id>/
        config.json       the resolved config          command.txt   the command line
        run_info.json     status, git commit, package versions, device line, dataset, base model, init run
        model/            the LoRA adapter (or the full model) and the tokenizer, written at the end
        checkpoints/      checkpoint-N every save_steps (resumable)
        log_history.json  trainer_state.json  metrics.json
    models/<scope>/<stage>/latest   the run_id of the last COMPLETED run (written only after it completes)

`training_type: both` runs SFT then GRPO from that SFT run, both under the same run_id, so `--resume`
after a preemption finds both: a completed stage is kept, an unfinished one resumes from its last
checkpoint. SIGTERM or Ctrl-C saves a checkpoint at the current step and exits 130, resumable.

Under `accelerate launch` (several processes, lib/distributed.py) every process trains, all agree on rank
0's run_id, and only the main process writes the run folder and `latest`; run_info.json records
`world_size`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lib.atomic import write_json_atomic, write_text_atomic
from lib.config import ROOT, repo_path
from lib.dataset import read_info, read_split
from lib.device import DeviceSetup, settings_from_config, setup_device
from lib.distributed import Processes
from lib.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError
from lib.models import EMBEDDED, resolve_model_name
from lib.rewards import reward_functions
from lib.systems import get_system

log = logging.getLogger(__name__)

STAGES = ("sft", "grpo")
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy", "unsloth", "vllm")
SFT_FIELDS = ("prompt", "completion")
GRPO_FIELDS = ("prompt", "system", "x0", "J_opt")


# ---------------------------------------------------------------- run folders


def scope_of(cfg: dict) -> str:
    return cfg["data"]["system"] or "universal"


def stage_dir(cfg: dict, stage: str) -> Path:
    return repo_path(cfg["run"]["models_dir"]) / scope_of(cfg) / stage


def read_run_info(
    run_dir: Path,
    kind: str = "training run",
    fix: str = "pass a folder under models/<scope>/<stage>/ written by main_trainer.py.",
) -> dict:
    """run_info.json of a run folder (control or byte-level model), with a clear error when it is not one."""
    try:
        return json.loads((run_dir / "run_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(
            f"{run_dir} is not a {kind} (run_info.json missing or unreadable).", fix=fix
        ) from None


def newest_run(directory: Path) -> str:
    """The run_id of the run whose run_info.json changed last (what --resume continues without a run_id)."""
    runs = sorted(
        (p for p in directory.glob("*") if (p / "run_info.json").is_file()),
        key=lambda p: (p / "run_info.json").stat().st_mtime,
    )
    if not runs:
        raise UsageError(
            f"--resume: no run to resume in {directory}.", fix="start a new run without --resume."
        )
    return runs[-1].name


def latest_run(directory: Path) -> Path | None:
    """The run that `<stage dir>/latest` names (the last completed run), or None."""
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    run = directory / pointer.read_text().strip()
    return run if (run / "run_info.json").is_file() else None


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        return commit + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def resumable_run_id(cfg: dict) -> str:
    """With --resume and no run_id: the newest run of the first stage this job runs."""
    return newest_run(stage_dir(cfg, "grpo" if cfg["training_type"] == "grpo" else "sft"))


# ---------------------------------------------------------------- data


def load_stage_records(cfg: dict, stage: str) -> tuple[list[dict], list[dict], dict]:
    """(train records, eval records, info) for a stage, filtered to data.system and capped."""
    data = cfg["data"]
    if not data["dataset_name"]:
        raise UsageError(
            "no dataset given (data.dataset_name is empty).",
            fix="pass --dataset-name NAME (or data.dataset_name=NAME); `python scripts/generate_data.py --list` "
            "shows the datasets.",
        )
    path = repo_path(data["datasets_dir"]) / data["dataset_name"]
    if not path.is_dir():
        raise UsageError(
            f"dataset '{data['dataset_name']}' not found in {path.parent}.",
            fix="make it with `python scripts/generate_data.py --dataset-name NAME ...` (or `make data`); "
            "`python scripts/generate_data.py --list` shows what exists.",
        )
    info = read_info(path)
    train, evaluation = read_split(path, "train"), read_split(path, "eval")
    if data["system"]:
        get_system(data["system"])  # an unknown name fails with the valid ones
        if data["system"] not in info.get("systems", {}):
            raise UsageError(
                f"dataset '{data['dataset_name']}' has no '{data['system']}' records "
                f"(it has: {', '.join(info.get('systems', {}))}).",
                fix="pick a system the dataset has, or generate one with --systems " + data["system"],
            )
        train = [r for r in train if r["system"] == data["system"]]
        evaluation = [r for r in evaluation if r["system"] == data["system"]]
    cap = data["sft_max_samples"] if stage == "sft" else data["grpo_max_samples"]
    train = train[:cap] if cap else train
    evaluation = evaluation[: data["eval_max_samples"]]
    needed = SFT_FIELDS if stage == "sft" else GRPO_FIELDS
    for record in train[:1] + evaluation[:1]:
        missing = [f for f in needed if f not in record]
        if missing:
            raise UsageError(
                f"dataset '{data['dataset_name']}' records lack {', '.join(missing)}, which {stage} needs.",
                fix="regenerate the dataset with scripts/generate_data.py.",
            )
    if not train:
        raise UsageError(f"dataset '{data['dataset_name']}' has no train records to use for {stage}.")
    for record in train:  # rewards need each system's J_floor, which info.json keeps per system
        record["J_floor"] = info["systems"][record["system"]]["J_floor"]
    return train, evaluation, info


def check_lengths(tokenizer, records: list[dict], cfg: dict, stage: str) -> list[dict]:
    """Stop (or, with data.allow_truncation, truncate / drop) when records exceed model.max_seq_length."""
    limit = cfg["model"]["max_seq_length"]

    def tokens(messages: list[dict], add_generation_prompt: bool = False) -> int:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if stage == "sft":
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
    if stage == "sft":
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


# ---------------------------------------------------------------- models


def _dtype(setup: DeviceSetup):
    import torch

    # fp16 mixed precision keeps fp32 master weights, so only bf16 loads the weights in half precision
    return torch.bfloat16 if setup.precision == "bf16" else torch.float32


def load_tokenizer(path: str, cfg: dict):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg["model"]["trust_remote_code"])
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"the tokenizer of {path} has neither a pad nor an end-of-sequence token.",
                fix="use a chat model whose tokenizer defines them (SmolLM2, Qwen2.5, Llama 3).",
            )
        log.warning("tokenizer has no pad token: using its end-of-sequence token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UsageError(
            f"the tokenizer of {path} has no chat template; the prompts are conversations.",
            fix="use an instruct/chat model (SmolLM2-Instruct, Qwen2.5-Instruct) or one whose tokenizer has one.",
        )
    return tokenizer


def load_run_model(run_dir: Path, cfg: dict, setup: DeviceSetup):
    """A finished run's model with every adapter on its chain merged (base -> SFT -> GRPO)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    info = read_run_info(run_dir)
    if info.get("status") != "completed":
        raise UsageError(
            f"run {run_dir} is not completed (status: {info.get('status')}).",
            fix=f"resume it with --resume --run-id {run_dir.name}, or start from another run.",
        )
    if info["init_run"]:
        model = load_run_model(Path(info["init_run"]), cfg, setup)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_name(info["base_model"]),
            dtype=_dtype(setup),
            trust_remote_code=cfg["model"]["trust_remote_code"],
        )
    if info["adapter"]:
        return PeftModel.from_pretrained(model, run_dir / "model").merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=_dtype(setup))


def lora_config(cfg: dict):
    from peft import LoraConfig

    lora = cfg["model"]["lora"]
    return LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


def load_unsloth_model(path: str, cfg: dict, setup: DeviceSetup):
    """CUDA with Unsloth only (not run on CPU CI): its loader, with vLLM fast inference when enabled."""
    from unsloth import FastLanguageModel

    lora = cfg["model"]["lora"]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=cfg["model"]["max_seq_length"],
        load_in_4bit=False,
        fast_inference=setup.vllm,
        max_lora_rank=lora["rank"],
        gpu_memory_utilization=cfg["grpo"]["vllm_gpu_memory_utilization"],
    )
    if lora["enabled"]:
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            use_gradient_checkpointing="unsloth",
            random_state=cfg["seed"],
        )
    return model, tokenizer


def load_start_model(cfg: dict, setup: DeviceSetup, init_run: Path | None):
    """(model, tokenizer, peft_config) to train: the base model or a finished run, plus fresh LoRA."""
    from transformers import AutoModelForCausalLM

    base = resolve_model_name(cfg["model"]["name"])
    if Path(base).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub (a lookup would hang ~50 s)
    tokenizer_source = str(init_run / "model") if init_run else base
    if setup.unsloth and init_run is None:
        model, tokenizer = load_unsloth_model(base, cfg, setup)
        return model, tokenizer, None
    tokenizer = load_tokenizer(tokenizer_source, cfg)
    if init_run is not None:
        model = load_run_model(init_run, cfg, setup)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=_dtype(setup), trust_remote_code=cfg["model"]["trust_remote_code"]
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, lora_config(cfg) if cfg["model"]["lora"]["enabled"] else None


# ---------------------------------------------------------------- trainer pieces


class StopOnSignal:
    """SIGTERM (SLURM preemption) or Ctrl-C: save a checkpoint at the end of the current step and stop."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.signal_name: str | None = None

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if outer.signal_name:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        self.callback = Callback()

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signal_name:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping", self.signal_name
        )


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
        "weight_decay": stage_cfg["weight_decay"],
        "logging_steps": stage_cfg["logging_steps"],
        "save_strategy": "steps",
        "save_steps": stage_cfg["save_steps"],
        "save_total_limit": stage_cfg["save_total_limit"],
        "seed": cfg["seed"],
        "bf16": setup.precision == "bf16",
        "fp16": setup.precision == "fp16",
        "use_cpu": setup.device == "cpu",
        "report_to": [] if cfg["run"]["report_to"] == "none" else [cfg["run"]["report_to"]],
        "dataloader_num_workers": 0,
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
    processes = processes or Processes()
    run_dir = stage_dir(cfg, stage) / run_id
    if not processes.is_main:  # one writer per run folder; the trainer makes checkpoints/ on any rank
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg)
    write_text_atomic(run_dir / "command.txt", " ".join(argv) + "\n")
    previous = (
        json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").is_file() else {}
    )
    info = {
        "stage": stage,
        "scope": scope_of(cfg),
        "run_id": run_id,
        "status": "running",
        "started_at": previous.get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "resumed": previous.get("resumed", 0) + (1 if previous else 0),
        "git_commit": _git_commit(),
        "packages": package_versions(),
        "device": setup.summary(),
        "world_size": processes.world_size,
        "base_model": cfg["model"]["name"],
        "adapter": cfg["model"]["lora"]["enabled"],
        "dataset": cfg["data"]["dataset_name"],
        **extra,
    }
    write_json_atomic(run_dir / "run_info.json", info)
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
    info = read_run_info(run_dir)
    step = trainer.state.global_step
    write_json_atomic(run_dir / "log_history.json", trainer.state.log_history)
    trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
    if stopped_by:
        info.update(status="interrupted", stopped_by=stopped_by, step=step)
        write_json_atomic(run_dir / "run_info.json", info)
        return
    tokenizer.save_pretrained(run_dir / "model")
    metrics = {"global_step": step, **{k: v for k, v in metrics.items() if v is not None}}
    write_json_atomic(run_dir / "metrics.json", metrics)
    info.update(status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), step=step)
    write_json_atomic(run_dir / "run_info.json", info)
    write_text_atomic(run_dir.parent / "latest", run_dir.name + "\n")  # only now: `latest` is always complete
    log.info("%s/latest -> %s", run_dir.parent, run_dir.name)


def _last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = run_dir / "checkpoints"
    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def _mean_of_last(history: list[dict], key: str, count: int = 5) -> float | None:
    values = [h[key] for h in history if key in h]
    return sum(values[-count:]) / len(values[-count:]) if values else None


# ---------------------------------------------------------------- stages


def train_sft(
    cfg: dict, setup: DeviceSetup, run_id: str, argv: Sequence[str], processes: Processes | None = None
) -> tuple[Path, bool]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    train, evaluation, _ = load_stage_records(cfg, "sft")
    model, tokenizer, peft_config = load_start_model(cfg, setup, None)
    train = check_lengths(tokenizer, train, cfg, "sft")
    extra = {"init_run": None, "train_records": len(train)}
    run_dir = start_run(cfg, "sft", run_id, argv, setup, extra, processes)
    fields = list(SFT_FIELDS)
    args = SFTConfig(
        **common_args(cfg["sft"], cfg, setup, run_dir),
        max_length=cfg["model"]["max_seq_length"],
        completion_only_loss=True,
        per_device_eval_batch_size=cfg["sft"]["per_device_train_batch_size"],
    )
    with StopOnSignal() as stop:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{k: r[k] for k in fields} for r in train]),
            eval_dataset=Dataset.from_list([{k: r[k] for k in fields} for r in evaluation])
            if evaluation
            else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[stop.callback],
        )
        output = trainer.train(resume_from_checkpoint=_last_checkpoint(run_dir))
    metrics = {
        "train_loss": output.training_loss,
        "final_loss": _mean_of_last(trainer.state.log_history, "loss"),
    }
    if evaluation and not stop.signal_name:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_records"] = len(evaluation)
    return run_dir, finish_run(run_dir, trainer, tokenizer, metrics, stop.signal_name, processes)


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
    train, _, _ = load_stage_records(cfg, "grpo")
    model, tokenizer, peft_config = load_start_model(cfg, setup, init_run)
    train = check_lengths(tokenizer, train, cfg, "grpo")
    columns = ("prompt", "system", "x0", "J_opt", "J_floor")
    run_dir = start_run(
        cfg,
        "grpo",
        run_id,
        argv,
        setup,
        {"init_run": str(init_run) if init_run else None, "train_records": len(train)},
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
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=functions,
            args=args,
            train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in train]),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[stop.callback],
        )
        trainer.train(resume_from_checkpoint=_last_checkpoint(run_dir))
    history = trainer.state.log_history
    metrics = {"reward": _mean_of_last(history, "reward")}
    for function in functions:
        metrics[f"rewards/{function.__name__}"] = _mean_of_last(history, f"rewards/{function.__name__}/mean")
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


def run_training(cfg: dict, setup: DeviceSetup, argv: Sequence[str], resume: bool = False) -> int:
    """Run the stages `training_type` asks for; 0 when all completed, 130 when stopped by a signal."""
    if setup.unsloth:
        import unsloth  # noqa: F401  (Unsloth patches transformers and TRL: it must be imported first)
    processes = Processes.start(setup.device)
    if cfg["model"]["name"] == EMBEDDED:
        with processes.main_first():  # one process converts the GGUF, the others then find it converted
            resolve_model_name(EMBEDDED)  # convert once, before any trainer starts
    # rank 0 decides: a time-stamp run_id taken by each process could differ by a second between ranks
    run_id = processes.agree(
        cfg["run"]["run_id"] or (resumable_run_id(cfg) if resume else time.strftime("%Y%m%d-%H%M%S"))
    )
    stages = STAGES if cfg["training_type"] == "both" else (cfg["training_type"],)
    sft_run = None
    for stage in stages:
        run_dir = stage_dir(cfg, stage) / run_id
        previous = read_run_info(run_dir) if (run_dir / "run_info.json").is_file() else None
        # every rank looks before rank 0 starts the folder (which would make it "exist" to a late rank)
        processes.barrier()
        if previous is not None:
            status = previous.get("status")
            if not resume:
                raise UsageError(
                    f"run {run_dir} already exists ({status}).",
                    fix="pass --resume to continue it, or another --run-id.",
                )
            if status == "completed":
                log.info("%s run %s already completed: kept", stage, run_dir)
                sft_run = run_dir if stage == "sft" else sft_run
                continue
            log.info("resuming %s run %s from %s", stage, run_dir, _last_checkpoint(run_dir) or "the start")
        if stage == "sft":
            run_dir, done = train_sft(cfg, setup, run_id, argv, processes)
            sft_run = run_dir
        else:
            if previous is not None:  # a resumed run keeps the start it had, whatever `latest` says now
                recorded = previous["init_run"]
                init = Path(recorded) if recorded else None
            else:
                init = grpo_init_run(cfg, sft_run)
            run_dir, done = train_grpo(cfg, setup, run_id, argv, init, processes)
        if not done:
            if processes.is_main:
                print(
                    f"stopped: {stage} run {run_dir} saved a checkpoint; continue with --resume --run-id {run_id}"
                )
            return EXIT_INTERRUPTED
        if processes.is_main:
            print(f"{stage} run completed: {run_dir}")
    return EXIT_OK


def train_from_config(cfg: dict, argv: Sequence[str], resume: bool = False) -> int:
    """What main_trainer.py and train_single_system.py do: check model_type, set the device up, train."""
    if cfg["model_type"] == "blt":  # the byte-level entropy model has its own trainer and run folders
        from lib.blt import train_blt

        return train_blt(cfg, argv, resume=resume)
    if cfg["model_type"] != "control":
        raise UsageError(
            f"model_type '{cfg['model_type']}' cannot be trained by main_trainer.py.",
            fix="use a control config (configs/control/) or a blt config (configs/blt/).",
        )
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    return run_training(cfg, setup, argv, resume=resume)


def load_model_reference(reference: str, cfg: dict, setup: DeviceSetup):
    """(model, tokenizer, description) for a run folder, a stage folder with `latest`, 'latest' (the newest
    completed GRPO run under run.models_dir), or a base model name or path."""
    from transformers import AutoModelForCausalLM

    path = Path(reference).expanduser()
    if reference == "latest":
        candidates = [latest_run(p) for p in repo_path(cfg["run"]["models_dir"]).glob("*/grpo")]
        runs = [r for r in candidates if r is not None]
        if not runs:
            raise UsageError(
                f"no completed GRPO run under {repo_path(cfg['run']['models_dir'])}.",
                fix="train one (make train, training_type=grpo or both) or pass --model-path.",
            )
        path = max(runs, key=lambda r: (r / "run_info.json").stat().st_mtime)
    elif (path / "latest").is_file() and not (path / "run_info.json").is_file():
        path = latest_run(path) or path
    elif path.name == "latest" and path.is_file():  # the pointer file itself: <stage dir>/latest
        path = latest_run(path.parent) or path
    if (path / "run_info.json").is_file():
        model = load_run_model(path, cfg, setup)
        return model, load_tokenizer(str(path / "model"), cfg), f"run {path}"
    name = resolve_model_name(reference)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=_dtype(setup), trust_remote_code=cfg["model"]["trust_remote_code"]
        )
    except OSError as exc:  # transformers' "not a local folder and not a valid model identifier" & co.
        raise UsageError(
            f"no model '{reference}': not a run folder, not a model folder, and not loadable from the hub "
            f"cache ({str(exc).splitlines()[0]}).",
            fix="pass a run folder (models/<scope>/<stage>/<run_id>), a stage folder with a `latest` file, "
            "'latest', 'embedded', or a hub model already in the cache.",
        ) from None
    return model, load_tokenizer(name, cfg), f"model {reference}"
