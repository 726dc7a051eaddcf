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
from torch.utils import flop_counter

from crackseg.errors import ConfigError

#: The segmentation output is at 1/8 of the input; the decision subnet pools three times more.
OUTPUT_STRIDE = 8
DECISION_STRIDE = OUTPUT_STRIDE * 8


def _memory_format(x: Tensor) -> torch.memory_format:
    """NHWC (``channels_last``) where ``x`` is laid out so, else NCHW."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def _concat_channels(a: Tensor, b: Tensor) -> Tensor:
    """``torch.cat([a, b], dim=1)`` in ``a``'s layout. cat writes NCHW unless every input's
    strides say NHWC, and a one-channel map is both, its strides either way: in an NHWC
    network the decision subnet's input would be transposed on the way (10 ms of a 260 ms
    bf16 step at 640x232)."""
    joined = torch.empty(
        (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:]),
        dtype=torch.promote_types(a.dtype, b.dtype),
        device=a.device,
        memory_format=_memory_format(a),
    )
    joined[:, : a.shape[1]] = a
    joined[:, a.shape[1] :] = b
    return joined


def _one_sample_pieces(x: Tensor) -> list[Tensor]:
    """``x`` as one-sample views whose channels are its (sample, channel) pairs, so that batch
    norm's per-channel statistics over a piece are FeatureNorm's. In NCHW the whole batch is
    one piece (``B * C`` channels); in NHWC a piece is a sample."""
    if x.is_contiguous():
        return [x.view(1, -1, *x.shape[2:])]
    return list(x.split(1))


def _rows(count: int, *flat: Tensor) -> list[tuple[Tensor, ...]]:
    """The per-(sample, channel) tensors ``flat`` cut into ``count`` rows of views, a row for
    each piece of :func:`_one_sample_pieces`: ``[(a0, b0, ...), (a1, b1, ...), ...]``."""
    return list(zip(*(tensor.chunk(count) for tensor in flat), strict=True))


class _FeatureNormFunction(torch.autograd.Function):
    """FeatureNorm on torch's batch-norm kernels, with its own backward.

    Batch norm in training mode normalises each channel over the batch and the pixels; over
    one sample, that is FeatureNorm's per-sample, per-channel statistics
    (:func:`_one_sample_pieces`). The kernels read a bf16 input directly and compute in
    float32 (given float32 parameters), in NCHW and NHWC alike: forward takes the statistics
    in one kernel (``torch.batch_norm_update_stats``, the two-pass mean and biased variance)
    and writes the output in another (inference-mode batch norm with
    ``running_var = std + eps``, so that its ``sqrt(running_var)`` is FeatureNorm's ``d``);
    backward is one ``native_batch_norm_backward``. No float32 copy of an activation is
    made: on the CPU 4x faster than float32 passes composed from torch operations in bf16,
    1.6x in float32 (benchmarks/README.md, "FeatureNorm on batch-norm kernels").

    For ``y = scale * xc / d + bias`` with ``xc = x - mean``, ``d = sqrt(std + eps)`` and
    ``std`` the unbiased standard deviation over the ``n`` pixels of a channel, the
    gradients, with ``a = scale / d`` and ``S = sum(dy * xc)``, are
    ``dbias = sum(dy)``, ``dscale = sum(S / d)`` (summed over the batch) and
    ``dx = a * (dy - mean(dy)) - scale * S / (2 d^3 (n - 1) std) * xc``; the last term is 0
    where ``std`` is 0, as in ``torch.std``'s own backward. Batch norm's backward, with
    weight ``g`` and inverse deviation ``r``, is ``g r (dy - mean(dy)) - g r^3 S / n * xc``:
    the two agree for ``r = sqrt(n / (2 (n - 1) std)) / d`` and ``g = a / r``, and its
    weight gradient ``sum(dy * xc * r)`` gives ``S``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:  # noqa: ANN001
        n = x.shape[2] * x.shape[3]
        # Every statistic is per (sample, channel), [B, C] flattened: a piece takes a row.
        scale = scale.flatten().float().repeat(x.shape[0])
        bias = bias.flatten().float().repeat(x.shape[0])
        # Float32 running statistics make the kernel return float32 ones for a bf16 input;
        # with momentum 0 it leaves them as they are.
        running_mean, running_var = torch.zeros_like(scale), torch.ones_like(scale)
        mean, variance, y = torch.empty_like(scale), torch.empty_like(scale), torch.empty_like(x)
        pieces = _one_sample_pieces(x)
        rows = len(pieces)
        with torch.autocast(x.device.type, enabled=False):
            for piece, (m, v), (rm, rv) in zip(
                pieces,
                _rows(rows, mean, variance),
                _rows(rows, running_mean, running_var),
                strict=True,
            ):
                torch.ops.aten.batch_norm_update_stats.out(piece, rm, rv, 0.0, out0=m, out1=v)
            std = torch.sqrt(variance * n / (n - 1))  # unbiased; NaN for one pixel, as torch.std
            # Outputs unused here, yet two tensors: CUDA's kernel writes the mean into one, the
            # inverse deviation into the other, then normalises with both.
            unused = {
                name: torch.empty(0, device=x.device) for name in ("save_mean", "save_invstd")
            }
            for piece, piece_y, params in zip(
                pieces,
                _one_sample_pieces(y),
                _rows(rows, scale, bias, mean, std + eps),
                strict=True,
            ):
                torch.ops.aten.native_batch_norm.out(
                    piece, *params, False, 0.0, 0.0, out=piece_y, **unused
                )
        ctx.save_for_backward(x, scale, mean, std, torch.sqrt(std + eps))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # noqa: ANN001
        x, scale, mean, std, d = ctx.saved_tensors
        n = x.shape[2] * x.shape[3]
        # The kernel loses precision where dy's layout is not x's (NCHW against NHWC).
        dy = dy.contiguous(memory_format=_memory_format(x))
        # r is free where std is 0 (x - mean is 0 there): 1 keeps it finite.
        r = torch.where(std > 0, torch.sqrt(n / (2 * (n - 1) * std)) / d, 1.0)
        g = scale / (d * r)
        pieces = _one_sample_pieces(x)
        dxs, weighted_dots, sums_dy = [], [], []
        with torch.autocast(x.device.type, enabled=False):
            for piece, piece_dy, (piece_g, m, piece_r) in zip(
                pieces, _one_sample_pieces(dy), _rows(len(pieces), g, mean, r), strict=True
            ):
                dx, weighted_dot, sum_dy = torch.ops.aten.native_batch_norm_backward(
                    piece_dy, piece, piece_g, None, None, m, piece_r, True, 0.0, [True] * 3
                )
                dxs.append(dx), weighted_dots.append(weighted_dot), sums_dy.append(sum_dy)
            # (The kernel's out= form would write each piece in place, through a copy.)
            dx = dxs[0].view(x.shape) if len(dxs) == 1 else torch.cat(dxs)
            per_sample = (x.shape[0], 1, x.shape[1], 1, 1)
            dscale = (torch.cat(weighted_dots) / (r * d)).view(per_sample).sum(dim=0)
            dbias = torch.cat(sums_dy).view(per_sample).sum(dim=0)
        return dx, dscale, dbias, None


class FeatureNorm(nn.Module):
    """Per-sample, per-channel normalisation over the spatial axes.

    ``y = scale * (x - mean) / sqrt(std + eps) + bias``, ``std`` the unbiased standard
    deviation: the square root of the standard deviation is what the published
    implementation does and is kept to reproduce it. Computed in float32 whatever the
    input's precision: under bf16 autocast, ``x - mean`` in bf16 loses the small deviations
    that the normalisation then magnifies (a channel whose standard deviation is small next
    to its mean); the result is cast back.

    Eager, it runs on torch's batch-norm kernels (:class:`_FeatureNormFunction`). Traced by
    ``torch.compile`` or ``torch.export`` (the ONNX export), it is the formula composed from
    torch operations, which the compiler fuses and every exporter knows; the kernels'
    statistics have no tracing support.
    """

    def __init__(self, num_channels: int, eps: float = 0.001) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return feature_norm_formula(x, self.scale, self.bias, self.eps)
        return _FeatureNormFunction.apply(x, self.scale, self.bias, self.eps)


def feature_norm_formula(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    """FeatureNorm composed from torch operations, in float32, cast back to ``x``'s dtype."""
    with torch.autocast(x.device.type, enabled=False):
        x32 = x.float()
        mean = x32.mean(dim=(2, 3), keepdim=True)
        std = x32.std(dim=(2, 3), keepdim=True)
        y = scale * (x32 - mean) / torch.sqrt(std + eps) + bias
    return y.to(x.dtype)


class VolumeConv2d(nn.Conv2d):
    """The convolution that makes the volume (15x15, 64 -> 1024 in the paper), which can run
    as im2col and a matrix product per sample (torch's own ``thnn_conv2d``) instead of
    oneDNN's direct convolution (``model.volume_im2col``). Which is faster depends on the
    machine and the map's shape: in float32 on an Intel Xeon with AMX, forward and backward
    on the 80x29 map of a 640x232 input, oneDNN reached 64-72 % of the matrix product's rate
    and im2col 76 %, but on an 80x80 map oneDNN was 12 % faster (benchmarks/README.md). The
    parameters, and so the checkpoint keys, are nn.Conv2d's.

    ``im2col`` runs it so always (``model.volume_im2col=true``); ``im2col_in_float32_on_cpu``
    only where ``auto`` timed it faster: on a float32 input on a CPU (outside autocast), so a
    model trained so still runs cuDNN's kernel on a GPU and oneDNN's in bf16. Inference keeps
    the choice: forward alone im2col tied at batch 1 and was 16 % faster at batch 16; it runs
    there in slices of a sample per thread, so as not to unfold the whole batch at once
    (benchmarks/README.md)."""

    im2col = False
    im2col_in_float32_on_cpu = False

    def uses_im2col(self, x: Tensor) -> bool:
        if torch.compiler.is_compiling():  # the compiler picks its own
            return False
        if self.im2col:
            return True
        return (
            self.im2col_in_float32_on_cpu
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.uses_im2col(x):
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled(x.device.type):  # autocast does not know this operator
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        threads = torch.get_num_threads()
        if torch.is_grad_enabled() or x.device.type != "cpu" or len(x) <= threads:
            return self._im2col(x, weight)
        # Inference in slices of a sample per thread: thnn_conv2d unfolds its whole batch at
        # once (134 MB a sample on the 80x29 map) and gives each thread whole samples. At
        # batch 16 on 2 threads 2.6 -> 1.0 GB, 2-3 % slower (benchmarks/README.md).
        return torch.cat([self._im2col(part, weight) for part in x.split(threads)])

    def _im2col(self, x: Tensor, weight: Tensor) -> Tensor:
        return torch.ops.aten.thnn_conv2d(
            x, weight, self.kernel_size, self.bias, self.stride, self.padding
        )


def _thnn_conv2d_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """FLOPs of ``thnn_conv2d``'s forward (``_slow_conv2d_forward``): the convolution's."""
    return flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


# torch's FLOP counter (FlopCounterMode, which Lightning's model summary runs) gives
# _slow_conv2d_forward the formula of aten.convolution, whose arguments differ (the forward
# has no ``transposed``): it raised TypeError on the volume as im2col. Counted as the plain
# convolution it computes.
flop_counter.flop_registry[torch.ops.aten._slow_conv2d_forward] = flop_counter.shape_wrapper(
    _thnn_conv2d_flops
)


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
        features = self.decision_features(_concat_channels(volume_in, seg_in))
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


def check_input_size(height: int, width: int) -> None:
    """Refuse sizes the network cannot take, with the reason.

    The decision subnet's last map is 1/64 of the input; FeatureNorm needs a standard
    deviation there, so that map must hold at least 2 pixels (e.g. 64×128, 128×128).
    """
    for name, size in (("height", height), ("width", width)):
        if size % OUTPUT_STRIDE:
            raise ConfigError(
                f"input {name} {size} is not divisible by {OUTPUT_STRIDE} "
                f"(set data.input_{name} to a multiple of {OUTPUT_STRIDE})"
            )
        if size < DECISION_STRIDE:
            raise ConfigError(
                f"input {name} {size} is too small: the decision subnet pools to 1/"
                f"{DECISION_STRIDE}, so height and width must be at least {DECISION_STRIDE}"
            )
    if (height // DECISION_STRIDE) * (width // DECISION_STRIDE) < 2:
        raise ConfigError(
            f"input {height}x{width} is too small: the decision subnet's last map must hold "
            f"at least 2 pixels (e.g. {DECISION_STRIDE}x{2 * DECISION_STRIDE})"
        )
