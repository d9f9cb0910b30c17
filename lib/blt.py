"""The byte-level entropy model: the entropy estimator of the Byte Latent Transformer (DESIGN.md 12).

A small causal transformer (transformers' GPT-2 architecture, trained from scratch) predicts the next byte.
Where its next-byte entropy is high a new "patch" begins (lib/blt_analysis.py measures that). Trained by
`main_trainer.py` with a `model_type: blt` config (schemas/blt.schema.json).

Vocabulary: the 256 byte values are their own ids, then three specials: PAD = 256 (fills a short evaluation
window, never a target), BOS = 257 (starts every file), EOS = 258 (ends every file). Bits per byte count
byte targets only; the training loss also counts EOS and BOS (the model learns where files end).

Data policy: every regular file under the folder (recursively, in sorted path order) is read raw, as bytes:
nothing is decoded, so UTF-8, Latin-1 and binary files all train as they are and a non-UTF-8 file is neither
an error nor altered (bytes are bytes). Names starting with a dot (.DS_Store, .git/) are skipped. A missing
folder, or one without any non-empty file, is a UsageError.

Cache: the token stream of a folder (BOS, the file's bytes, EOS, file after file) is stored once as a uint16
.npy under `cache_dir`, named by a hash of the folder, the files' relative names, sizes and modification
times; any change makes a new file. Read back with np.load(mmap_mode="r") (never pickle).

Run folder, like the control model's (lib/training.py):
    <output_dir>/<run_id>/
        config.json  command.txt  run_info.json  log_history.json  metrics.json  trainer_state.json
        checkpoints/checkpoint-N/   model (safetensors), training_state.pt, trainer_state.json
        model/                      the final model (save_pretrained), written at the end
    <output_dir>/latest             the run_id of the last COMPLETED run (written only after it completes)
SIGTERM (SLURM preemption) or Ctrl-C saves a checkpoint at the end of the current step and exits 130;
`--resume` continues the newest run (or `run_id`) from its last checkpoint with the same batches.

Usage (the default corpus; training itself is `make train-mps` / `scripts/main_trainer.py`):
    python -m lib.blt corpus [--output data/blt_corpus] [--overwrite]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.atomic import write_json_atomic, write_text_atomic
from lib.config import ROOT, repo_path
from lib.device import DeviceSetup, settings_from_config, setup_device
from lib.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError, run_cli
from lib.training import (
    StopOnSignal,
    _git_commit,
    _mean_of_last,
    newest_run,
    package_versions,
    read_run_info,
)

log = logging.getLogger(__name__)

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
CACHE_FORMAT = 1  # bump when the layout of the cached stream changes
KEEP_CHECKPOINTS = 2  # resume needs only the newest; one more in case the newest's files are damaged later
MAX_GRAD_NORM = 1.0  # gradient clipping, as transformers' Trainer does by default
LN2 = math.log(2.0)

DEFAULT_CORPUS = Path("data/blt_corpus")  # relative to the repository root; gitignored, built on first use
CORPUS_SEED = 0
CORPUS_TRAIN_PROBLEM_BYTES = 90_000  # problem statements in train/ (~1.3 KB each, systems taken in turn)
CORPUS_EVAL_PROBLEM_BYTES = 12_000  # in eval/, for initial states train/ does not use
CORPUS_STATES = 64  # initial states drawn per system: train takes them from the front, eval from the back
MODEL_SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "block_size")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ByteData:
    """A folder's files as one token stream: BOS, bytes, EOS for each file, in `files` order."""

    directory: Path
    files: tuple[str, ...]  # relative paths
    sizes: tuple[int, ...]  # bytes per file
    tokens: np.ndarray  # uint16 [n_tokens], memory-mapped from the cache
    cache_path: Path

    @property
    def n_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def document_spans(self) -> list[tuple[str, int, int]]:
        """(file, first stream index of its bytes, number of bytes) for each file."""
        spans, start = [], 0
        for name, size in zip(self.files, self.sizes, strict=True):
            spans.append((name, start + 1, size))  # + 1: the BOS before the bytes
            start += size + 2
        return spans


