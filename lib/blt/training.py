"""Training the byte-level entropy model: the entropy estimator of the Byte Latent Transformer
(docs/ARCHITECTURE.md, "The byte-level model").

A small causal transformer (lib/blt/model.py) predicts the next byte (lib/blt/data.py). Where its next-byte
entropy is high a new "patch" begins (the rules: lib/blt/patches.py; lib/blt/analysis.py measures them).
Trained by `main_trainer.py` with a `model_type: blt` config (schemas/blt.schema.json).

Run folder (lib/common/runs.py, as the control model's):
    <output_dir>/<run_id>/
        config.json  command.txt  run_info.json  log_history.json  metrics.json  trainer_state.json
        checkpoints/checkpoint-N/   model (safetensors), training_state.pt, trainer_state.json
        model/                      the final model (save_pretrained), written at the end
    <output_dir>/latest             the run_id of the last COMPLETED run (written only after it completes)
SIGTERM (SLURM preemption) or Ctrl-C saves a checkpoint at the end of the current step and exits 130;
`--resume` continues the newest run (or `run_id`) from its last checkpoint with the same batches. A
checkpoint is built under a temporary name and renamed when whole, so a run killed while saving leaves
only complete ones (the temporary folder is removed when the run resumes). One trainer per run
(lib.common.runs.run_lock); a run that fails with an exception is marked 'failed' with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.blt.data import PAD, VOCAB_SIZE, ByteData, ensure_default_corpus, load_byte_data
from lib.blt.model import MODEL_SHAPE_KEYS, build_model, check_config, count_parameters, quiet_transformers
from lib.common.atomic import check_writable_folder, write_json_atomic
from lib.common.config import repo_path
from lib.common.device import DeviceSetup, settings_from_config, setup_device
from lib.common.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError, name_the_folder
from lib.common.runs import (
    StopOnSignal,
    check_existing_run,
    mark_completed,
    mark_failed,
    mark_interrupted,
    mean_of_last,
    new_run_id,
    newest_run,
    read_run_info,
    replace_in_run,
    run_lock,
    start_run_folder,
)

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # resume needs only the newest; one more in case the newest's files are damaged later
MAX_GRAD_NORM = 1.0  # gradient clipping, as transformers' Trainer does by default
LN2 = math.log(2.0)


# ---------------------------------------------------------------- batches and steps


class StepBatches:
    """Item `step` is that optimiser step's micro-batches: int64 [accumulation, batch, block_size + 1].

    Window starts are drawn uniformly by a generator seeded with (seed, step), so any step's batch is the same
    whichever process makes it and whenever: a resumed run sees exactly the batches of an uninterrupted one.
    Map-style, so torch's DataLoader can spread steps over `num_workers` processes; the token file is opened
    lazily in each process (an open memmap is not sent between processes).
    """

    def __init__(self, path: Path, n_tokens: int, cfg: dict):
        self.path = str(path)
        self.n_tokens = n_tokens
        self.block = cfg["block_size"]
        self.shape = (cfg["gradient_accumulation_steps"], cfg["batch_size"])
        self.seed = cfg["seed"]
        self.steps = cfg["max_steps"]
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = np.load(self.path, mmap_mode="r", allow_pickle=False)
        rng = np.random.default_rng([self.seed, step])
        # a window is block + 1 tokens (inputs and the targets shifted by one): starts in [0, n - block - 1]
        starts = rng.integers(0, self.n_tokens - self.block, size=self.shape)
        windows = self._tokens[starts[..., None] + np.arange(self.block + 1)]
        return torch.from_numpy(windows.astype(np.int64))


def _worker_init(_worker_id: int) -> None:
    # SIGTERM to the process group (SLURM) must reach only the main process, which saves a checkpoint and
    # shuts the workers down; a worker killed first would make the next batch fail instead.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_loader(data: ByteData, cfg: dict, start_step: int, device: str):
    from torch.utils.data import DataLoader

    workers = cfg["num_workers"]
    return DataLoader(
        StepBatches(data.cache_path, data.n_tokens, cfg),
        batch_size=None,  # each item already is one step's batch
        sampler=range(start_step, cfg["max_steps"]),
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device == "cuda",
    )


def autocast(setup: DeviceSetup):
    """bf16 / fp16 autocast on CUDA when the run is in mixed precision; otherwise plain fp32."""
    if setup.device == "cuda" and setup.precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if setup.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(setup.device, enabled=False)


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weight matrices only (not on biases, LayerNorms or position tables)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("wpe.weight")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith("wpe.weight"))]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"])


def make_scheduler(optimizer, cfg: dict):
    """Linear warm-up over warmup_steps to learning_rate, then cosine decay to 0 at max_steps."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, cfg["warmup_steps"], cfg["max_steps"])


