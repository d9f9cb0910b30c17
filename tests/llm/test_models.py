"""Model names: the embedded SmolLM2 (from its wheel), local folders, hub names, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.common.errors import UsageError
from lib.llm.models import embedded_gguf_path, resolve_model_name


def test_the_embedded_gguf_is_installed_by_make_install():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 90_000_000


def test_local_folders_and_hub_names(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_name(str(tmp_path)) == str(tmp_path)
    assert resolve_model_name("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    with pytest.raises(UsageError, match="has no config.json"):
        resolve_model_name(str(tmp_path.parent))
    with pytest.raises(UsageError, match="model folder not found"):
        resolve_model_name("./no/such/model")


@pytest.mark.slow
def test_embedded_model_converts_once_and_answers(tmp_path, monkeypatch):
    """About 30 s and 520 MB: dequantise the GGUF into a plain folder, reload it, and ask it something."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("CONTROL_LLM_CACHE", str(tmp_path))
    path = resolve_model_name("embedded")
    assert (
        path.startswith(str(tmp_path)) and resolve_model_name("embedded") == path
    )  # the second call reuses it
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2? Answer briefly."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "4" in answer


def test_scratch_builds_once_per_corpus_and_refuses_lora(tmp_path, monkeypatch):
    from lib.common.config import load_schema, schema_defaults
    from lib.llm.models import start_model_name

    monkeypatch.setenv("CONTROL_LLM_CACHE", str(tmp_path))
    cfg = schema_defaults(load_schema("control"))
    cfg["model"]["name"] = "scratch"
    cfg["model"]["scratch"].update(hidden_size=16, layers=1, heads=2, vocab_size=300)
    with pytest.raises(UsageError, match="LoRA adapters alone cannot train"):
        start_model_name(cfg, ["x_0 = (0.10, -0.20)"])
    cfg["model"]["lora"]["enabled"] = False
    corpus = ["x_0 = (0.10, -0.20)", "<REASONING></REASONING><CONTROLS>0.12, -0.30</CONTROLS>"]
    first = start_model_name(cfg, corpus)
    assert first.startswith(str(tmp_path / "scratch")) and start_model_name(cfg, corpus) == first  # cached
    assert start_model_name(cfg, [*corpus, "another record"]) != first  # other records, other tokenizer
    config = json.loads((Path(first) / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (16, 1)
    with pytest.raises(UsageError, match="built from random weights"):
        resolve_model_name("scratch")  # nothing to load by that name (main_eval gets the run instead)
