"""The losses of docs/method.md §4, their dynamically balanced schedule and their batch reduction.

Losses are computed per sample first, so that the two batch conventions are one switch:

- ``mean`` (the default): the segmentation loss is averaged over the segmented samples of
  the batch, the decision loss over all of them, as most code does (under DDP, over those
  of each process, whose means DDP then averages);
- ``sum``: per-sample losses are added up, which is what the published code's accumulation
  of per-sample gradients amounts to. At batch size B it steps B times further than ``mean``
  (exactly, for plain SGD, when every sample of the batch is segmented), so a learning rate
  converts as ``lr_mean = B * lr_sum``. Under DDP, B is the batch of all processes: DDP
  averages the processes' gradients, so :func:`segdec_loss` multiplies a summed loss by
  their number to keep the sum over the whole batch.

:func:`segdec_loss` is the loss the training step minimises.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from crackseg.data.data_settings import OUTPUT_STRIDE
from crackseg.models.module_settings import BATCH_REDUCTIONS, DECISION_TARGETS

#: Reflection padding and window of the pad-and-average downsampling to the output's 1/8.
DOWNSAMPLE_PAD = 8
DOWNSAMPLE_WINDOW = 17


def downsample_to_output(labels: Tensor) -> Tensor:
    """[B, 1, H, W] -> [B, 1, H/8, W/8]: reflection-pad by 8, average-pool 17×17 with stride 8.

    Masks become soft targets in [0, 1]; weight maps are averaged the same way.
    """
    padded = F.pad(labels, (DOWNSAMPLE_PAD,) * 4, mode="reflect")
    return F.avg_pool2d(padded, DOWNSAMPLE_WINDOW, stride=OUTPUT_STRIDE)


def loss_weights(
    epoch: int, max_epochs: int, delta: float, dynamic_balance: bool
) -> tuple[float, float]:
    """(λ_seg, λ_dec) at ``epoch`` (from 0) of ``max_epochs``.

    Dynamically balanced: λ_seg = 1 - e/E and λ_dec = δ·e/E, so the decision head takes
    over once the segmentation has learnt; otherwise λ_seg = 1 and λ_dec = δ.
    """
    if not dynamic_balance:
        return 1.0, delta
    progress = epoch / max_epochs
    return 1.0 - progress, delta * progress


def segmentation_losses(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted BCE of each sample [B], averaged over its pixels."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    return per_pixel.flatten(1).mean(dim=1)


def decision_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE of each sample's decision logit [B] against its target."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")


def decision_targets(
    labels: Tensor,
    soft_mask: Tensor,
    segmented: Tensor,
    mask_known: Tensor,
    mode: str = "label",
) -> Tensor:
    """What the decision head is trained towards, per sample.

    ``label``: the image label (the paper). Otherwise the maximum of the sample's downsampled
    soft mask ``soft_mask`` [B, 1, h, w], which is below 1 for a crack a few pixels wide
    (about w/17 for a straight one w pixels wide), where the mask counts, and the label
    elsewhere: ``mask_max`` takes the mask of the ``segmented`` samples (docs/method.md §4:
    weak positives train towards their label), ``mask_max_all`` that of every sample whose
    mask was read (``mask_known``), weak positives included, as the published training code
    does (it loads every positive's mask; its weak runs only drop the segmentation loss).
    """
    if mode == "label":
        return labels
    if mode not in DECISION_TARGETS:
        raise ValueError(f"decision target must be one of {DECISION_TARGETS}, not {mode!r}")
    from_mask = mask_known if mode == "mask_max_all" else segmented
    return torch.where(from_mask, soft_mask.amax(dim=(1, 2, 3)).to(labels.dtype), labels)


def reduce_batch(per_sample: Tensor, included: Tensor, reduction: str = "mean") -> Tensor:
    """Sum, or mean, of the per-sample losses of the ``included`` samples (0 if there are none).

    Written with a multiplication instead of indexing, so it never waits for the device.
    """
    mask = included.to(per_sample.dtype)
    total = (per_sample * mask).sum()
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"batch reduction must be one of {BATCH_REDUCTIONS}, not {reduction!r}")
    return total / mask.sum().clamp(min=1.0)


class SegDecLoss(NamedTuple):
    """The loss to minimise, and the per-sample losses [B] it was made of."""

    total: Tensor
    segmentation: Tensor
    decision: Tensor


def segdec_loss(
    seg_logits: Tensor,
    seg_target: Tensor,
    seg_weight: Tensor,
    dec_logits: Tensor,
    dec_target: Tensor,
    segmented: Tensor,
    lambdas: tuple[float, float],
    reduction: str = "mean",
    processes: int = 1,
) -> SegDecLoss:
    """``L = λ_seg · L_seg + λ_dec · L_dec`` of a batch (docs/method.md §4), in float32.

    ``lambdas`` are (λ_seg, λ_dec) of :func:`loss_weights`; weak positives (``segmented``
    False) add nothing to ``L_seg``. ``processes``: how many DDP processes each ran a part of
    the batch (a summed loss is scaled by it, as DDP averages their gradients).
    """
    seg = segmentation_losses(seg_logits.float(), seg_target, seg_weight)
    dec = decision_losses(dec_logits.float(), dec_target)
    loss_seg = reduce_batch(seg, segmented, reduction)
    loss_dec = reduce_batch(dec, torch.ones_like(segmented), reduction)
    lambda_seg, lambda_dec = lambdas
    total = lambda_seg * loss_seg + lambda_dec * loss_dec
    if reduction == "sum":
        total = total * processes
    return SegDecLoss(total, seg, dec)
