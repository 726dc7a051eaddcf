"""What the machine runs well: the numeric precision and the evaluation batch size.

``trainer.precision: auto`` (and ``precision=auto`` of crackseg-predict) chooses bf16 mixed
precision only where the hardware computes in bf16 natively: a GPU with bf16 tensor cores
(compute capability 8.0 and newer), or a CPU with AVX-512 BF16 or AMX instructions.
Elsewhere bf16 is emulated and slower than float32, so ``auto`` stays in float32 there.
``auto`` is the training default: on such a CPU bf16 trains the paper's network 1.8x faster,
and experiment=cfd_tiles reached float32's quality (README "Precision"). Named experiments
that reproduce published numbers (the seed run) set ``32-true`` themselves.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from crackseg.errors import ConfigError

log = logging.getLogger(__name__)

#: CPU flags (Linux /proc/cpuinfo) of instructions that compute in bf16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16 = "bf16-mixed"
FLOAT32 = "32-true"
#: Evaluation batches on a CPU hold about this many input pixels: the paper's network at
#: 640x232 predicts 18 % fewer images/s at batch 8 than at batch 1 (its activations outgrow
#: the caches), the narrow demo network at 128x128 27 % more (benchmarks/README.md).
CPU_EVAL_PIXELS = 2**17
MAX_CPU_EVAL_BATCH = 16
#: A GPU wants batches.
GPU_EVAL_BATCH = 16


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


def check_accelerator(accelerator: str, devices: Any) -> None:
    """Refuse, with one line, an accelerator or a number of devices this machine lacks
    (checked where the run trains, not where a cluster sweep is submitted)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator}, but no CUDA GPU is visible here "
                "(trainer=cpu or trainer.accelerator=auto runs on the CPU)"
            )
        listed = isinstance(devices, Sequence) and not isinstance(devices, str)
        ids = list(devices) if listed else []
        if (isinstance(devices, int) and devices > count) or any(i >= count for i in ids):
            raise ConfigError(
                f"trainer.devices={devices} asks for more GPUs than the {count} visible here"
            )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps, but this machine has no MPS device")


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """``trainer.precision``, with ``auto`` turned into what this machine runs natively."""
    if str(precision) != "auto":
        return str(precision)
    chosen = native_precision(accelerator)
    log.info("precision: %s (trainer.precision=auto on this machine)", chosen)
    return chosen


def eval_batch_size(
    setting: int | str | None, batch_size: int, device_type: str, pixels: int
) -> int:
    """``data.eval_batch_size``: a number, null (the training batch size), or ``auto``: 16 on
    a GPU; on a CPU as many images of ``pixels`` (height x width) as make ~2^17 pixels,
    1 to 16."""
    if setting is None:
        return batch_size
    if str(setting) != "auto":
        return int(setting)
    if device_type == "cuda":
        return GPU_EVAL_BATCH
    return max(1, min(MAX_CPU_EVAL_BATCH, CPU_EVAL_PIXELS // max(1, pixels)))
