"""``model.volume_im2col: auto``: which kernel runs the volume convolution faster on this
machine, timed once on the run's own first training batch (as ``cudnn.benchmark`` times
cuDNN's algorithms on a GPU).

The two kernels are oneDNN's direct convolution and im2col with a matrix product per sample
(:class:`crackseg.models.layers.VolumeConv2d`). Which is faster depends on the CPU, the
map's shape and the batch: in float32 on an Intel Xeon with AMX, im2col trained the paper's
network 1.18x faster at 640x232 and batch 1, but the convolution alone was 10 % slower on
the 20x20 map of 160x160 tiles at batch 4; on an AMD EPYC oneDNN's was the faster at both
shapes, 1.6x and 2x (benchmarks/README.md). Timed only where im2col
has a chance and the timing may decide: float32 on a CPU, neither compiled (the compiler
picks its own kernels) nor deterministic (a timed choice may differ between two runs).
im2col must win by :data:`IM2COL_MARGIN`, and its choice holds for float32 inputs on a CPU
alone (``VolumeConv2d.im2col_in_float32_on_cpu``): a model trained so runs cuDNN's kernel
on a GPU and oneDNN's in bf16.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from crackseg.models.segdecnet import SegDecNet

log = logging.getLogger(__name__)

#: The checkpoint key of an ``auto`` run's choice (True: im2col).
CHECKPOINT_KEY = "volume_im2col"

#: Timed calls of each kernel, taking turns after the warm-ups; one when a warm-up took this
#: long (s).
TIMED_CALLS = 2
LONG_CALL_S = 2.0
#: im2col is chosen only where it is this much faster: in a near tie the timing's noise
#: would decide, and two runs of one config would compute in different summation orders.
IM2COL_MARGIN = 1.05


def should_time_volume_kernels(device_type: str, precision: str, compile_mode: str | None) -> bool:
    """Whether ``model.volume_im2col: auto`` times the two kernels for a run on
    ``device_type`` in ``precision`` (else it keeps oneDNN's, and cuDNN's on a GPU)."""
    float32 = str(precision) in ("32", "32-true")
    deterministic = torch.are_deterministic_algorithms_enabled()
    return device_type == "cpu" and float32 and not compile_mode and not deterministic


@dataclass(frozen=True)
class VolumeKernelTiming:
    """Seconds of one forward and backward of the volume convolution with each kernel."""

    input_shape: tuple[int, ...]
    direct_s: float
    im2col_s: float

    @property
    def im2col_chosen(self) -> bool:
        """Whether im2col is faster by more than :data:`IM2COL_MARGIN`."""
        return self.im2col_s * IM2COL_MARGIN < self.direct_s

    def summary(self) -> str:
        if self.im2col_chosen:
            chosen = f"im2col, {self.direct_s / self.im2col_s:.2f}x faster"
        elif self.im2col_s < self.direct_s:
            margin = round((IM2COL_MARGIN - 1) * 100)
            speedup = self.direct_s / self.im2col_s
            chosen = f"oneDNN's direct convolution kept, im2col only {speedup:.2f}x faster "
            chosen += f"(under the {margin} % margin)"
        else:
            chosen = f"oneDNN's direct convolution, {self.im2col_s / self.direct_s:.2f}x faster"
        shape = "x".join(str(n) for n in self.input_shape)
        return (
            f"volume convolution: {chosen} on the {shape} input (forward and backward "
            f"{self.direct_s * 1e3:.0f} ms direct, {self.im2col_s * 1e3:.0f} ms im2col; "
            "model.volume_im2col=auto)"
        )


def _forward_backward_s(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Seconds of one forward of ``conv`` on ``x`` and its backward (input and weight
    gradients, as in training), on the CPU."""
    start = time.perf_counter()
    with torch.enable_grad():
        y = conv(x)
        torch.autograd.grad(y, (x, conv.weight), grad)
    return time.perf_counter() - start


