"""The byte-level entropy model itself: transformers' GPT-2 architecture over bytes, trained from scratch
(vocabulary in lib/blt/data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lib.blt.data import BOS, EOS, PAD, VOCAB_SIZE
from lib.common.errors import UsageError

MODEL_SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "block_size")


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
