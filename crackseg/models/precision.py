"""The numeric precision the network runs well in on this machine.

bf16 mixed precision pays only where the hardware computes in bf16 natively: a GPU with
bf16 tensor cores (compute capability 8.0 and newer), or a CPU with AVX-512 BF16 or AMX
instructions. Elsewhere bf16 is emulated and slower than float32. Training (``trainer.
precision: auto``, crackseg.runs.hardware) and prediction (``precision=auto``) both ask here.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import torch

#: CPU flags (Linux /proc/cpuinfo) of instructions that compute in bf16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16 = "bf16-mixed"
FLOAT32 = "32-true"


def _cpuinfo() -> str:
    """Linux's /proc/cpuinfo, or nothing where there is none."""
    if platform.system() != "Linux":
        return ""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_bf16_features() -> list[str]:
    """The CPU's flags among :data:`BF16_CPU_FLAGS` (AVX-512 BF16, AMX), in that order."""
    text = _cpuinfo()
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX); False where unknown."""
    return bool(cpu_bf16_features())


def cpu_model() -> str:
    """The CPU's model name (rates differ between machines: record it beside every rate)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def uses_cuda(accelerator: str) -> bool:
    """Whether a run with this ``trainer.accelerator`` trains on a CUDA GPU."""
    accelerator = str(accelerator).lower()
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def native_precision(accelerator: str) -> str:
    """``bf16-mixed`` where the device computes in bf16 natively, else ``32-true``."""
    if not uses_cuda(accelerator):
        return BF16 if cpu_has_native_bf16() else FLOAT32
    native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return BF16 if native else FLOAT32
