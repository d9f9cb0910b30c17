"""How fast a model trains against what this machine can do (`make bench-train`,
scripts/bench/scratch_training.py): the matmul FLOP/s torch reaches here, and the FLOPs one training step
spends per token, counted by torch's FlopCounterMode (matmuls and attention, forward and backward).

    flops = training_flops_per_token(model, batch)          # ~6 x parameters + attention, for a Llama
    limit = matmul_gflops(2048, 2048, 2048)                  # GFLOP/s, fp32
    utilisation = flops * tokens_per_s / (limit * 1e9)

Elementwise work (norms, rotary embeddings, activations, the optimiser) costs time but no counted FLOPs, so
a model made of small matrices sits well below the matmul limit even when nothing is wasted.
"""

from __future__ import annotations

import time


def matmul_gflops(m: int, k: int, n: int, dtype: str = "float32", repeats: int = 5) -> float:
    """GFLOP/s of torch's (m x k) @ (k x n) matmul on the CPU in `dtype`: the best of `repeats` timed calls
    after one untimed call (2 m k n FLOPs each). The best, not the mean: a shared machine only slows a call
    down, so the fastest is the closest to what the hardware does."""
    import torch

    kind = getattr(torch, dtype)
    a, b = torch.randn(m, k).to(kind), torch.randn(k, n).to(kind)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def training_flops_per_token(model, batch: dict) -> float:
    """FLOPs of one forward and backward pass of `model` on `batch` (input_ids, attention_mask, labels), per
    token the attention mask keeps (padding is spent but does not count as a token trained on).

    Counted with the eager attention (the same products, as batched matmuls): FlopCounterMode has no formula
    for the CPU's fused SDPA kernel and would count attention as free. The model's own setting is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(**batch).loss.backward()
    finally:
        model.set_attn_implementation(attention)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / int(batch["attention_mask"].sum())
