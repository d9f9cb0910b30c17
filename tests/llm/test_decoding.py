"""Expected-value decoding (lib.llm.generation.expected_value_completions) on a model whose distribution over
the first control is known exactly: a one-layer Llama wired as a bigram table (each next token depends on the
current token only), over a tokenizer trained on answers. Greedy writes the likeliest digit at each position;
the decoder must write the mean of the model's whole distribution over the number, signs included (the
tokenizer merges the minus sign into the <CONTROLS> token, as the from-scratch recipes' tokenizers do)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse fixture)

from lib.llm.generation import expected_value_completions, generate_completions
from lib.llm.models import build_tiny_model

HEAD = "<REASONING></REASONING><CONTROLS>"
PROMPT = [{"role": "system", "content": "double_integrator"}, {"role": "user", "content": "x_0 = (0.5, 0.1)"}]
# the model's distribution over the first control, as text -> next text -> probability
TABLE = {
    None: {HEAD: 0.75, HEAD + "-": 0.25},  # every token without a row of its own: the answer starts
    HEAD: {"0": 1.0},
    HEAD + "-": {"0": 1.0},
    "0": {".": 1.0},
    ".": {"3": 0.55, "7": 0.45},
    "3": {"3": 0.4, "7": 0.6},
    "7": {"3": 0.2, "7": 0.8},
}
# E[u_0] = (0.75 - 0.25) x (0.55 x (0.4 x 0.33 + 0.6 x 0.37) + 0.45 x (0.2 x 0.73 + 0.8 x 0.77)) = 0.2688
EXPECTED = 0.5 * (0.55 * (0.4 * 0.33 + 0.6 * 0.37) + 0.45 * (0.2 * 0.73 + 0.8 * 0.77))


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    """(model, tokenizer): a Llama whose one layer adds nothing (o_proj and down_proj zero), embeddings the
    identity, so the logits after token t are lm_head's column t: log TABLE[t] (the default row elsewhere)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    answers = [f"{HEAD}{sign}0.{d1}{d2}, 0.25</CONTROLS>" for sign in ("", "-") for d1 in "37" for d2 in "37"]
    folder = build_tiny_model(tmp_path_factory.mktemp("bigram") / "tok", answers * 40)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = {
        text: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        for row in TABLE.values()
        for text in row
    }
    assert all(len(v) == 1 for v in ids.values()), f"the test needs one token per entry: {ids}"
    vocab = len(tokenizer)
    hidden = vocab + vocab % 2  # rotary embeddings need an even head size
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    logp = torch.full((vocab, vocab), -30.0)  # [current, next]
    for current in range(vocab):
        text = tokenizer.decode([current])
        for nxt, p in TABLE.get(text, TABLE[None]).items():
            logp[current, ids[nxt][0]] = math.log(p)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        # after the final RMSNorm the one-hot embedding is sqrt(hidden) e_t
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :vocab] = logp.T / math.sqrt(hidden)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_greedy_writes_the_likeliest_digits_and_expected_value_decoding_writes_the_mean(bigram):
    model, tokenizer = bigram
    greedy = generate_completions(model, tokenizer, [PROMPT], max_new_tokens=6)[0]
    assert greedy.startswith(HEAD + "0.37")  # +, then 3 (0.55), then 7 (0.6): the mode digit by digit
    answer = expected_value_completions(model, tokenizer, [PROMPT, PROMPT], decimals=2, max_new_tokens=8)
    assert answer[0] == answer[1]  # deterministic, and the same in a batch
    assert answer[0].startswith(HEAD + f"{EXPECTED:.2f}")  # 0.27; without the minus sign's quarter, 0.54


def test_tokens_under_min_prob_are_left_out_and_the_rest_renormalised(bigram):
    """With min_prob 0.5 one path is left (+ 0.75, then 3 0.55, then 7 0.6): its value, greedy's."""
    model, tokenizer = bigram
    answer = expected_value_completions(model, tokenizer, [PROMPT], 2, 8, min_prob=0.5)[0]
    assert answer.startswith(HEAD + "0.37")


def test_the_mean_is_clipped_to_the_prompts_bounds_where_they_are_given(bigram):
    """A mean past a stated bound is written at the bound (the controls after it would follow it)."""
    model, tokenizer = bigram
    answers = expected_value_completions(model, tokenizer, [PROMPT, PROMPT], 2, 8, bounds=[(-0.2, 0.2), None])
    assert answers[0].startswith(HEAD + "0.20") and answers[1].startswith(HEAD + f"{EXPECTED:.2f}")


def test_a_prompt_no_record_holds_is_clipped_to_the_bounds_it_states_on_the_printed_grid(bigram):
    """main_eval's answerer reads the bounds from each prompt, so an MPC re-plan (a new state, no record's
    prompt) is clipped too; a bound off the 0.01 grid clips to the grid value inside it (0.2075 -> 0.20, where
    rounding the clipped mean would print 0.21, past the bound)."""
    from types import SimpleNamespace

    from lib.control.answer import build_prompt
    from lib.control.systems import get_system
    from lib.llm.evaluate import make_answerer

    model, tokenizer = bigram
    tight = dataclasses.replace(get_system("double_integrator_short"), u_min=-0.2075, u_max=0.2075)
    cfg = {"eval": {"decoding": "expected_value", "max_new_tokens": 8, "batch_size": 2}}
    records = [{"decimals": 2, "prompt": PROMPT}]  # the eval records: none holds the re-plan's prompt
    answer = make_answerer(model, tokenizer, SimpleNamespace(device="cpu", vllm=False), cfg, None, records)
    replan = build_prompt(tight, np.array([0.31, -0.02]), 2, "compact")
    clipped, free = answer([replan, PROMPT])
    assert clipped.startswith(HEAD + "0.20") and free.startswith(HEAD + f"{EXPECTED:.2f}")


@pytest.mark.parametrize("decoding, written", [("token", "0.37"), ("expected_value", f"{EXPECTED:.2f}")])
def test_the_watch_problems_are_answered_as_the_evaluation_decodes(bigram, decoding, written):
    """The learning curve logged during training (the control-metrics callback) decodes as eval.decoding
    says: under expected value its points are what the final evaluation will print, not greedy's."""
    from lib.llm.callbacks import watch_answerer

    model, tokenizer = bigram
    cfg = {"eval": {"decoding": decoding, "max_new_tokens": 8, "batch_size": 2}, "seed": 0}
    answer = watch_answerer(model, tokenizer, [{"decimals": 2, "prompt": PROMPT}], cfg)
    assert answer([PROMPT])[0].startswith(HEAD + written)
