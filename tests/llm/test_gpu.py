"""The CUDA paths on a real GPU (skipped elsewhere: the `gpu` marker, see conftest.py).

Run with `make test-slow` (or `pytest -m gpu`) on a CUDA machine. They use the tiny test model, so they need
no download: bf16 is picked on capable GPUs, SFT and GRPO train in bf16, and main_eval generates on the GPU.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import call_script, make_dataset, read_records, tiny_model_on

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    tiny_model_on(root / "tiny", read_records(make_dataset(root, "di", ["double_integrator"], 8, 4), "train"))
    return root


def test_cuda_setup_picks_bf16_on_a_capable_gpu():
    import torch

    from lib.common.config import resolve_config
    from lib.common.device import settings_from_config, setup_device

    setup = setup_device(settings_from_config(resolve_config("configs/profiles/cuda.yaml")))
    assert setup.device == "cuda"
    assert setup.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


def test_sft_then_grpo_train_on_the_gpu(workspace):
    argv = ["--config", "configs/profiles/cuda.yaml", f"model.name={workspace / 'tiny'}", "model.max_seq_length=2048",
            "data.dataset_name=di", f"data.datasets_dir={workspace / 'datasets'}", f"run.models_dir={workspace / 'models'}",
            "data.eval_max_samples=2", "sft.per_device_train_batch_size=2", "sft.max_steps=2", "sft.logging_steps=1",
            "grpo.max_steps=2", "grpo.per_device_train_batch_size=4", "grpo.num_generations=2",
            "grpo.max_completion_length=16", "training_type=both", "run.run_id=g1"]  # fmt: skip
    assert call_script("main_trainer", argv) == 0
    for stage in ("sft", "grpo"):
        info = json.loads((workspace / "models/universal" / stage / "g1/run_info.json").read_text())
        assert info["status"] == "completed" and info["device"].startswith("device=cuda")
    history = json.loads((workspace / "models/universal/sft/g1/log_history.json").read_text())
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)


def test_main_eval_generates_on_the_gpu(workspace, tmp_path):
    argv = ["--model-path", str(workspace / "tiny"), "--dataset", "di", "--num-samples", "4", "--max-new-tokens", "8",
            "--output-dir", str(tmp_path), f"data.datasets_dir={workspace / 'datasets'}", "device.type=cuda",
            "device.vllm=off"]  # fmt: skip
    assert call_script("main_eval", argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["models"]["tiny"]["summary"]["all"]["samples"] == 4
