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
import time
from dataclasses import dataclass

import torch
from torch import nn

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
