"""Batched generation: `model.generate` on every device, vLLM on CUDA when it is installed (docs/ARCHITECTURE.md, "Device and backends")."""

from __future__ import annotations

import sys
from collections.abc import Callable


def generate_completions(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """The assistant's text for each chat prompt: greedy when temperature is 0, else sampled (seeded).

    Prompts are batched longest first, so each left-padded batch holds prompts of similar length (less
    padding to compute), and the answers come back in the prompts' order. The batches depend only on the
    prompts and batch_size, so the same call gives the same greedy answers.
    """
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"  # decoder-only models continue from the right end of each row
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    completions: list[str] = [""] * len(texts)
    model.eval()
    bar = tqdm(total=len(texts), unit="answer", file=sys.stderr, disable=not progress or None)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        with torch.no_grad():
            ids = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        decoded = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(rows, decoded, strict=True):
            completions[i] = text
        bar.update(len(rows))
    bar.close()
    return completions


def vllm_generator(
    model_dir: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    gpu_memory_utilization: float = 0.8,
) -> Callable[[list[list[dict]]], list[str]]:
    """prompts -> answers through vLLM (CUDA only), the engine built once and reused for every call (MPC
    re-plans call it again and again); vLLM schedules the batches itself.

    model_dir must be a plain (merged) transformers folder: vLLM cannot load our LoRA run chains.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, seed=seed, gpu_memory_utilization=gpu_memory_utilization)
    # the engine's seed makes a run repeatable; a per-request seed would give every copy of one prompt the same
    # sample (vllm-project/vllm #3333, #7808), so best-of-k and pass@k would see k identical answers
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature)

    def generate(prompts: list[list[dict]]) -> list[str]:
        return [output.outputs[0].text for output in llm.chat(prompts, params, use_tqdm=True)]

    return generate
