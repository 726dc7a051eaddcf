"""The FLOP count of SegDecNet, from its layer table (what a benchmark's GFLOP/s rests on).

Counted: every convolution, ``2 * Cin * Cout * k * k * Hout * Wout`` (a multiply-add is
2 FLOPs; the one bias of the full-resolution head's output is not counted), and the linear
layer, ``2 * in * out``. Not counted: FeatureNorm, ReLU, pooling, interpolation, the losses
and the SGD update: about ten operations per activation element, ~0.2 % of the total for
the paper's network and ~1 % for the narrow variants of ``conf/model/``.

Backward: a layer's input gradient and its weight gradient each cost what its forward
costs, so backward is 2x forward, except where an input needs no gradient: the first
convolution's (the image), and with gradient-flow adjustment (the default) the first
decision convolution's (the volume, which the decision loss does not train). The training
step of one image is forward + backward, ~3x forward.

The table is written from the network's arguments, not read off the module, so that
``torch.utils.flop_counter`` on the real network checks it (``tests/test_flops.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crackseg.data.data_settings import OUTPUT_STRIDE, check_input_size


@dataclass(frozen=True)
class Layer:
    """A convolution (``kernel`` k, output ``height`` x ``width``) or the linear layer (1x1)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    height: int
    width: int

    @property
    def flops(self) -> int:
        k2 = self.kernel * self.kernel
        return 2 * self.in_channels * self.out_channels * k2 * self.height * self.width


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one image."""

    forward: int
    backward: int

    @property
    def train_step(self) -> int:
        return self.forward + self.backward


def layer_table(
    height: int,
    width: int,
    in_channels: int = 3,
    channels: Sequence[int] = (32, 64, 64),
    volume_channels: int = 1024,
    volume_kernel: int = 15,
    decision_channels: Sequence[int] = (8, 16, 32),
    full_resolution: bool = False,
    full_resolution_width: int = 32,
    **_ignored: object,
) -> list[Layer]:
    """The layers of ``SegDecNet(**arguments)`` on a ``height`` x ``width`` input, in order.

    Takes the network's own arguments (a config's ``model.net``); those that change no
    layer (``gradient_adjustment``) are ignored here.
    """
    check_input_size(height, width)
    c1, c2, c3 = channels
    d1, d2, d3 = decision_channels
    h, w = height, width
    table = [Layer("stage1", in_channels, c1, 5, h, w)]
    h2, w2 = h // 2, w // 2
    table += [Layer("stage2.0", c1, c2, 5, h2, w2)]
    table += [Layer(f"stage2.{i}", c2, c2, 5, h2, w2) for i in (1, 2)]
    h4, w4 = h // 4, w // 4
    table += [Layer(f"stage3.{i}", c2 if i == 0 else c3, c3, 5, h4, w4) for i in range(4)]
    h8, w8 = h // OUTPUT_STRIDE, w // OUTPUT_STRIDE
    table += [Layer("volume", c3, volume_channels, volume_kernel, h8, w8)]
    if full_resolution:
        fw = full_resolution_width
        table += [Layer("head.reduce", volume_channels, fw, 1, h8, w8)]
        for name, skip, (sh, sw) in (
            ("head.step0", c3, (h4, w4)),
            ("head.step1", c2, (h2, w2)),
            ("head.step2", c1, (h, w)),
        ):
            table += [Layer(name, fw + skip, fw, 3, sh, sw)]
        table += [Layer("head.out", fw, 1, 1, h, w)]
    else:
        table += [Layer("seg_mask", volume_channels, 1, 1, h8, w8)]
    # The decision subnet: max-pool 2 (flooring), then a 5x5 convolution, three times.
    dh, dw = h8, w8
    for i, (cin, cout) in enumerate(((volume_channels + 1, d1), (d1, d2), (d2, d3))):
        dh, dw = dh // 2, dw // 2
        table += [Layer(f"decision.{i}", cin, cout, 5, dh, dw)]
    table += [Layer("decision_fc", 2 * d3 + 2, 1, 1, 1, 1)]
    return table


def _takes_input_gradient(layer: Layer, gradient_adjustment: bool = True) -> bool:
    """Whether backward computes ``layer``'s input gradient: not for the first convolution
    (its input is the image), nor, with gradient-flow adjustment, for the first decision
    convolution (its input, the volume, is detached from the decision loss)."""
    return layer.name != "stage1" and not (gradient_adjustment and layer.name == "decision.0")


def training_flops(layer: Layer, gradient_adjustment: bool = True) -> int:
    """FLOPs of ``layer`` in one image's training step: forward, weight gradient and, where
    it is computed, input gradient."""
    return layer.flops * (3 if _takes_input_gradient(layer, gradient_adjustment) else 2)


def count_flops(
    height: int, width: int, gradient_adjustment: bool = True, **net: object
) -> FlopCount:
    """Forward and backward FLOPs of one image through ``SegDecNet(**net)``."""
    table = layer_table(height, width, **net)
    forward = sum(layer.flops for layer in table)
    step = sum(training_flops(layer, gradient_adjustment) for layer in table)
    return FlopCount(forward, step - forward)
