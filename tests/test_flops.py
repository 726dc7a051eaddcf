"""The FLOP count the benchmark's GFLOP/s rests on: by hand and by torch's own counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from crackseg.models.flops import count_flops
from crackseg.models.losses import decision_losses
from crackseg.models.segdecnet import SegDecNet

SMALL = {"channels": (8, 16, 16), "volume_channels": 32, "volume_kernel": 5}


def test_paper_network_at_640x232_by_hand():
    # 2 * Cin * Cout * k * k * Hout * Wout per convolution, stage by stage.
    stage1 = 2 * 3 * 32 * 25 * 640 * 232
    stage2 = 2 * (32 * 64 + 2 * 64 * 64) * 25 * 320 * 116
    stage3 = 2 * 4 * 64 * 64 * 25 * 160 * 58
    volume = 2 * 64 * 1024 * 225 * 80 * 29
    seg_mask = 2 * 1024 * 80 * 29
    # Max-pooling floors: 80x29 -> 40x14 -> 20x7 -> 10x3.
    decision = 2 * 25 * (1025 * 8 * 40 * 14 + 8 * 16 * 20 * 7 + 16 * 32 * 10 * 3)
    linear = 2 * 66
    forward = stage1 + stage2 + stage3 + volume + seg_mask + decision + linear
    assert forward == 95_975_919_492
    count = count_flops(640, 232)
    assert count.forward == forward
    # Backward: input and weight gradients, but no gradient for the image, nor for the
    # volume entering the decision subnet (gradient-flow adjustment), unless it is off.
    decision0 = 2 * 25 * 1025 * 8 * 40 * 14
    assert count.backward == 2 * forward - stage1 - decision0
    assert count_flops(640, 232, gradient_adjustment=False).backward == 2 * forward - stage1
    assert count.train_step == pytest.approx(288e9, rel=0.005)


def measured(net: SegDecNet, height: int, width: int, batch: int = 2) -> tuple[int, int]:
    """(forward, backward) FLOPs per image of a training step, by torch's FlopCounterMode."""
    images = torch.rand(batch, net.in_channels, height, width)
    with FlopCounterMode(display=False) as forward:
        out = net(images)
    loss = out.segmentation.float().mean() + decision_losses(out.decision, torch.ones(batch)).mean()
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops() // batch, backward.get_total_flops() // batch


@pytest.mark.parametrize(
    "height,width,net",
    [
        (64, 128, SMALL),
        (72, 136, {**SMALL, "decision_channels": (4, 8, 8)}),
        (128, 64, {**SMALL, "gradient_adjustment": False}),
        (64, 136, {**SMALL, "full_resolution": True, "full_resolution_width": 8}),
        (128, 128, {**SMALL, "in_channels": 1, "full_resolution": True}),
    ],
)
def test_count_matches_torch_flop_counter(height, width, net):
    count = count_flops(height, width, **net)
    assert measured(SegDecNet(**net), height, width) == (count.forward, count.backward)