def time_volume_kernels(
    volume_conv: nn.Conv2d,
    input_shape: torch.Size | tuple[int, ...],
    layout: torch.memory_format = torch.contiguous_format,
) -> VolumeKernelTiming:
    """Time both kernels of ``volume_conv`` (a VolumeConv2d) on an input of ``input_shape``
    in its dtype and in ``layout`` (the network's), on a copy: the network's weights and
    gradients and the global random state are left as they were. Each kernel is called once
    to warm up (oneDNN builds its primitive on the first call), then the two take turns for
    :data:`TIMED_CALLS` calls each, the best counting: a burst of other work on the machine
    (a loader worker starting) then slows both, rather than the one timed during it."""
    conv = copy.deepcopy(volume_conv)  # no new initialisation: the random state is kept
    conv.im2col_in_float32_on_cpu = False
    conv = conv.to(memory_format=layout)
    weight = conv.weight
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=generator, dtype=weight.dtype)
    x = x.to(weight.device, memory_format=layout).requires_grad_()
    out_shape = (input_shape[0], conv.out_channels, *input_shape[2:])  # 'same' padding
    grad = torch.randn(out_shape, generator=generator, dtype=weight.dtype)
    grad = grad.to(weight.device, memory_format=layout)

    def call(im2col: bool) -> float:
        conv.im2col = im2col
        return _forward_backward_s(conv, x, grad)

    warm_up = max(call(False), call(True))
    rounds = 1 if warm_up > LONG_CALL_S else TIMED_CALLS
    timed = [(call(False), call(True)) for _ in range(rounds)]  # direct, then im2col
    direct_s, im2col_s = (min(column) for column in zip(*timed, strict=True))
    return VolumeKernelTiming(tuple(input_shape), direct_s, im2col_s)


class VolumeKernelChoice:
    """The kernel a network's volume convolution runs with, by ``model.volume_im2col``:
    im2col (``true``), oneDNN's (``false``), or with ``auto`` the faster of the two, timed
    once at the first training batch (:meth:`choose`) or taken from the checkpoint a run
    resumes or a prediction loads (:meth:`load`). An ``auto`` run's checkpoints carry its
    choice (:meth:`save`), so whatever continues from them computes as the run did."""

    def __init__(self, net: SegDecNet, setting: bool | str) -> None:
        self.net = net
        self.setting = setting
        net.volume_im2col = setting is True
        self.chosen = setting != "auto"

    def save(self, checkpoint: dict[str, Any]) -> None:
        if self.setting == "auto" and self.chosen:
            checkpoint[CHECKPOINT_KEY] = self.net.timed_volume_im2col

    def load(self, checkpoint: dict[str, Any]) -> None:
        if self.setting != "auto":
            return
        saved = checkpoint.get("hyper_parameters", {}).get("speed", {}).get("volume_im2col")
        if CHECKPOINT_KEY in checkpoint:
            self.net.timed_volume_im2col = bool(checkpoint[CHECKPOINT_KEY])
            self.chosen = True
        elif saved != "auto":  # saved before auto: it trained as its setting said (or off)
            self.net.volume_im2col = saved is True
            self.chosen = True

    def choose(
        self,
        trainer: pl.Trainer,
        device_type: str,
        image_shape: torch.Size,
        channels_last: bool,
        compile_mode: str | None,
    ) -> None:
        """``auto`` at the first training batch, of ``image_shape`` on ``device_type``
        (channels-last or not, compiled or not): im2col where it runs the
        volume convolution faster than oneDNN on that shape (timed by the first process,
        whose choice every process takes; :func:`should_time_volume_kernels` says where it
        times), else oneDNN's."""
        self.chosen = True
        if not should_time_volume_kernels(device_type, str(trainer.precision), compile_mode):
            return
        im2col = False
        if trainer.is_global_zero:
            shape = self.net.volume_input_shape(image_shape)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            try:
                timing = time_volume_kernels(self.net.volume[0], shape, layout)
            except (RuntimeError, MemoryError) as error:  # every process waits for the choice
                log.warning("volume convolution: oneDNN's, im2col could not be timed: %s", error)
            else:
                log.info(timing.summary())
                im2col = timing.im2col_chosen
        im2col = bool(trainer.strategy.broadcast(im2col, src=0))
        if trainer.world_size > 1:
            kernel = "im2col" if im2col else "oneDNN's direct convolution"
            log.info("volume convolution in this process: %s, the first process's choice", kernel)
        self.net.timed_volume_im2col = im2col
