"""The numeric precision, and the memory layout, the network runs well in on this machine.

bf16 mixed precision pays only where the hardware computes in bf16 natively: a GPU with
bf16 tensor cores (compute capability 8.0 and newer), or a CPU with AVX-512 BF16 or AMX
instructions. Elsewhere bf16 is emulated and slower than float32. Training (``trainer.
precision: auto``, crackseg.runs.hardware) and prediction (``precision=auto``) both ask here.

Training asks before its trainer starts: nothing here initialises CUDA in the process, which
could then no longer fork processes that use it (``trainer.strategy=ddp_fork``,
``ddp_notebook``). torch is imported where a GPU is asked about: the commands check their
settings with this module before they load it.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

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
    import torch

    accelerator = str(accelerator).lower()
    # device_count asks NVML where it can; torch.cuda.is_available would initialise CUDA.
    return accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.device_count() > 0
    )


#: Asked in a child process: whether visible GPU number {gpu} computes in bf16 natively.
_ASK_CUDA_BF16 = (
    "import torch; torch.cuda.set_device({gpu}); "
    "print(int(torch.cuda.is_bf16_supported(including_emulation=False)))"
)


def cuda_has_native_bf16(gpu: int | None = None) -> bool:
    """Whether a GPU computes in bf16 natively: visible GPU number ``gpu``, or the current
    one (None). Where CUDA is not yet initialised in this process, a child process answers,
    so that this one may still fork (1-2 s, once a GPU)."""
    import torch

    if torch.cuda.device_count() <= (gpu or 0):
        return False
    if torch.cuda.is_initialized():  # asking costs nothing here
        with torch.cuda.device(gpu):  # None: the current one
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return _ask_cuda_bf16(gpu or 0)


@cache
def _ask_cuda_bf16(gpu: int) -> bool:
    try:
        asked = subprocess.run(
            [sys.executable, "-c", _ASK_CUDA_BF16.format(gpu=gpu)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        asked = subprocess.CompletedProcess([], 1, "", str(error))
    if asked.returncode != 0 or asked.stdout.strip() not in ("0", "1"):
        last = (asked.stderr.strip().splitlines() or ["no answer"])[-1]
        log.warning("could not ask the GPU whether it computes in bf16 (%s): float32", last)
        return False
    return asked.stdout.strip() == "1"


def prefers_channels_last(device_type: str, precision: str) -> bool:
    """Whether activations run faster stored NHWC (channels_last) than NCHW: in bf16 on a CPU
    with AMX, whose oneDNN convolutions work in NHWC and otherwise reorder their input and
    output on every call (the paper's network trains 1.4x faster so). Nowhere else, as
    measured: on an AMD EPYC with AVX-512 BF16 NHWC was 20 % slower, and on a GPU it is not
    yet measured (benchmarks/README.md)."""
    bf16 = str(precision).startswith("bf16")
    return device_type == "cpu" and bf16 and "amx_bf16" in cpu_bf16_features()


def use_channels_last(setting: bool | str, device_type: str, precision: str) -> bool:
    """``model.channels_last`` made concrete for a run on ``device_type`` in ``precision``."""
    if setting == "auto":
        return prefers_channels_last(device_type, precision)
    return bool(setting)


def native_precision(accelerator: str, gpu: int | None = None) -> str:
    """``bf16-mixed`` where the device (on CUDA, visible GPU number ``gpu``, or the current
    one) computes in bf16 natively, else ``32-true``."""
    if not uses_cuda(accelerator):
        return BF16 if cpu_has_native_bf16() else FLOAT32
    return BF16 if cuda_has_native_bf16(gpu) else FLOAT32
