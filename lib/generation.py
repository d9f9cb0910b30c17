"""Batched generation with `model.generate` (the path on every device; vLLM is the CUDA accelerator)."""

from __future__ import annotations


def generate_completions(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """The assistant's text for each chat prompt: greedy when temperature is 0, else sampled (seeded)."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only models continue from the right end of each row
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    completions: list[str] = []
    model.eval()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        with torch.no_grad():
            ids = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        completions += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions
