"""The losses of METHOD.md §4 and their dynamically balanced schedule."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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


def segmentation_loss(logits: Tensor, target: Tensor, weight: Tensor, segmented: Tensor) -> Tensor:
    """Weighted BCE averaged per sample, then over the segmented samples of the batch only.

    Weak positives (``segmented`` False) contribute nothing, and the batch mean does not
    count them, so adding a weak positive to a batch leaves the loss unchanged.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    per_sample = per_pixel.flatten(1).mean(dim=1)
    mask = segmented.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def decision_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """BCE between the decision logit and the image label."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def total_loss(loss_seg: Tensor, loss_dec: Tensor, lambda_seg: float, lambda_dec: float) -> Tensor:
    return lambda_seg * loss_seg + lambda_dec * loss_dec
