"""The network's two layers of its own, each with kernels faster than the formula's:
FeatureNorm (docs/method.md §2), on torch's batch-norm kernels, and the volume convolution,
which can run as im2col and a matrix product. ``crackseg.models.segdecnet`` builds the
network from them. Importing the module gives torch's FLOP counter the formula of that
im2col kernel (at the end of the file).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils import flop_counter


def _memory_format(x: Tensor) -> torch.memory_format:
    """NHWC (``channels_last``) where ``x`` is laid out so, else NCHW."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def concat_channels(a: Tensor, b: Tensor) -> Tensor:
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
