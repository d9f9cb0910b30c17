"""Device and back-end setup for CUDA, Apple MPS and CPU (docs/ARCHITECTURE.md, "Device and backends").

    setup = setup_device(settings_from_config(cfg))   # before any tensor is created
    setup.device, setup.precision, setup.unsloth, setup.vllm, setup.fallbacks

The decision is a pure function of the settings and of the platform's facts (`choose_device`), so the
CUDA and MPS branches are tested on any machine by passing the facts of a Mac or a GPU node.
`setup_device` is the thin part that reads the real facts and sets the environment.

Why the MPS watermarks: PyTorch reads PYTORCH_MPS_HIGH/LOW_WATERMARK_RATIO once, when it creates the MPS
allocator, and refuses low > high. Its defaults on Apple Silicon are high 1.7 / low 1.4, so setting only
the high one (say 0.8) fails with "invalid low watermark ratio 1.4". We always set both, before torch
touches MPS, and check the user's values first: 0 <= low <= high <= 2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from lib.common.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_ORDER = ("cuda", "mps", "cpu")
HIGH_VAR = "PYTORCH_MPS_HIGH_WATERMARK_RATIO"
LOW_VAR = "PYTORCH_MPS_LOW_WATERMARK_RATIO"
FALLBACK_VAR = "PYTORCH_ENABLE_MPS_FALLBACK"


@dataclass(frozen=True)
class DeviceSettings:
    """What the config asks for. No defaults here: they live in the schema (build with settings_from_config)."""

    type: str  # auto | cuda | mps | cpu
    force_cpu: bool
    precision: str  # auto | bf16 | fp16 | fp32
    mps_high_watermark_ratio: float
    mps_low_watermark_ratio: float
    unsloth: str  # auto | on | off
    vllm: str  # auto | on | off


@dataclass(frozen=True)
class PlatformFacts:
    """What this machine offers. Tests build these by hand for a Mac or a GPU node."""

    system: str  # platform.system(): Linux, Darwin, Windows
    machine: str  # platform.machine(): x86_64, arm64, aarch64
    torch_version: str = ""
    cuda_available: bool = False
    cuda_device_count: int = 0
    cuda_name: str = ""
    cuda_bf16: bool = False
    cpu_bf16: bool = False  # bf16 instructions (AVX512-BF16, AMX, ARM BF16): cpu_has_bf16
    mps_built: bool = False
    mps_available: bool = False
    unsloth_installed: bool = False  # probed only where CUDA is available
    vllm_installed: bool = False


@dataclass(frozen=True)
class DeviceSetup:
    """The decision: one device, one precision, the back-ends, and why anything fell back."""

    device: str
    precision: str
    unsloth: bool
    vllm: bool
    device_count: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()

    @property
    def training_backend(self) -> str:
        return "unsloth" if self.unsloth else "transformers+peft"

    @property
    def generation_backend(self) -> str:
        return "vllm" if self.vllm else "generate"

    def summary(self) -> str:
        count = f" x{self.device_count}" if self.device == "cuda" and self.device_count > 1 else ""
        parts = [
            f"device={self.device}{count}",
            f"precision={self.precision}",
            f"training={self.training_backend}",
            f"generation={self.generation_backend}",
        ]
        if self.device == "mps":
            parts.append(f"mps_watermarks(high={self.env[HIGH_VAR]},low={self.env[LOW_VAR]})")
        parts.append("fallbacks: " + ("; ".join(self.fallbacks) if self.fallbacks else "none"))
        return " ".join(parts)


def settings_from_config(cfg: Mapping) -> DeviceSettings:
    """DeviceSettings from a resolved config's `device` section (schemas/shared/device.json, the same in control
    and blt configs). The byte-level model (model_type blt) is plain PyTorch: never Unsloth or vLLM, and fp32
    unless its `mixed_precision` is true (then device.precision, on CUDA)."""
    device = cfg["device"]
    if cfg.get("model_type") != "blt":
        return DeviceSettings(**device)
    fixed = {"unsloth": "off", "vllm": "off", **({} if cfg["mixed_precision"] else {"precision": "fp32"})}
    return DeviceSettings(**{**device, **fixed})


def check_mps_watermarks(high: float, low: float) -> None:
    """Refuse watermarks PyTorch would reject later with a less helpful message."""
    if not (0.0 <= low <= high <= 2.0):
        raise UsageError(
            f"MPS memory watermarks high={high}, low={low} are invalid: PyTorch requires "
            "0 <= low <= high <= 2 and otherwise stops with 'invalid low watermark ratio' (or high) "
            "when it starts MPS. The high ratio caps how much of the recommended GPU memory PyTorch "
            "may take (0 = no cap); the low one is where it starts returning cached memory.",
            fix="set device.mps_high_watermark_ratio=0.8 device.mps_low_watermark_ratio=0.0 (the safe "
            "defaults), or any pair with low <= high <= 2.",
        )


def mps_environment(settings: DeviceSettings) -> dict[str, str]:
    return {
        HIGH_VAR: str(settings.mps_high_watermark_ratio),
        LOW_VAR: str(settings.mps_low_watermark_ratio),
        FALLBACK_VAR: "1",  # ops MPS lacks run on the CPU instead of raising
    }


def _why_no_mps(facts: PlatformFacts) -> str:
    if facts.system != "Darwin":
        return f"MPS exists only on macOS with Apple Silicon; this is {facts.system} {facts.machine}"
    if facts.machine not in ("arm64", "aarch64"):
        return f"MPS needs Apple Silicon; this Mac is {facts.machine}"
    if not facts.mps_built:
        return f"this torch ({facts.torch_version}) was built without MPS"
    return "torch reports MPS unavailable (macOS 12.3 or newer is needed)"


def _available(device: str, facts: PlatformFacts) -> bool:
    return {"cuda": facts.cuda_available, "mps": facts.mps_available, "cpu": True}[device]


def _pick_device(settings: DeviceSettings, facts: PlatformFacts, fallbacks: list[str]) -> str:
    if settings.force_cpu:
        if settings.type not in ("auto", "cpu"):
            fallbacks.append(f"force_cpu is set: CPU instead of {settings.type}")
        return "cpu"
    if settings.type == "auto":
        return next(d for d in DEVICE_ORDER if _available(d, facts))
    if _available(settings.type, facts):
        return settings.type
    chosen = next(d for d in DEVICE_ORDER if d != settings.type and _available(d, facts))
    why = "torch sees no CUDA device" if settings.type == "cuda" else _why_no_mps(facts)
    fallbacks.append(f"{settings.type} requested but not available ({why}): using {chosen}")
    return chosen


def _pick_precision(settings: DeviceSettings, device: str, facts: PlatformFacts, fallbacks: list[str]) -> str:
    wanted = settings.precision
    if device == "cuda":
        if wanted == "auto":
            return "bf16" if facts.cuda_bf16 else "fp16"
        if wanted == "bf16" and not facts.cuda_bf16:
            fallbacks.append(f"bf16 requested but {facts.cuda_name or 'this GPU'} lacks bf16: using fp16")
            return "fp16"
        return wanted
    if wanted == "auto":
        return "fp32"
    if device == "cpu" and wanted == "bf16" and not facts.cpu_bf16:
        # without them torch emulates bf16 matmuls: ~1 GFLOP/s against fp32's ~100 on a 2-core AMD EPYC
        # (make bench-train), so a bf16 run would be ~100x slower, not faster
        fallbacks.append(
            "bf16 requested but this CPU has no bf16 instructions (AVX512-BF16, AMX or ARM BF16): using fp32"
        )
        return "fp32"
    if device == "cpu" and wanted == "fp16":
        fallbacks.append(
            "fp16 requested but mixed-precision training on the CPU supports only bf16: using fp32"
        )
        return "fp32"
    return wanted


def _pick_backend(name: str, mode: str, device: str, installed: bool, fallbacks: list[str]) -> bool:
    if mode == "off":
        return False
    if device != "cuda":
        if mode == "on":
            raise UsageError(
                f"device.{name}=on but this run uses {device}: {name} works only on CUDA GPUs.",
                fix=f"set device.{name}=auto (used where available) or off.",
            )
        return False
    if installed:
        return True
    if mode == "on":
        raise UsageError(
            f"device.{name}=on but {name} is not installed.",
            fix=f"run `make install-cuda`, or set device.{name}=auto to fall back to the plain path.",
        )
    plain = "transformers+peft" if name == "unsloth" else "model.generate"
    fallbacks.append(f"{name} not installed (make install-cuda): using {plain}")
    return False


def choose_device(settings: DeviceSettings, facts: PlatformFacts) -> DeviceSetup:
    """The whole decision as a pure function: same settings and facts, same DeviceSetup."""
    check_mps_watermarks(settings.mps_high_watermark_ratio, settings.mps_low_watermark_ratio)
    fallbacks: list[str] = []
    device = _pick_device(settings, facts, fallbacks)
    precision = _pick_precision(settings, device, facts, fallbacks)
    unsloth = _pick_backend("unsloth", settings.unsloth, device, facts.unsloth_installed, fallbacks)
    vllm = _pick_backend("vllm", settings.vllm, device, facts.vllm_installed, fallbacks)
    return DeviceSetup(
        device=device,
        precision=precision,
        unsloth=unsloth,
        vllm=vllm,
        device_count=facts.cuda_device_count if device == "cuda" else 1,
        env=mps_environment(settings) if device == "mps" else {},
        fallbacks=tuple(fallbacks),
    )


def cpu_has_bf16(system: str, machine: str, cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 instructions: the avx512_bf16 or amx_bf16 flag (x86) or the bf16 feature
    (ARM) in /proc/cpuinfo on Linux (`cpuinfo` its text, read when None), FEAT_BF16 by sysctl on macOS."""
    if system == "Darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return out.strip() == "1"
    if system != "Linux":
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    words = {
        word
        for line in cpuinfo.splitlines()
        if line.split(":")[0].strip() in ("flags", "Features")
        for word in line.split(":", 1)[-1].split()
    }
    wanted = {"bf16"} if machine in ("aarch64", "arm64") else {"avx512_bf16", "amx_bf16"}
    return bool(words & wanted)


