"""Timing the volume convolution's two kernels for ``model.volume_im2col=auto``."""

from __future__ import annotations

import pytest
import torch

from crackseg.models.segdecnet import SegDecNet
from crackseg.models.volume_kernel import (
    VolumeKernelTiming,
    should_time_volume_kernels,
    time_volume_kernels,
)

SMALL = {"channels": (8, 16, 16), "volume_channels": 32, "volume_kernel": 5}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_timing_the_kernels_leaves_the_network_and_the_random_state_as_they_were(layout):
    net = SegDecNet(**SMALL).to(memory_format=layout)
    volume = net.volume[0]
    volume.weight.grad = torch.ones_like(volume.weight)
    weight = volume.weight.detach().clone()
    state = torch.get_rng_state()
    shape = net.volume_input_shape((2, 3, 64, 131))
    timing = time_volume_kernels(volume, shape, layout)
    assert shape == (2, 16, 8, 16)
    assert timing.input_shape == shape and timing.direct_s > 0 and timing.im2col_s > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(volume.weight, weight)
    assert torch.equal(volume.weight.grad, torch.ones_like(weight))
    assert not net.volume_im2col


def test_the_kernels_take_turns_so_that_a_burst_of_other_work_slows_both(monkeypatch):
    """Warm-ups first, then direct and im2col alternately; each kernel's best call counts.
    A slow call (here the second direct one, as under a loader worker starting) is
    outweighed by that kernel's other call instead of deciding the choice."""
    from crackseg.models import volume_kernel

    calls, seconds = [], iter([1.5, 1.5, 1.0, 0.9, 5.0, 0.95])

    def timed(conv, x, grad):
        calls.append("im2col" if conv.im2col else "direct")
        return next(seconds)

    monkeypatch.setattr(volume_kernel, "_forward_backward_s", timed)
    net = SegDecNet(**SMALL)
    timing = time_volume_kernels(net.volume[0], net.volume_input_shape((1, 3, 64, 128)))
    assert calls == ["direct", "im2col"] * 3
    assert (timing.direct_s, timing.im2col_s) == (1.0, 0.9)


def test_the_timing_keeps_im2col_where_it_is_faster_by_the_margin_and_says_so():
    faster = VolumeKernelTiming((1, 64, 29, 80), direct_s=1.2, im2col_s=1.0)
    tie = VolumeKernelTiming((1, 64, 29, 80), direct_s=1.02, im2col_s=1.0)
    slower = VolumeKernelTiming((4, 64, 20, 20), direct_s=0.1, im2col_s=0.11)
    assert faster.im2col_chosen and not tie.im2col_chosen and not slower.im2col_chosen
    assert faster.summary().startswith("volume convolution: im2col, 1.20x faster on the 1x64x29x80")
    assert tie.summary().startswith(
        "volume convolution: oneDNN's direct convolution kept, im2col only 1.02x faster "
        "(under the 5 % margin) on the"
    )
    assert slower.summary().startswith("volume convolution: oneDNN's direct convolution, 1.10x")


def test_the_timed_choice_holds_for_float32_on_a_cpu_alone():
    """A model whose run timed im2col faster (in float32 on a CPU) runs the direct
    convolution in bf16, where oneDNN's AMX kernel is the faster, as on a GPU."""
    from helpers.volume_nodes import record_volume_nodes

    net = SegDecNet(**SMALL)
    net.timed_volume_im2col = True
    nodes = record_volume_nodes(net)
    x = torch.rand(1, 3, 64, 128)
    net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert nodes == ["SlowConv2DBackward0", "ConvolutionBackward0"]


def test_the_kernels_are_timed_in_float32_on_a_cpu_only():
    assert should_time_volume_kernels("cpu", "32-true", None)
    assert should_time_volume_kernels("cpu", "32", None)
    assert not should_time_volume_kernels("cpu", "bf16-mixed", None)
    assert not should_time_volume_kernels("cuda", "32-true", None)
    assert not should_time_volume_kernels("cpu", "32-true", "default")  # the compiler picks its own


def test_a_deterministic_run_does_not_time_the_kernels():
    """Two runs of one deterministic config must compute alike; a timed choice may differ."""
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not should_time_volume_kernels("cpu", "32-true", None)
    finally:
        torch.use_deterministic_algorithms(enabled)
