"""Device decisions on a Mac, a GPU node and a CPU box, from their facts (no Mac or GPU needed)."""

from __future__ import annotations

import logging

import pytest

import lib.common.device as device_module
from lib.common.config import resolve_config
from lib.common.device import (
    HIGH_VAR,
    LOW_VAR,
    PlatformFacts,
    check_mps_watermarks,
    choose_device,
    cpu_has_bf16,
    probe_platform,
    settings_from_config,
    setup_device,
)
from lib.common.errors import UsageError

MAC = PlatformFacts(
    system="Darwin", machine="arm64", torch_version="2.13.0", mps_built=True, mps_available=True
)
INTEL_MAC = PlatformFacts(system="Darwin", machine="x86_64", torch_version="2.13.0")
LINUX_CPU = PlatformFacts(system="Linux", machine="x86_64", torch_version="2.13.0+cpu")
H100 = PlatformFacts(
    system="Linux",
    machine="x86_64",
    cuda_available=True,
    cuda_device_count=4,
    cuda_name="NVIDIA H100",
    cuda_bf16=True,
    unsloth_installed=True,
    vllm_installed=True,
)
V100_PLAIN = PlatformFacts(
    system="Linux",
    machine="x86_64",
    cuda_available=True,
    cuda_device_count=1,
    cuda_name="Tesla V100",
    cuda_bf16=False,
)


def settings(*overrides: str):
    """Settings as a user gets them: schema defaults plus `device.*` overrides."""
    return settings_from_config(resolve_config(None, [f"device.{o}" for o in overrides]))


def test_auto_picks_cuda_then_mps_then_cpu():
    assert choose_device(settings(), H100).device == "cuda"
    assert choose_device(settings(), MAC).device == "mps"
    assert choose_device(settings(), LINUX_CPU).device == "cpu"
    assert choose_device(settings(), LINUX_CPU).fallbacks == ()


def test_cuda_uses_bf16_and_the_accelerators_when_installed():
    setup = choose_device(settings(), H100)
    assert (setup.precision, setup.unsloth, setup.vllm, setup.device_count) == ("bf16", True, True, 4)
    assert setup.fallbacks == ()
    assert "device=cuda x4" in setup.summary() and "training=unsloth generation=vllm" in setup.summary()


def test_cuda_without_accelerators_falls_back_to_plain_path_with_reasons():
    setup = choose_device(settings(), V100_PLAIN)
    assert (setup.precision, setup.unsloth, setup.vllm) == ("fp16", False, False)
    assert any("unsloth not installed" in r for r in setup.fallbacks)
    assert any("vllm not installed" in r for r in setup.fallbacks)
    setup = choose_device(settings("precision=bf16"), V100_PLAIN)
    assert setup.precision == "fp16"
    assert any("Tesla V100 lacks bf16" in r for r in setup.fallbacks)


def test_required_backend_missing_is_a_usage_error():
    with pytest.raises(UsageError, match="unsloth is not installed"):
        choose_device(settings("unsloth=on"), V100_PLAIN)
    with pytest.raises(UsageError, match="vllm works only on CUDA"):
        choose_device(settings("vllm=on"), MAC)


def test_backends_are_never_used_off_cuda_even_if_importable():
    setup = choose_device(settings(), MAC)
    assert not setup.unsloth and not setup.vllm
    assert setup.summary().startswith(
        "device=mps precision=fp32 training=transformers+peft generation=generate"
    )


def test_mps_requested_on_linux_falls_back_to_cpu_and_says_why():
    setup = choose_device(settings("type=mps"), LINUX_CPU)
    assert setup.device == "cpu"
    assert setup.fallbacks == (
        "mps requested but not available (MPS exists only on macOS with Apple Silicon; this is Linux x86_64): "
        "using cpu",
    )
    assert "needs Apple Silicon" in choose_device(settings("type=mps"), INTEL_MAC).fallbacks[0]
    no_build = PlatformFacts(system="Darwin", machine="arm64", torch_version="2.13.0", mps_built=False)
    assert "built without MPS" in choose_device(settings("type=mps"), no_build).fallbacks[0]


def test_cuda_requested_on_a_mac_falls_back_to_mps():
    setup = choose_device(settings("type=cuda"), MAC)
    assert setup.device == "mps"
    assert "cuda requested but not available (torch sees no CUDA device)" in setup.fallbacks[0]


def test_force_cpu_wins_and_is_reported():
    setup = choose_device(settings("type=cuda", "force_cpu=true"), H100)
    assert (setup.device, setup.precision, setup.unsloth, setup.vllm) == ("cpu", "fp32", False, False)
    assert setup.fallbacks[0] == "force_cpu is set: CPU instead of cuda"


def test_precision_on_cpu_and_mps():
    setup = choose_device(settings("precision=bf16"), LINUX_CPU)
    assert setup.precision == "fp32" and "no bf16 instructions" in setup.fallbacks[0]
    sapphire_rapids = PlatformFacts(system="Linux", machine="x86_64", cpu_bf16=True)
    assert choose_device(settings("precision=bf16"), sapphire_rapids).precision == "bf16"
    setup = choose_device(settings("precision=fp16"), LINUX_CPU)
    assert setup.precision == "fp32" and "fp16 requested" in setup.fallbacks[0]
    assert choose_device(settings(), MAC).precision == "fp32"