@dataclass
class StepResult:
    loss: float  # mean nats per target token (bytes and specials)
    byte_nats: float  # summed over the byte targets
    byte_count: int


def train_step(model, batch: torch.Tensor, optimizer, scheduler, scaler, setup: DeviceSetup) -> StepResult:
    """One optimiser step over batch [accumulation, batch, block + 1] (gradient accumulation inside)."""
    model.train()
    device = setup.device
    batch = batch.to(device, non_blocking=True)
    accumulation = batch.shape[0]
    total = torch.zeros((), device=device)
    byte_nats = torch.zeros((), device=device)
    byte_count = torch.zeros((), device=device, dtype=torch.int64)
    for micro in batch:
        inputs, targets = micro[:, :-1], micro[:, 1:]
        with autocast(setup):
            logits = model(input_ids=inputs).logits
        losses = F.cross_entropy(
            logits.float().reshape(-1, VOCAB_SIZE), targets.reshape(-1), reduction="none"
        )
        # every micro-batch has the same number of targets, so the mean of means is the mean over the step
        loss = losses.mean() / accumulation
        (scaler.scale(loss) if scaler else loss).backward()
        is_byte = targets.reshape(-1) < 256
        total += loss.detach()
        byte_nats += losses.detach()[is_byte].sum()
        byte_count += is_byte.sum()
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(total), float(byte_nats), int(byte_count))


