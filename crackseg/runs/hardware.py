"""The machine a run trains on: refuse devices it lacks, make ``trainer.precision`` concrete.

``trainer.precision: auto`` chooses bf16 mixed precision only where the hardware computes
in bf16 natively (crackseg.models.precision); elsewhere it stays in float32.
``auto`` is the training default: on such a CPU bf16 trains the paper's network 2.1x faster,
and experiment=cfd_tiles reached float32's quality (docs/protocol.md#precision). Named
experiments that reproduce published numbers (the seed run) set ``32-true`` themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from crackseg.errors import ConfigError
from crackseg.models.precision import native_precision, uses_cuda

log = logging.getLogger(__name__)


def check_accelerator(accelerator: str, devices: Any) -> None:
    """Refuse, with one line, an accelerator or a number of devices this machine lacks
    (checked where the run trains, not where a cluster sweep is submitted)."""
    import torch  # here: the commands' earlier checks never wait for it

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


def check_deterministic(cfg: Any) -> None:
    """Refuse ``trainer.deterministic=true`` where the network has an operation without a
    deterministic kernel: the full-resolution head's bilinear upsampling has none for its
    backward on CUDA, which torch would raise at the first training step."""
    deterministic = cfg.trainer.get("deterministic")
    full_resolution = cfg.get("model", {}).get("net", {}).get("full_resolution", False)
    if deterministic is not True or not full_resolution:
        return
    if uses_cuda(cfg.trainer.get("accelerator", "auto")):
        raise ConfigError(
            "trainer.deterministic=true cannot train model.net.full_resolution=true on a GPU "
            "(its bilinear upsampling has no deterministic CUDA backward): "
            "use trainer.deterministic=warn"
        )


#: The float16 values of ``trainer.precision``.
FLOAT16 = ("16-mixed", "16")


def trains_float16(accelerator: str) -> bool:
    """Whether Lightning trains float16 on ``accelerator``: on a CUDA or an Apple (MPS) GPU;
    on a CPU it trains bf16 instead."""
    import torch

    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda", "mps"):
        return True
    return accelerator == "auto" and (uses_cuda(accelerator) or torch.backends.mps.is_available())


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """``trainer.precision``, with ``auto`` turned into what this machine runs natively.
    float16 is refused off a GPU, where Lightning would train bf16 instead, recorded as
    float16."""
    if str(precision) in FLOAT16 and not trains_float16(accelerator):
        raise ConfigError(
            f"trainer.precision={precision} needs a GPU (on a CPU Lightning would train "
            "bf16 instead): use bf16-mixed, 32-true or auto"
        )
    if str(precision) != "auto":
        return str(precision)
    chosen = native_precision(accelerator)
    log.info("precision: %s (trainer.precision=auto on this machine)", chosen)
    return chosen


def evaluation_precision(precision: str | int, trained: str | None, accelerator: str) -> str:
    """``trainer.precision`` of an evaluation: ``auto`` is the precision the weights were
    trained in (``trained``, from the checkpoint), else what this machine runs natively.
    float16 weights evaluated off a GPU are evaluated in float32: Lightning would turn
    ``16-mixed`` into bf16 there, neither the trained precision nor a native one."""
    if str(precision) == "auto" and trained in FLOAT16 and not trains_float16(accelerator):
        log.info("precision: 32-true (the checkpoint trained in %s, which needs a GPU)", trained)
        return "32-true"
    if str(precision) == "auto" and trained not in (None, "auto"):
        log.info("precision: %s, as the checkpoint was trained", trained)
        return str(trained)
    return resolve_precision(precision, accelerator)