def probe_platform() -> PlatformFacts:
    """Read this machine's facts. Imports torch; Unsloth and vLLM are looked up (not imported) on CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    return PlatformFacts(
        system=platform.system(),
        machine=platform.machine(),
        torch_version=torch.__version__,
        cuda_available=cuda,
        cuda_device_count=torch.cuda.device_count() if cuda else 0,
        cuda_name=torch.cuda.get_device_name(0) if cuda else "",
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        cpu_bf16=cpu_has_bf16(platform.system(), platform.machine()),
        mps_built=bool(mps_backend and mps_backend.is_built()),
        mps_available=bool(mps_backend and mps_backend.is_available()),
        unsloth_installed=cuda and importlib.util.find_spec("unsloth") is not None,
        vllm_installed=cuda and importlib.util.find_spec("vllm") is not None,
    )


def setup_device(
    settings: DeviceSettings,
    environ: MutableMapping[str, str] = os.environ,
    facts: PlatformFacts | None = None,
) -> DeviceSetup:
    """Check the settings, set the MPS environment before torch starts MPS, decide, and log one line."""
    check_mps_watermarks(settings.mps_high_watermark_ratio, settings.mps_low_watermark_ratio)
    may_use_mps = (
        platform.system() == "Darwin" and not settings.force_cpu and settings.type in ("auto", "mps")
    )
    if may_use_mps:
        # Before probing: torch reads these once, when the MPS allocator starts. On a Mac that then
        # picks CUDA or the CPU they are simply unused.
        for name, value in mps_environment(settings).items():
            if environ.get(name, value) != value:
                log.warning("%s=%s from the environment replaced by %s (config)", name, environ[name], value)
            environ[name] = value
    setup = choose_device(settings, facts or probe_platform())
    log.info("%s", setup.summary())
    return setup