def data_files(directory: Path, key: str) -> list[Path]:
    """Every regular file under `directory` (recursively, sorted), skipping names that start with a dot."""
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise UsageError(
            f"{key}: {directory} {what}.",
            fix=f"set {key} to a folder of text files (e.g. {key}=path/to/texts), or leave it at its default "
            f"({DEFAULT_CORPUS}/...) to use the corpus built from this project's own text.",
        )
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    if not any(p.stat().st_size for p in files):
        found = f"only empty files ({len(files)})" if files else "no files"
        raise UsageError(
            f"{key}: {directory} holds {found}; there is nothing to train or evaluate on.",
            fix=f"put text files (any encoding: they are read as raw bytes) under {directory}, or point {key} "
            "at another folder.",
        )
    return files


def _cache_name(directory: Path, files: Sequence[Path], stats: Sequence[os.stat_result]) -> str:
    listing = [
        [str(f.relative_to(directory)), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats, strict=True)
    ]
    text = json.dumps([CACHE_FORMAT, str(directory.resolve()), listing])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_byte_data(directory: str | Path, cache_dir: str | Path, key: str) -> ByteData:
    """The token stream of every file under `directory`, from the cache or built (and cached) now."""
    directory = repo_path(directory)
    files = data_files(directory, key)
    stats = [f.stat() for f in files]
    sizes = tuple(s.st_size for s in stats)
    n_tokens = sum(sizes) + 2 * len(files)
    cache_root = repo_path(cache_dir)
    cache_path = cache_root / f"{directory.name or 'data'}-{_cache_name(directory, files, stats)}.npy"
    tokens = None
    if cache_path.is_file():
        tokens = np.load(cache_path, mmap_mode="r", allow_pickle=False)
        if tokens.dtype != np.uint16 or tokens.shape != (n_tokens,):
            log.warning("cache %s does not match its files: rebuilding it", cache_path)
            tokens = None
    if tokens is None:
        stream = np.empty(n_tokens, dtype=np.uint16)
        at = 0
        for path, size in zip(files, sizes, strict=True):
            raw = path.read_bytes()
            if len(raw) != size:
                raise UsageError(
                    f"{path} changed while it was being read ({size} bytes listed, {len(raw)} read).",
                    fix="run again once the files under the data folder stop changing.",
                )
            stream[at] = BOS
            stream[at + 1 : at + 1 + size] = np.frombuffer(raw, dtype=np.uint8)
            stream[at + 1 + size] = EOS
            at += size + 2
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, stream, allow_pickle=False)
        os.replace(tmp, cache_path)
        log.info("cached %d files (%d bytes) of %s in %s", len(files), sum(sizes), directory, cache_path)
        tokens = np.load(cache_path, mmap_mode="r", allow_pickle=False)
    names = tuple(str(f.relative_to(directory)) for f in files)
    return ByteData(directory, names, sizes, tokens, cache_path)


# ---------------------------------------------------------------- the default corpus


def _docstrings(folder: Path) -> str:
    parts = []
    for path in sorted(folder.glob("*.py")):
        text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if text:
            parts.append(f"# {path.relative_to(ROOT)}\n\n{text}\n")
    return "\n".join(parts)


