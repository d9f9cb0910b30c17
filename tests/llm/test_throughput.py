"""lib/llm/throughput.py: the FLOPs a training step spends per token, against the arithmetic of a Llama."""

from __future__ import annotations

from helpers import one_thread  # noqa: F401  (module fixture: torch on one thread)


def test_training_flops_per_token_is_six_per_matmul_weight_plus_attention(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from lib.llm.models import build_tiny_model
    from lib.llm.throughput import training_flops_per_token

    folder = build_tiny_model(tmp_path / "m", ["u = 0.12, -0.5", "x_0 = (1, 2)"], hidden_size=32, layers=2)
    model = AutoModelForCausalLM.from_pretrained(folder)
    c = model.config
    batch, length = 3, 20
    ids = torch.randint(3, c.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = (
        2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.intermediate_size
    )
    matmul_weights = (
        c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    )  # + the (tied) output head
    # forward 2 FLOPs per weight per token, backward 4 (input and weight gradients); attention's two
    # (length x length) products cost 2 x 2 x length x hidden a token a layer forward, twice that backward
    expected = 6 * matmul_weights + 12 * c.num_hidden_layers * length * c.hidden_size
    got = training_flops_per_token(model, {"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert abs(got - expected) / expected < 1e-4  # plus a few FLOPs of the rotary frequencies
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradient behind

    mask[:, length // 2 :] = 0  # half of every row padding: the same work over half the tokens
    padded = training_flops_per_token(model, {"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert abs(padded - 2 * expected) / expected < 1e-4


def test_matmul_gflops_counts_two_flops_per_multiply_add():
    from lib.llm.throughput import matmul_gflops

    assert 0.01 < matmul_gflops(64, 64, 64, repeats=2) < 10_000
