"""Shared test set-up: the repo root, a subprocess helper, and the `gpu` marker's skip rule."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repo root the way a user would, capturing its output as text."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **kwargs.pop("env", {})}
    cwd = kwargs.pop("cwd", ROOT)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def run_python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, *args], **kwargs)


def load_script(name: str):
    """A script under scripts/ as a module (scripts/ is not a package), for in-process tests."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # no need to pay for importing torch
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)