def _problem_statements(budget: int, from_back: bool) -> str:
    """Problem statements (lib.answer.build_prompt), one system after the other, until `budget` bytes."""
    from lib.answer import build_prompt
    from lib.dataset import sample_initial_states
    from lib.systems import SYSTEMS

    states = {name: sample_initial_states(s, CORPUS_STATES, CORPUS_SEED) for name, s in SYSTEMS.items()}
    texts, size = [], 0
    for k in range(CORPUS_STATES // 2):  # at most half of the states each, so train and eval never share one
        for name, system in SYSTEMS.items():
            x0 = states[name][CORPUS_STATES - 1 - k if from_back else k]
            text = "\n\n".join(m["content"] for m in build_prompt(system, x0)) + "\n"
            if size + len(text) > budget:
                return "\n".join(texts)
            texts.append(text)
            size += len(text) + 1
    return "\n".join(texts)


def build_default_corpus(output: str | Path = DEFAULT_CORPUS, overwrite: bool = False) -> Path:
    """Write the demo corpus from this project's own text: `<output>/{train,eval}/` and info.json.

    train/: README.md, the module docstrings of lib/ and scripts/, and about CORPUS_TRAIN_PROBLEM_BYTES of
    problem statements (lib.answer.build_prompt). eval/: CLAUDE.md and about CORPUS_EVAL_PROBLEM_BYTES of
    statements for other initial states. About 160 KB in all. The folder is built under a temporary name and renamed, so it is
    complete or absent.
    """
    output = repo_path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists.", fix="pass --overwrite to rebuild it.")
    sources = {
        "train/readme.md": (ROOT / "README.md").read_text(encoding="utf-8"),
        "train/docstrings_lib.txt": _docstrings(ROOT / "lib"),
        "train/docstrings_scripts.txt": _docstrings(ROOT / "scripts"),
        "train/problems.txt": _problem_statements(CORPUS_TRAIN_PROBLEM_BYTES, from_back=False),
        "eval/claude.md": (ROOT / "CLAUDE.md").read_text(encoding="utf-8"),
        "eval/problems.txt": _problem_statements(CORPUS_EVAL_PROBLEM_BYTES, from_back=True),
    }
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "what": "the BLT demo corpus, built by lib.blt.build_default_corpus from this project's own text",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": _git_commit(),
        "seed": CORPUS_SEED,
        "files": {},
    }
    for name, text in sources.items():
        data = text.encode("utf-8")
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
        info["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, output)
    log.info("built the default corpus in %s (%d files)", output, len(sources))
    return output


def ensure_default_corpus(*directories: str | Path) -> None:
    """Build the default corpus when a configured data folder is inside it and it is missing."""
    corpus = repo_path(DEFAULT_CORPUS).resolve()
    for directory in directories:
        path = repo_path(directory).resolve()
        if (path == corpus or corpus in path.parents) and not corpus.exists():
            build_default_corpus(corpus)
            return


# ---------------------------------------------------------------- model


def check_config(cfg: dict) -> None:
    """What the schema cannot say about a blt config."""
    if cfg.get("model_type") != "blt":
        raise UsageError(
            f"expected a byte-level entropy model config (model_type: blt), got model_type "
            f"'{cfg.get('model_type')}'.",
            fix="pass a config from configs/blt/ (e.g. configs/blt/entropy_cpu.json).",
        )
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise UsageError(
            f"num_heads={cfg['num_heads']} does not divide hidden_size={cfg['hidden_size']}: each attention "
            "head gets hidden_size / num_heads dimensions.",
            fix="pick num_heads among the divisors of hidden_size (e.g. hidden_size=128 num_heads=4).",
        )


def model_config(cfg: dict):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=cfg["block_size"],
        n_embd=cfg["hidden_size"],
        n_layer=cfg["num_layers"],
        n_head=cfg["num_heads"],
        resid_pdrop=cfg["dropout"],
        embd_pdrop=cfg["dropout"],
        attn_pdrop=cfg["dropout"],
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def build_model(cfg: dict):
    """A randomly initialised GPT-2 over bytes (seeded by cfg['seed'])."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(cfg["seed"])
    return GPT2LMHeadModel(model_config(cfg))


def load_model(folder: Path, device: str):
    """A saved byte model (a run's model/ or a checkpoint), in eval mode on `device`."""
    from transformers import GPT2LMHeadModel

    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(
            f"{folder} holds no model (config.json missing or unreadable).",
            fix="pass a run folder of main_trainer.py with model_type blt (models/blt/<run_id>).",
        ) from None
    if config.get("model_type") != "gpt2" or config.get("vocab_size") != VOCAB_SIZE:
        raise UsageError(
            f"{folder} is not a byte-level entropy model (model_type {config.get('model_type')!r}, "
            f"vocabulary {config.get('vocab_size')}; expected gpt2 with {VOCAB_SIZE}).",
            fix="pass a model trained by main_trainer.py with model_type blt.",
        )
    return GPT2LMHeadModel.from_pretrained(folder).to(device).eval()


def quiet_transformers() -> None:
    """No progress bars for saving and loading a 2 MB model: they would drown the training log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


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
    """checkpoints/checkpoint-<step>, written under a temporary name and renamed; older ones pruned."""
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{step}"
    if final.is_dir():
        return final
    tmp = folder / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
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
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, final)
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


def _start_run(run_dir: Path, cfg: dict, argv: Sequence[str], setup: DeviceSetup, extra: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg)
    write_text_atomic(run_dir / "command.txt", " ".join(argv) + "\n")
    previous = read_blt_run_info(run_dir) if (run_dir / "run_info.json").is_file() else {}
    info = {
        "model_type": "blt",
        "run_id": run_dir.name,
        "status": "running",
        "started_at": previous.get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "resumed": previous.get("resumed", 0) + (1 if previous else 0),
        "git_commit": _git_commit(),
        "packages": package_versions(),
        "device": setup.summary(),
        **extra,
    }
    write_json_atomic(run_dir / "run_info.json", info)


# ---------------------------------------------------------------- training


def train_blt(cfg: dict, argv: Sequence[str], resume: bool = False) -> int:
    """Train (or resume) a byte-level entropy model from a resolved blt config; 0 done, 130 stopped."""
    check_config(cfg)
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

    output_dir = repo_path(cfg["output_dir"])
    run_id = cfg["run_id"] or (newest_run(output_dir) if resume else time.strftime("%Y%m%d-%H%M%S"))
    run_dir = output_dir / run_id
    checkpoint = None
    if (run_dir / "run_info.json").is_file():
        status = read_blt_run_info(run_dir).get("status")
        if not resume:
            raise UsageError(
                f"run {run_dir} already exists ({status}).",
                fix="pass --resume to continue it, or another run_id (run_id=NAME).",
            )
        if status == "completed":
            print(f"run {run_dir} already completed: kept")
            return EXIT_OK
        _check_resumable(run_dir, cfg)
        steps = checkpoint_steps(run_dir)
        checkpoint = run_dir / "checkpoints" / f"checkpoint-{steps[-1]}" if steps else None
        log.info("resuming %s from %s", run_dir, checkpoint or "the start (no checkpoint yet)")
    _start_run(
        run_dir,
        cfg,
        argv,
        setup,
        {
            "train_data_dir": str(train_data.directory),
            "eval_data_dir": str(eval_data.directory),
            "train_files": len(train_data.files),
            "train_bytes": train_data.n_bytes,
            "eval_files": len(eval_data.files),
            "eval_bytes": eval_data.n_bytes,
        },
    )
    return _train(cfg, setup, run_dir, train_data, eval_data, checkpoint)


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
    info = read_blt_run_info(run_dir)
    if stopped_by:
        info.update(status="interrupted", stopped_by=stopped_by, step=step)
        write_json_atomic(run_dir / "run_info.json", info)
        print(
            f"stopped: run {run_dir} saved a checkpoint at step {step}; continue with --resume run_id={run_dir.name}"
        )
        return EXIT_INTERRUPTED

    tmp = run_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    os.replace(tmp, run_dir / "model")
    last_eval = next(h for h in reversed(history) if "eval_bits_per_byte" in h)
    metrics = {
        "global_step": step,
        "eval_loss": last_eval["eval_loss"],
        "eval_bits_per_byte": last_eval["eval_bits_per_byte"],
        "train_loss": _mean_of_last(history, "loss"),
        "train_bits_per_byte": _mean_of_last(history, "bits_per_byte"),
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
    write_json_atomic(run_dir / "metrics.json", metrics)
    info.update(status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), step=step)
    write_json_atomic(run_dir / "run_info.json", info)
    write_text_atomic(run_dir.parent / "latest", run_dir.name + "\n")  # only now: `latest` is always complete
    print(
        f"blt run completed: {run_dir} (step {step}, eval {metrics['eval_bits_per_byte']:.3f} bits per byte)"
    )
    return EXIT_OK


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m lib.blt", description="The byte-level model's corpus.")
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="build the default corpus from this project's own text")
    corpus.add_argument("--output", default=str(DEFAULT_CORPUS), help=f"folder (default {DEFAULT_CORPUS})")
    corpus.add_argument("--overwrite", action="store_true", help="rebuild an existing corpus")
    args = parser.parse_args(argv)
    out = build_default_corpus(args.output, overwrite=args.overwrite)
    info = json.loads((out / "info.json").read_text())
    for name, entry in info["files"].items():
        print(f"{entry['bytes']:>8}  {out / name}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli(main))
