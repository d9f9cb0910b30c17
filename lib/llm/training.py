"""Training runs: the order of the stages (SFT then GRPO with TRL, on CUDA with Unsloth / vLLM when
installed, Apple MPS or CPU) and the order within one stage (`train_stage`: records, model, lengths, run
folder, arguments, callbacks, train, finish), written once. What a stage does differently (its arguments,
trainer and final metrics) is lib/llm/sft.py or lib/llm/grpo.py; the helpers every stage calls (records,
length check, TrainingArguments, run folder start and end) are lib/llm/stages.py, the callbacks
lib/llm/callbacks.py.

`training_type: both` runs SFT then GRPO from that SFT run, both under the same run_id, so `--resume`
after a preemption finds both: a completed stage is kept, an unfinished one resumes from its last
checkpoint. SIGTERM or Ctrl-C saves a checkpoint at the current step and exits 130, resumable. One trainer
per run: a second one on the same run_id exits 2 (lib.common.runs.run_lock). A stage that fails with an
exception is marked 'failed' in run_info.json with the reason, and resumes from its last complete checkpoint.

Under `accelerate launch` (several processes, lib/common/distributed.py) every process trains, all agree on rank
0's run_id, and only the main process writes the run folder and `latest`; run_info.json records
`world_size`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from lib.common.atomic import check_writable_folder
from lib.common.config import repo_path
from lib.common.device import DeviceSetup, settings_from_config, setup_device
from lib.common.distributed import Processes
from lib.common.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError, name_the_folder
from lib.common.runs import (
    StopOnSignal,
    check_existing_run,
    mark_failed,
    new_run_id,
    read_run_info,
    refuse_foreign_latest,
    run_lock,
)
from lib.llm import corrected, grpo, rft, sft
from lib.llm.callbacks import attach_trainer, stage_callbacks
from lib.llm.grpo import grpo_init_run
from lib.llm.models import EMBEDDED, SCRATCH, load_start_model, resolve_model_name, start_model_name
from lib.llm.stages import (
    STAGES,
    check_lengths,
    common_args,
    dataset_styles,
    discard_incomplete_checkpoints,
    finish_run,
    last_checkpoint,
    load_stage_records,
    record_texts,
    resumable_run_id,
    stage_dir,
    stage_start_run,
    start_run,
)

log = logging.getLogger(__name__)
# what each stage does differently: check_config, training_records, arguments, trainer, final_metrics
STAGE_MODULES = {"sft": sft, "grpo": grpo, "corrected": corrected, "rft": rft}


def train_stage(
    cfg: dict,
    stage: str,
    setup: DeviceSetup,
    run_id: str,
    argv: Sequence[str],
    init_run: Path | None = None,
    processes: Processes | None = None,
) -> tuple[Path, bool]:
    """One stage from its config to its finished run folder; (run folder, completed). Every stage runs in
    this order; init_run is the finished run it starts from (GRPO, corrected or RFT after SFT), None for the
    base model."""
    stage_module = STAGE_MODULES[stage]
    stage_module.check_config(cfg)
    train, evaluation, info = load_stage_records(cfg, stage)
    base = start_model_name(cfg, record_texts(train)) if init_run is None else cfg["model"]["name"]
    model, tokenizer, peft_config = load_start_model(cfg, setup, init_run, base)
    train = check_lengths(tokenizer, train, cfg, stage)
    recorded = {
        "init_run": str(init_run) if init_run else None,
        "base_model": base if cfg["model"]["name"] == SCRATCH else cfg["model"]["name"],
        "train_records": len(train),
        **dataset_styles(info),
    }
    processes = processes or Processes()
    run_dir = start_run(cfg, stage, run_id, argv, setup, recorded, processes)
    try:
        train = stage_module.training_records(cfg, model, tokenizer, setup, train, run_dir, processes)
        args = stage_module.arguments(cfg, common_args(cfg[stage], cfg, setup, run_dir), setup)
        with StopOnSignal() as stop:
            callbacks = stage_callbacks(cfg, stage, tokenizer, run_dir, stop, processes)
            trainer = stage_module.trainer(
                cfg, model, tokenizer, peft_config, args, train, evaluation, callbacks
            )
            attach_trainer(trainer, callbacks)
            output = trainer.train(resume_from_checkpoint=last_checkpoint(run_dir))
        metrics = stage_module.final_metrics(cfg, trainer, output, evaluation, bool(stop.signal_name))
        return run_dir, finish_run(run_dir, trainer, tokenizer, metrics, stop.signal_name, processes)
    except Exception as exc:  # any failure: run_info.json says so (a second Ctrl-C leaves it 'running')
        located = name_the_folder(exc, run_dir)  # a full disk's error may not say where
        if processes.is_main:
            # a save cut short (a full disk) is never resumed from; removing it first also frees the room
            # that run_info.json needs on a full disk
            discard_incomplete_checkpoints(run_dir)
            mark_failed(run_dir, located)
        if located is exc:
            raise
        raise located from exc


def run_training(cfg: dict, setup: DeviceSetup, argv: Sequence[str], resume: bool = False) -> int:
    """Run the stages `training_type` asks for; 0 when all completed, 130 when stopped by a signal."""
    if setup.unsloth:
        import unsloth  # noqa: F401  (Unsloth patches transformers and TRL: it must be imported first)
    processes = Processes.start(setup.device)
    if cfg["model"]["name"] == EMBEDDED:
        with processes.main_first():  # one process converts the GGUF, the others then find it converted
            resolve_model_name(EMBEDDED)  # convert once, before any trainer starts
    # rank 0 decides: a time-stamp run_id taken by each process could differ by a second between ranks
    run_id = processes.agree(cfg["run"]["run_id"] or (resumable_run_id(cfg) if resume else new_run_id()))
    stages = STAGES if cfg["training_type"] == "both" else (cfg["training_type"],)
    for stage in stages:  # GRPO's too before SFT trains: a run that ends refused loses no work
        refuse_foreign_latest(stage_dir(cfg, stage))
    sft_run = None
    for stage in stages:
        with run_lock(stage_dir(cfg, stage) / run_id, processes):
            sft_run, code = _run_stage(cfg, stage, setup, run_id, argv, resume, sft_run, processes)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _run_stage(
    cfg: dict,
    stage: str,
    setup: DeviceSetup,
    run_id: str,
    argv: Sequence[str],
    resume: bool,
    sft_run: Path | None,
    processes: Processes,
) -> tuple[Path | None, int]:
    """One stage of run_training, under its run lock: (the SFT run GRPO starts from, exit code)."""
    run_dir = stage_dir(cfg, stage) / run_id
    status = check_existing_run(run_dir, resume)
    previous = read_run_info(run_dir) if status is not None else None
    # every rank looks before rank 0 starts the folder (which would make it "exist" to a late rank)
    processes.barrier()
    if status == "completed":
        log.info("%s run %s already completed: kept", stage, run_dir)
        return (run_dir if stage == "sft" else sft_run), EXIT_OK
    if status is not None:
        log.info("resuming %s run %s from %s", stage, run_dir, last_checkpoint(run_dir) or "the start")
    if stage == "sft":
        run_dir, done = train_stage(cfg, "sft", setup, run_id, argv, None, processes)
        sft_run = run_dir
    else:
        if previous is not None:  # a resumed run keeps the start it had, whatever `latest` says now
            recorded = previous["init_run"]
            init = Path(recorded) if recorded else None
        else:
            init = grpo_init_run(cfg, sft_run) if stage == "grpo" else stage_start_run(cfg, stage)
        run_dir, done = train_stage(cfg, stage, setup, run_id, argv, init, processes)
    if not done:
        if processes.is_main:
            print(
                f"stopped: {stage} run {run_dir} saved a checkpoint; continue with --resume --run-id {run_id}"
            )
        return sft_run, EXIT_INTERRUPTED
    if processes.is_main:
        print(f"{stage} run completed: {run_dir}")
    return sft_run, EXIT_OK


def train_from_config(cfg: dict, argv: Sequence[str], resume: bool = False) -> int:
    """Set the device up and train a control config (the byte-level model trains in lib/blt/training.py;
    scripts/main_trainer.py picks by model_type)."""
    if cfg["model_type"] != "control":
        raise UsageError(
            f"model_type '{cfg['model_type']}' cannot be trained by main_trainer.py.",
            fix="use a control config (configs/smollm2/, configs/qwen2.5-1.5b/, configs/scratch/) or a blt config (configs/blt/).",
        )
    check_writable_folder(
        repo_path(cfg["run"]["models_dir"]),
        "run.models_dir",
        fix="set run.models_dir to a folder (it is created if missing), e.g. run.models_dir=models.",
    )
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    return run_training(cfg, setup, argv, resume=resume)
