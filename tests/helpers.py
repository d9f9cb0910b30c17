"""What the tests share: the repo root, running commands as a user would, calling a script's main in-process,
and the small dataset + tiny model that the training, evaluation and pipeline tests run on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from lib.common.errors import run_cli

ROOT = Path(__file__).resolve().parent.parent
# Tests wait on events (a file appears, a process ends), never on speed: a machine 3x slower or busy with
# other jobs must pass too. This limit only stops a test that hangs.
HANG_GUARD_S = 3600


def run(args: list[str], timeout: float = HANG_GUARD_S, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repo root the way a user would, capturing its output as text."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **kwargs.pop("env", {})}
    cwd = kwargs.pop("cwd", ROOT)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def run_python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, *args], **kwargs)


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package), for in-process tests; `name` may name a
    sub-folder: load_script("bench/rewards") is scripts/bench/rewards.py, module "bench.rewards"."""
    module_name = name.replace("/", ".")
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def call_script(name: str, argv: Sequence[str]) -> int:
    """scripts/<name>.py's main(argv) in this process, through run_cli: the exit code a user would get."""
    return run_cli(load_script(name).main, list(argv))


def make_dataset(root: Path, name: str, systems: Sequence[str], train: int, eval: int, *extra: str) -> Path:
    """datasets/<name> under root, made by generate_data.py (train and eval records spread over systems)."""
    argv = ["--systems", *systems, "--train-samples", str(train), "--eval-samples", str(eval),
            "--dataset-name", name, "--output-dir", str(root / "datasets"), *extra]  # fmt: skip
    assert load_script("generate_data").main(argv) == 0
    return root / "datasets" / name


def read_records(dataset: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (dataset / f"{split}.jsonl").read_text().splitlines()]


def tiny_model_on(dest: Path, records: Sequence[dict]) -> Path:
    """A tiny random Llama whose tokenizer is trained on the records' text (lib.llm.models.build_tiny_model)."""
    from lib.llm.models import build_tiny_model
    from lib.llm.stages import record_texts

    return build_tiny_model(dest, record_texts(records))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread for a test module: on two shared cores a second thread mostly waits. A module
    that imports it (`from helpers import one_thread`) gets it for all its tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