@torch.no_grad()
def score_tokens(
    model,
    tokens: np.ndarray,
    block_size: int,
    stride: int,
    batch_size: int,
    setup: DeviceSetup,
    entropy: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per target: the loss in nats and (if asked) the entropy in bits of the next-token distribution.

    Target t (t = 1 .. n-1, output index t - 1) is predicted from the tokens before it. Windows of block_size
    inputs start every `stride` tokens; the first scores all its targets, each later one only its last
    `stride` targets, so every target is scored once, with at least block_size - stride tokens of context
    (fewer only near the start). stride = block_size: non-overlapping windows (the training evaluation).
    """
    n = len(tokens)
    nll = np.zeros(max(n - 1, 0), dtype=np.float32)
    ent = np.zeros_like(nll) if entropy else None
    if n < 2:
        return nll, ent
    windows = []  # (begin, first target scored)
    begin = 0
    while True:
        windows.append((begin, 1 if begin == 0 else begin + block_size - stride + 1))
        if begin + block_size >= n - 1:
            break
        begin += stride
    model.eval()
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        inputs = np.full((len(group), block_size), PAD, dtype=np.int64)
        for row, (b, _) in enumerate(group):
            chunk = tokens[b : min(b + block_size, n - 1)]
            inputs[row, : len(chunk)] = chunk
        input_ids = torch.from_numpy(inputs).to(setup.device)
        # only the stream's last windows are padded; a mask there keeps transformers from warning about it
        mask = (input_ids != PAD).long() if (inputs == PAD).any() else None
        with autocast(setup):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if entropy:
            bits = (-(log_probs.exp() * log_probs).sum(-1) / LN2).cpu().numpy()
        log_probs = log_probs.cpu().numpy()
        for row, (b, first) in enumerate(group):
            last = min(b + block_size, n - 1)  # last target of this window
            targets = np.arange(first, last + 1)
            columns = targets - b - 1  # the input position that predicts target t is t - 1
            nll[targets - 1] = -log_probs[row, columns, np.asarray(tokens[targets], dtype=np.int64)]
            if entropy:
                ent[targets - 1] = bits[row, columns]
    return nll, ent


def evaluate(model, data: ByteData, cfg: dict, setup: DeviceSetup) -> dict:
    """eval_loss (nats per target token) and eval_bits_per_byte over the whole stream, non-overlapping."""
    tokens = np.asarray(data.tokens)
    nll, _ = score_tokens(
        model, tokens, cfg["block_size"], cfg["block_size"], cfg["batch_size"], setup, False
    )
    is_byte = tokens[1:] < 256
    return {
        "eval_loss": float(nll.mean()),
        "eval_bits_per_byte": float(nll[is_byte].sum() / LN2 / max(int(is_byte.sum()), 1)),
    }


# ---------------------------------------------------------------- run folders


def read_blt_run_info(run_dir: Path) -> dict:
    return read_run_info(
        run_dir,
        kind="byte-level model run",
        fix="pass a folder written by main_trainer.py with model_type blt (models/blt/<run_id>).",
    )


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            steps.append(int(suffix))
    return sorted(steps)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, scaler, state: dict) -> Path:
    """checkpoints/checkpoint-<step>, written whole (lib.common.runs.replace_in_run); older ones pruned."""
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{step}"
    if final.is_dir():
        return final
    with replace_in_run(run_dir, f"checkpoints/{final.name}") as tmp:
        model.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "training_state.pt",
        )
        write_json_atomic(tmp / "trainer_state.json", state)
    for old in checkpoint_steps(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(folder / f"checkpoint-{old}", ignore_errors=True)
    return final


def _check_resumable(run_dir: Path, cfg: dict) -> None:
    """A resumed run must have the model shape its checkpoints were saved with."""
    try:
        before = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    changed = [k for k in MODEL_SHAPE_KEYS if k in before and before[k] != cfg[k]]
    if changed:
        diffs = ", ".join(f"{k} {before[k]} -> {cfg[k]}" for k in changed)
        raise UsageError(
            f"cannot resume {run_dir}: the model shape changed since it started ({diffs}).",
            fix="resume with the run's own config (its config.json), or start a new run without --resume.",
        )


# ---------------------------------------------------------------- training


def train_blt(cfg: dict, argv: Sequence[str], resume: bool = False) -> int:
    """Train (or resume) a byte-level entropy model from a resolved blt config; 0 done, 130 stopped."""
    check_config(cfg)
    output_dir = repo_path(cfg["output_dir"])
    check_writable_folder(
        output_dir,
        "output_dir",
        fix="set output_dir to a folder (it is created if missing), e.g. output_dir=models/blt.",
    )
    ensure_default_corpus(cfg["train_data_dir"], cfg["eval_data_dir"])
    train_data = load_byte_data(cfg["train_data_dir"], cfg["cache_dir"], "train_data_dir")
    eval_data = load_byte_data(cfg["eval_data_dir"], cfg["cache_dir"], "eval_data_dir")
    if train_data.n_tokens < cfg["block_size"] + 1:
        raise UsageError(
            f"train_data_dir: {train_data.directory} holds {train_data.n_bytes} bytes, fewer than one training "
            f"window of block_size + 1 = {cfg['block_size'] + 1} tokens (BOS and EOS count).",
            fix="add text, or lower block_size.",
        )
    if cfg["warmup_steps"] >= cfg["max_steps"]:
        log.warning(
            "warmup_steps=%d >= max_steps=%d: the learning rate never reaches learning_rate=%g",
            cfg["warmup_steps"],
            cfg["max_steps"],
            cfg["learning_rate"],
        )
    quiet_transformers()
    setup = setup_device(settings_from_config(cfg))
    print(setup.summary())
    if cfg["mixed_precision"] and setup.device != "cuda":
        log.warning("mixed_precision=true is used on CUDA only: training in fp32 on %s", setup.device)

    run_id = cfg["run_id"] or (newest_run(output_dir) if resume else new_run_id())
    run_dir = output_dir / run_id
    with run_lock(run_dir):
        return _start_or_resume(cfg, setup, run_dir, train_data, eval_data, argv, resume)


def _start_or_resume(
    cfg: dict,
    setup: DeviceSetup,
    run_dir: Path,
    train_data: ByteData,
    eval_data: ByteData,
    argv: Sequence[str],
    resume: bool,
) -> int:
    """train_blt under the run's lock: refuse, keep a completed run, or start / resume it."""
    checkpoint = None
    status = check_existing_run(run_dir, resume, kind="byte-level model run")
    if status == "completed":
        print(f"run {run_dir} already completed: kept")
        return EXIT_OK
    if status is not None:
        _check_resumable(run_dir, cfg)
        steps = checkpoint_steps(run_dir)
        checkpoint = run_dir / "checkpoints" / f"checkpoint-{steps[-1]}" if steps else None
        log.info("resuming %s from %s", run_dir, checkpoint or "the start (no checkpoint yet)")
    fields = {
        "model_type": "blt",
        "device": setup.summary(),
        "train_data_dir": str(train_data.directory),
        "eval_data_dir": str(eval_data.directory),
        "train_files": len(train_data.files),
        "train_bytes": train_data.n_bytes,
        "eval_files": len(eval_data.files),
        "eval_bytes": eval_data.n_bytes,
    }
    start_run_folder(run_dir, cfg, argv, fields)
    try:
        return _train(cfg, setup, run_dir, train_data, eval_data, checkpoint)
    except Exception as exc:  # any failure: run_info.json says so (a second Ctrl-C leaves it 'running')
        located = name_the_folder(exc, run_dir)  # a full disk's error may not say where
        mark_failed(run_dir, located)
        if located is exc:
            raise
        raise located from exc


def _train(
    cfg: dict, setup: DeviceSetup, run_dir: Path, train_data: ByteData, eval_data: ByteData, checkpoint
) -> int:
    from transformers import GPT2LMHeadModel

    device = setup.device
    if checkpoint:
        model = GPT2LMHeadModel.from_pretrained(checkpoint).to(device)
    else:
        model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if setup.device == "cuda" and setup.precision == "fp16" else None
    state = {"global_step": 0, "log_history": [], "train_seconds": 0.0, "bytes_seen": 0}
    if checkpoint:
        saved = torch.load(checkpoint / "training_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"].cpu())
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    history = state["log_history"]
    step = state["global_step"]
    parameters = count_parameters(model)
    log.info(
        "byte model: %d parameters, %d train bytes, %d eval bytes, step %d of %d",
        parameters,
        train_data.n_bytes,
        eval_data.n_bytes,
        step,
        cfg["max_steps"],
    )
    tokens_per_step = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]

    def record_eval() -> None:
        result = evaluate(model, eval_data, cfg, setup)
        history.append({"step": step, **result})
        log.info(
            "step %d eval: loss %.4f, %.3f bits per byte",
            step,
            result["eval_loss"],
            result["eval_bits_per_byte"],
        )

    def checkpoint_now() -> None:
        state.update(global_step=step, log_history=history)
        save_checkpoint(run_dir, step, model, optimizer, scheduler, scaler, state)
        write_json_atomic(run_dir / "log_history.json", history)

    if step == 0:
        record_eval()  # the starting point: about log2(259) = 8.02 bits per byte for an untrained model
    window = {"loss": 0.0, "byte_nats": 0.0, "byte_count": 0, "steps": 0, "seconds": 0.0}
    stopped_by = None
    with StopOnSignal() as stop:
        loader = iter(batch_loader(train_data, cfg, step, device))
        while step < cfg["max_steps"]:
            started = time.perf_counter()
            batch = next(loader)
            result = train_step(model, batch, optimizer, scheduler, scaler, setup)
            seconds = time.perf_counter() - started
            step += 1
            state["train_seconds"] += seconds
            state["bytes_seen"] += tokens_per_step
            window["loss"] += result.loss
            window["byte_nats"] += result.byte_nats
            window["byte_count"] += result.byte_count
            window["steps"] += 1
            window["seconds"] += seconds
            if step % cfg["log_steps"] == 0 or step == cfg["max_steps"]:
                entry = {
                    "step": step,
                    "loss": window["loss"] / window["steps"],
                    "bits_per_byte": window["byte_nats"] / LN2 / max(window["byte_count"], 1),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "bytes_per_second": window["steps"] * tokens_per_step / window["seconds"],
                }
                history.append(entry)
                log.info(
                    "step %d/%d: loss %.4f, %.3f bits per byte, lr %.3g, %.0f bytes/s",
                    step,
                    cfg["max_steps"],
                    entry["loss"],
                    entry["bits_per_byte"],
                    entry["learning_rate"],
                    entry["bytes_per_second"],
                )
                window = dict.fromkeys(window, 0)
            if step % cfg["eval_steps"] == 0 or step == cfg["max_steps"]:
                record_eval()
            if stop.signal_name:
                stopped_by = stop.signal_name
                checkpoint_now()
                break
            if step % cfg["save_steps"] == 0:
                checkpoint_now()
        del loader  # shuts DataLoader workers down

    state.update(global_step=step, log_history=history)
    write_json_atomic(run_dir / "log_history.json", history)
    write_json_atomic(run_dir / "trainer_state.json", state)
    if stopped_by:
        mark_interrupted(run_dir, stopped_by, step)
        print(
            f"stopped: run {run_dir} saved a checkpoint at step {step}; continue with --resume run_id={run_dir.name}"
        )
        return EXIT_INTERRUPTED

    with replace_in_run(run_dir, "model") as tmp:  # only inside a run folder of ours (lib.common.runs)
        model.save_pretrained(tmp)
    last_eval = next(h for h in reversed(history) if "eval_bits_per_byte" in h)
    metrics = {
        "global_step": step,
        "eval_loss": last_eval["eval_loss"],
        "eval_bits_per_byte": last_eval["eval_bits_per_byte"],
        "train_loss": mean_of_last(history, "loss"),
        "train_bits_per_byte": mean_of_last(history, "bits_per_byte"),
        "parameters": parameters,
        "train_bytes": train_data.n_bytes,
        "eval_bytes": eval_data.n_bytes,
        "bytes_seen": state["bytes_seen"],
        "train_bytes_per_second": state["bytes_seen"] / state["train_seconds"]
        if state["train_seconds"]
        else None,
        "device": setup.device,
        "precision": setup.precision,
    }
    mark_completed(run_dir, step, metrics)
    print(
        f"blt run completed: {run_dir} (step {step}, eval {metrics['eval_bits_per_byte']:.3f} bits per byte)"
    )
    return EXIT_OK
