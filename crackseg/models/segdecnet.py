"""SegDecNet: the two-headed segmentation + decision network of docs/method.md §2-§3.

A plain ``nn.Module``; the LightningModule in ``crackseg.models.lit_segdec`` trains it.
The default arguments build the paper's network; smaller variants only change widths and
the size of the large kernel (see ``conf/model/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crackseg.data.data_settings import OUTPUT_STRIDE, check_input_size
from crackseg.models.layers import FeatureNorm, VolumeConv2d, concat_channels


def conv_block(
    in_channels: int, out_channels: int, kernel_size: int, conv: type[nn.Conv2d] = nn.Conv2d
) -> nn.Sequential:
    """Bias-free convolution (an nn.Conv2d, or the subclass ``conv``), FeatureNorm, ReLU. The
    padding ``kernel_size // 2`` keeps the map's size ('same' padding) for an odd
    ``kernel_size`` only: an even one adds a pixel (so ``model.net.volume_kernel`` must be
    odd, crackseg.runs.config_checks)."""
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        FeatureNorm(out_channels),
        nn.ReLU(inplace=True),
    )


class SegDecOutput(NamedTuple):
    decision: Tensor  # [B] decision logits
    segmentation: Tensor  # [B, 1, H/8, W/8] (or [B, 1, H, W] with the full-resolution head)


class FullResolutionHead(nn.Module):
    """Learned upsampling of the segmentation to the input resolution.

    Not part of the paper: the 1/8 map caps Dice on cracks a few pixels wide. The head takes
    the volume, reduces it, and climbs back to full resolution through three ×2 steps, each
    concatenating the encoder features of that scale (a U-Net-like decoder).
    """

    def __init__(self, volume_channels: int, skip_channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.reduce = conv_block(volume_channels, width, 1)
        # skip_channels: encoder widths at H, H/2, H/4 (shallow to deep)
        self.steps = nn.ModuleList(
            conv_block(width + skip, width, 3) for skip in reversed(list(skip_channels))
        )
        self.out = nn.Conv2d(width, 1, 1, bias=True)

    def forward(self, volume: Tensor, skips: Sequence[Tensor]) -> Tensor:
        x = self.reduce(volume)
        for step, skip in zip(self.steps, reversed(list(skips)), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = step(torch.cat([x, skip], dim=1))
        return self.out(x)


class SegDecNet(nn.Module):
    """The segmentation subnet, the decision subnet and the gradient-flow adjustment.

    ``channels`` are the widths of the three encoder stages (32, 64, 64 in the paper),
    ``volume_channels``/``volume_kernel`` the 15×15 convolution that makes the volume
    (1024, 15), ``decision_channels`` the three decision convolutions (8, 16, 32).
    ``gradient_adjustment`` may be flipped at run time.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 64),
        volume_channels: int = 1024,
        volume_kernel: int = 15,
        decision_channels: Sequence[int] = (8, 16, 32),
        gradient_adjustment: bool = True,
        full_resolution: bool = False,
        full_resolution_width: int = 32,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.in_channels = in_channels
        self.gradient_adjustment = gradient_adjustment
        self.stage1 = conv_block(in_channels, c1, 5)
        self.stage2 = nn.Sequential(
            conv_block(c1, c2, 5), conv_block(c2, c2, 5), conv_block(c2, c2, 5)
        )
        self.stage3 = nn.Sequential(*(conv_block(c2 if i == 0 else c3, c3, 5) for i in range(4)))
        self.volume = conv_block(c3, volume_channels, volume_kernel, conv=VolumeConv2d)
        # The 1/8 segmentation head. Its FeatureNorm bias is learned (docs/method.md §2): without
        # it every map would be normalised to zero mean, i.e. probability 0.5 on clean images.
        self.seg_mask = (
            None
            if full_resolution
            else nn.Sequential(nn.Conv2d(volume_channels, 1, 1, bias=False), FeatureNorm(1))
        )
        d1, d2, d3 = decision_channels
        self.decision_features = nn.Sequential(
            nn.MaxPool2d(2),
            conv_block(volume_channels + 1, d1, 5),
            nn.MaxPool2d(2),
            conv_block(d1, d2, 5),
            nn.MaxPool2d(2),
            conv_block(d2, d3, 5),
        )
        self.decision_fc = nn.Linear(2 * d3 + 2, 1)
        self.full_resolution_head = (
            FullResolutionHead(volume_channels, (c1, c2, c3), full_resolution_width)
            if full_resolution
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def convolutions_channels_last(self) -> None:
        """Store the convolutions' weights NHWC (channels_last), as oneDNN and cuDNN read
        them in an NHWC network. FeatureNorm's per-channel scale and bias ([1, C, 1, 1]) keep
        their layout: ``Module.to(memory_format=...)`` would give them NHWC strides, which
        their gradients do not have, and DDP copies each such gradient into its buckets,
        warning "Grad strides do not match bucket view strides"."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)

    @property
    def full_resolution(self) -> bool:
        return self.full_resolution_head is not None

    @property
    def volume_im2col(self) -> bool:
        """Whether the volume convolution runs as im2col and matrix products
        (:class:`VolumeConv2d`); off unless set."""
        return self.volume[0].im2col

    @volume_im2col.setter
    def volume_im2col(self, on: bool) -> None:
        self.volume[0].im2col = on

    @property
    def timed_volume_im2col(self) -> bool:
        """``model.volume_im2col=auto``'s choice: im2col for a float32 input on a CPU, where
        it was timed faster (:class:`VolumeConv2d`); off unless set."""
        return self.volume[0].im2col_in_float32_on_cpu

    @timed_volume_im2col.setter
    def timed_volume_im2col(self, on: bool) -> None:
        self.volume[0].im2col_in_float32_on_cpu = on

    def volume_input_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """The shape of the volume convolution's input for a batch of ``image_shape``
        [B, C, H, W]: the last encoder stage's map, three 2x2 poolings down."""
        batch, _, height, width = image_shape
        return batch, self.volume[0].in_channels, height // OUTPUT_STRIDE, width // OUTPUT_STRIDE

    def forward(self, x: Tensor) -> SegDecOutput:
        check_input_size(x.shape[-2], x.shape[-1])
        f1 = self.stage1(x)
        f2 = self.stage2(F.max_pool2d(f1, 2))
        f3 = self.stage3(F.max_pool2d(f2, 2))
        volume = self.volume(F.max_pool2d(f3, 2))
        if self.seg_mask is not None:
            segmentation = self.seg_mask(volume)
            seg_low = segmentation
        else:
            segmentation = self.full_resolution_head(volume, (f1, f2, f3))
            # The decision subnet works at 1/8; a max keeps a crack one pixel wide visible
            # there, where an average over the 8x8 cell would drown it in background.
            seg_low = F.max_pool2d(segmentation, OUTPUT_STRIDE)

        # Gradient-flow adjustment: the decision loss trains the decision subnet alone. A
        # detached input also spares backward the subnet's input gradients, which would be
        # multiplied by 0.
        volume_in, seg_in = (
            (volume.detach(), seg_low.detach()) if self.gradient_adjustment else (volume, seg_low)
        )
        features = self.decision_features(concat_channels(volume_in, seg_in))
        pooled = torch.cat(
            [
                features.amax(dim=(2, 3)),
                features.mean(dim=(2, 3)),
                seg_in.amax(dim=(2, 3)),
                seg_in.mean(dim=(2, 3)),
            ],
            dim=1,
        )
        return SegDecOutput(self.decision_fc(pooled).squeeze(1), segmentation)
