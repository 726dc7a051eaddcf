"""Timing the volume convolution's two kernels for ``model.volume_im2col=auto``."""

from __future__ import annotations

import pytest
import torch

from crackseg.models.segdecnet import SegDecNet
from crackseg.models.volume_kernel import (
    VolumeKernelTiming,
    time_volume_kernels,
    times_volume_kernels,
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
    timing = time_volume_kernels(volume, shape)
    assert shape == (2, 16, 8, 16)
    assert timing.input_shape == shape and timing.direct_s > 0 and timing.im2col_s > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(volume.weight, weight)
    assert torch.equal(volume.weight.grad, torch.ones_like(weight))
    assert not net.volume_im2col


def test_the_timing_keeps_the_faster_kernel_and_says_by_how_much():
    faster = VolumeKernelTiming((1, 64, 29, 80), direct_s=1.2, im2col_s=1.0)
    slower = VolumeKernelTiming((4, 64, 20, 20), direct_s=0.1, im2col_s=0.11)
    assert faster.im2col_faster and not slower.im2col_faster
    assert faster.summary().startswith("volume convolution: im2col, 1.20x faster on the 1x64x29x80")
    assert slower.summary().startswith("volume convolution: oneDNN's direct convolution, 1.10x")


def test_the_kernels_are_timed_in_float32_on_a_cpu_only():
    assert times_volume_kernels("cpu", "32-true", None)
    assert times_volume_kernels("cpu", "32", None)
    assert not times_volume_kernels("cpu", "bf16-mixed", None)
    assert not times_volume_kernels("cuda", "32-true", None)
    assert not times_volume_kernels("cpu", "32-true", "default")  # the compiler picks its own


def test_a_deterministic_run_does_not_time_the_kernels():
    """Two runs of one deterministic config must compute alike; a timed choice may differ."""
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not times_volume_kernels("cpu", "32-true", None)
    finally:
        torch.use_deterministic_algorithms(enabled)