def test_cpu_bf16_is_read_from_the_cpu_flags():
    epyc = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_has_bf16("Linux", "x86_64", epyc)
    assert cpu_has_bf16("Linux", "x86_64", sapphire)
    assert cpu_has_bf16("Linux", "aarch64", graviton3)
    assert not cpu_has_bf16("Linux", "aarch64", epyc.replace("flags", "Features"))
    assert not cpu_has_bf16("Windows", "AMD64", sapphire)


def test_mps_environment_sets_both_watermarks_and_the_cpu_fallback():
    setup = choose_device(settings("mps_high_watermark_ratio=1.2", "mps_low_watermark_ratio=0.5"), MAC)
    assert setup.env == {HIGH_VAR: "1.2", LOW_VAR: "0.5", "PYTORCH_ENABLE_MPS_FALLBACK": "1"}
    assert choose_device(settings(), LINUX_CPU).env == {}


@pytest.mark.parametrize(("high", "low"), [(0.8, 0.0), (0.0, 0.0), (2.0, 2.0), (1.7, 1.4)])
def test_valid_watermarks(high, low):
    check_mps_watermarks(high, low)


@pytest.mark.parametrize(("high", "low"), [(0.8, 1.4), (2.5, 0.0), (0.5, -0.1)])
def test_invalid_watermarks_explain_the_pytorch_error(high, low):
    with pytest.raises(UsageError) as info:
        check_mps_watermarks(high, low)
    assert "0 <= low <= high <= 2" in str(info.value)
    assert "invalid low watermark ratio" in str(info.value)
    assert "mps_low_watermark_ratio=0.0" in info.value.fix


def test_the_schema_blocks_out_of_range_watermarks_before_device_setup():
    from lib.common.errors import ConfigError

    with pytest.raises(ConfigError, match="mps_low_watermark_ratio"):
        resolve_config(None, ["device.mps_low_watermark_ratio=-1"])


def test_low_above_high_passes_the_schema_but_not_device_setup():
    cfg = resolve_config(None, ["device.mps_high_watermark_ratio=0.8", "device.mps_low_watermark_ratio=1.4"])
    with pytest.raises(UsageError, match="invalid"):
        choose_device(settings_from_config(cfg), LINUX_CPU)  # checked on every machine, not only on a Mac


def test_setup_on_a_mac_sets_the_environment_before_probing(monkeypatch, caplog):
    monkeypatch.setattr(device_module.platform, "system", lambda: "Darwin")
    environ = {LOW_VAR: "1.4"}  # a stale value left in the user's shell
    seen_at_probe = {}

    def probe():
        seen_at_probe.update(environ)  # what torch would see when it starts MPS
        return MAC

    monkeypatch.setattr(device_module, "probe_platform", probe)
    with caplog.at_level(logging.INFO):
        setup = setup_device(settings(), environ=environ)
    assert setup.device == "mps"
    assert seen_at_probe[HIGH_VAR] == "0.8" and seen_at_probe[LOW_VAR] == "0.0"
    assert "PYTORCH_MPS_LOW_WATERMARK_RATIO=1.4 from the environment replaced by 0.0" in caplog.text
    assert "device=mps precision=fp32" in caplog.text  # the one-line summary is logged


def test_setup_off_mac_leaves_the_environment_alone():
    environ: dict[str, str] = {}
    setup = setup_device(settings("type=mps"), environ=environ, facts=LINUX_CPU)
    assert environ == {} and setup.device == "cpu"


def test_blt_config_maps_to_device_settings():
    cfg = resolve_config(None, ["force_cpu=true", "mps_low_watermark_ratio=0.1"], schema_name="blt")
    s = settings_from_config(cfg)
    assert (s.force_cpu, s.precision, s.mps_low_watermark_ratio) == (True, "fp32", 0.1)
    assert choose_device(s, MAC).device == "cpu"


def test_probe_of_this_machine_agrees_with_torch():
    import torch

    facts = probe_platform()
    assert facts.cuda_available == torch.cuda.is_available()
    assert facts.torch_version == torch.__version__
    if not facts.cuda_available:
        assert not facts.unsloth_installed and not facts.vllm_installed


def test_blt_configs_use_the_shared_device_section_without_unsloth_or_vllm():
    from lib.common.config import ROOT as REPO

    cuda = resolve_config(REPO / "configs" / "blt" / "entropy_cuda.json")
    setup = choose_device(settings_from_config(cuda), H100)
    assert (setup.device, setup.precision, setup.unsloth, setup.vllm) == ("cuda", "bf16", False, False)
    fp32 = resolve_config(REPO / "configs" / "blt" / "entropy_cuda.json", ["mixed_precision=false"])
    assert choose_device(settings_from_config(fp32), H100).precision == "fp32"  # mixed precision off: fp32
    mps = resolve_config(
        REPO / "configs" / "blt" / "entropy_mps.json", ["device.mps_high_watermark_ratio=1.2"]
    )
    setup = choose_device(settings_from_config(mps), MAC)
    assert setup.device == "mps" and setup.env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "1.2"
