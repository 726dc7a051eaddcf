"""Image- and pixel-level metrics of SegDecNet (docs/method.md section 7).

Pixel metrics are built from per-image histograms of the segmentation probabilities: a
histogram is small (2 x NUM_BINS integers per image), so the test split never has to be held
in memory, and histograms from several DDP ranks can simply be gathered and concatenated.
From a histogram, Dice and IoU follow for every threshold ``k / NUM_BINS`` at once, which is
what choosing the segmentation threshold on the validation split needs.

Image metrics use torchmetrics' functional API on the decision scores.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from crackseg.errors import plural

log = logging.getLogger(__name__)

NUM_BINS = 100
"""Thresholds are ``k / NUM_BINS`` for k = 0..NUM_BINS-1; a pixel is a defect if prob >= t."""

DEFAULT_THRESHOLD = 0.5
"""Used where no threshold can be chosen (a split without positives or without negatives)."""


# --------------------------------------------------------------------------- pixel level


def truth_mask(mask: Tensor) -> Tensor:
    """The ground truth Dice and IoU are scored against: the undilated mask, which resizing
    to the input size made soft, taken at one half (the report's notes say so)."""
    return mask > 0.5


def pixel_histograms(probs: Tensor, targets: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """Per-image histograms of pixel probabilities: all pixels and target (defect) pixels.

    ``probs`` [B, ...] in [0, 1] and ``targets`` [B, ...] (bool or 0/1) of the same shape.
    Returns int64 [B, 2, num_bins]: ``[:, 0, k]`` counts all pixels with prob in bin k,
    ``[:, 1, k]`` the target pixels among them. Bin k is ``[k/num_bins, (k+1)/num_bins)``
    with the edges in the probabilities' own precision, as ``probs >= threshold`` compares
    them; the last bin includes 1.0. Runs on the tensors' device with one ``bincount`` over
    the whole batch (each row's bins offset by ``num_bins``), so it is cheap enough to call
    in every test step.
    """
    if probs.shape != targets.shape:
        raise ValueError(
            f"pixel_histograms: probs {tuple(probs.shape)} and targets "
            f"{tuple(targets.shape)} differ in shape"
        )
    batch = probs.shape[0]
    flat_probs = probs.detach().reshape(batch, -1)
    if not flat_probs.is_floating_point():
        flat_probs = flat_probs.float()
    flat_probs = torch.nan_to_num(flat_probs, nan=0.0)
    flat_targets = targets.detach().reshape(batch, -1).bool()
    # Bin k holds the probabilities >= every edge up to k / num_bins, the edges compared in
    # the probabilities' precision as ``probs >= threshold`` compares them: ``floor(p * 100)``
    # would put p = 0.08999999 (a float32 just below 0.09) into bin 9 by rounding.
    edges = torch.arange(1, num_bins, dtype=torch.float64, device=flat_probs.device) / num_bins
    bins = torch.bucketize(flat_probs, edges.to(flat_probs.dtype), right=True)
    offsets = torch.arange(batch, device=bins.device).unsqueeze(1) * num_bins
    index = bins + offsets
    size = batch * num_bins
    all_counts = torch.bincount(index.reshape(-1), minlength=size)
    target_counts = torch.bincount(index[flat_targets], minlength=size)
    return torch.stack(
        [all_counts.view(batch, num_bins), target_counts.view(batch, num_bins)], dim=1
    ).long()


def _reverse_cumsum(x: Tensor) -> Tensor:
    """Entry k = sum of entries k..end: the count of pixels with prob >= k / num_bins."""
    return x.flip(-1).cumsum(-1).flip(-1)


def dice_iou_curves(histograms: Tensor) -> tuple[Tensor, Tensor]:
    """Dice and IoU of every image at every threshold ``k / num_bins``.

    ``histograms`` int [N, 2, num_bins] (from :func:`pixel_histograms`). Returns float64
    (dice [N, num_bins], iou [N, num_bins]).

    Edge cases, chosen on purpose: an empty target with an empty prediction is a perfect
    answer, so Dice = IoU = 1 (not 0/0 = NaN); an empty prediction on a non-empty target
    (or a prediction on an empty target) scores 0. No NaN ever comes out, so means and
    standard deviations over images are always defined.
    """
    hist = histograms.double()
    predicted = _reverse_cumsum(hist[:, 0])
    intersection = _reverse_cumsum(hist[:, 1])
    target = hist[:, 1].sum(-1, keepdim=True)
    total = predicted + target
    union = total - intersection
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * intersection / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(total), intersection / union.clamp_min(1))
    return dice, iou


def _bin_index(threshold: float, num_bins: int) -> int:
    """The bin edge nearest to ``threshold`` (thresholds are bin edges k / num_bins)."""
    return int(min(max(round(float(threshold) * num_bins), 0), num_bins - 1))


def has_mask_pixels(histograms: Tensor) -> Tensor:
    """Which images' targets mark a pixel: a positive without one (an empty mask, a weak
    positive, a crack too thin to survive the resize) has no Dice to score, as any answer
    is either a perfect 1 (nothing predicted) or 0, whatever the image holds."""
    return histograms[:, 1].sum(-1) > 0


def choose_seg_threshold(histograms: Tensor) -> tuple[float, float]:
    """Threshold maximising mean Dice over the VALIDATION positives, and that mean Dice.

    Choosing it on validation keeps the test Dice honest (docs/method.md section 7). Ties go to
    the lowest threshold. Positives without a mask pixel are left out; without positives
    that have one nothing can be chosen: returns (0.5, nan) and the caller says so in the
    report.
    """
    histograms = histograms[has_mask_pixels(histograms)]
    if histograms.shape[0] == 0:
        log.warning(
            "No validation positive with mask pixels: segmentation threshold falls back to %s",
            DEFAULT_THRESHOLD,
        )
        return DEFAULT_THRESHOLD, math.nan
    num_bins = histograms.shape[-1]
    dice, _ = dice_iou_curves(histograms)
    mean_dice = dice.mean(0)
    best = int(torch.argmax(mean_dice))
    return best / num_bins, float(mean_dice[best])


def dice_iou_at(histograms: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Per-image (dice [N], iou [N]) at the bin threshold nearest to ``threshold``."""
    k = _bin_index(threshold, histograms.shape[-1])
    dice, iou = dice_iou_curves(histograms)
    return dice[:, k], iou[:, k]


def pixel_metrics(histograms: Tensor, threshold: float) -> dict[str, Any]:
    """Dice / IoU mean and std over the TEST positives at the validation-chosen threshold.

    Positives without a mask pixel are counted apart (``positives_without_mask``) and left
    out: they would score a Dice of 1 for predicting nothing. ``scored`` says which rows
    were scored. Standard deviations are population ones (ddof = 0), as numpy computes
    them by default. No positive scored: the means and stds are nan. ``dice_per_image`` /
    ``iou_per_image`` are numpy arrays of the scored rows in the histograms' order, for
    naming and choosing the dice panels.
    """
    num_bins = histograms.shape[-1]
    seg_threshold = _bin_index(threshold, num_bins) / num_bins
    scored = has_mask_pixels(histograms)
    counted = {
        "positives_without_mask": int((~scored).sum()),
        "scored": scored.cpu().numpy(),
    }
    if counted["positives_without_mask"]:
        log.warning(
            "%s without a mask pixel: counted apart, not in Dice and IoU",
            plural(counted["positives_without_mask"], "test positive"),
        )
    histograms = histograms[scored]
    if histograms.shape[0] == 0:
        log.warning("No test positive with mask pixels: Dice and IoU are undefined (nan)")
        empty = np.zeros(0, dtype=np.float64)
        return {
            **counted,
            "seg_threshold": seg_threshold,
            "dice_mean": math.nan,
            "dice_std": math.nan,
            "iou_mean": math.nan,
            "iou_std": math.nan,
            "dice_per_image": empty,
            "iou_per_image": empty.copy(),
        }
    dice, iou = dice_iou_at(histograms, threshold)
    dice_np = dice.cpu().numpy()
    iou_np = iou.cpu().numpy()
    return {
        **counted,
        "seg_threshold": seg_threshold,
        "dice_mean": float(dice_np.mean()),
        "dice_std": float(dice_np.std()),
        "iou_mean": float(iou_np.mean()),
        "iou_std": float(iou_np.std()),
        "dice_per_image": dice_np,
        "iou_per_image": iou_np,
    }


# --------------------------------------------------------------------------- image level


def _has_curves(scores: Tensor, labels: Tensor) -> bool:
    """Whether ROC and PR curves exist: both classes, and every score a number (torchmetrics
    would take a NaN for a logit and apply a sigmoid to every score)."""
    num_pos = int(labels.sum())
    return 0 < num_pos < labels.numel() and bool(torch.isfinite(scores).all())


def _why_no_curves(scores: Tensor, labels: Tensor) -> str:
    """What :func:`_has_curves` found missing, for a warning."""
    not_numbers = int((~torch.isfinite(scores)).sum())
    if not_numbers:
        return (
            f"{not_numbers} of {scores.numel()} decision scores are not numbers (nan or inf: "
            "the weights diverged?)"
        )
    num_pos = int(labels.sum())
    return (
        f"Image metrics on a split with {num_pos} positives and "
        f"{labels.numel() - num_pos} negatives"
    )


def best_f_threshold(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """The PR-curve threshold with the best F-measure, and that F-measure.

    Ties go to the lowest threshold. A split with only one class, or with a score that is
    not a number, has no PR curve: returns (DEFAULT_THRESHOLD, nan).
    """
    scores_t, labels_t = _flat(scores, labels)
    if not _has_curves(scores_t, labels_t):
        return DEFAULT_THRESHOLD, math.nan
    thresholds = torch.unique(scores_t)  # ascending: the PR curve's thresholds
    positives = torch.sort(scores_t[labels_t == 1]).values
    negatives = torch.sort(scores_t[labels_t == 0]).values
    # F = 2TP / (2TP + FP + FN) from the counts at each threshold (score >= it): thresholds
    # of equal F get the same number, so the first (lowest) of them wins, which an F made of
    # float32 precision and recall would leave to their rounding.
    tp = len(positives) - torch.searchsorted(positives, thresholds)
    fp = len(negatives) - torch.searchsorted(negatives, thresholds)
    fn = len(positives) - tp
    f = (2 * tp).double() / (2 * tp + fp + fn).double()
    best = int(torch.argmax(f))
    return float(thresholds[best]), float(f[best])


def score_text(score: float) -> str:
    """A decision score as ``test_scores.csv`` and ``predictions.csv`` write it: the shortest
    decimal that reads back as the same float32, so what is computed from the file (a
    sweep's folds pooled) ranks the images as the run did; six decimals would tie every
    score below 5e-7 at 0."""
    return np.format_float_positional(np.float32(score), trim="-")


def confusion_at(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, Any]:
    """TP, FP, TN, FN and the F-measure with positive = score >= ``threshold``."""
    scores_t, labels_t = _flat(scores, labels)
    predicted = scores_t >= threshold
    actual = labels_t.bool()
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    tn = int((~predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    denominator = 2 * tp + fp + fn
    f_measure = 2 * tp / denominator if denominator else math.nan
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "f_measure": f_measure}


def _flat(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    scores_t = torch.as_tensor(scores).detach().reshape(-1).float().cpu()
    labels_t = torch.as_tensor(labels).detach().reshape(-1).cpu().long()
    if scores_t.numel() != labels_t.numel():
        raise ValueError(f"{scores_t.numel()} decision scores but {labels_t.numel()} labels")
    return scores_t, labels_t


def image_metrics(scores: Tensor, labels: Tensor, threshold: float | None = None) -> dict[str, Any]:
    """Image-level metrics of the decision scores (sigmoid of the decision logits).

    Returns ``image_auc``, ``image_ap`` (torchmetrics' average precision, the step-wise sum
    of precision over recall steps), ``image_ap_trapezoid`` (the area under the
    precision-recall curve by the trapezoidal rule, the published code's AP: scikit-learn's
    ``auc(recall, precision)``), ``best_f_threshold`` and ``best_f_measure`` (the
    threshold these scores would choose, docs/method.md §7), ``image_threshold`` (``threshold``
    when given, e.g. one chosen on the validation split, else the best-F one), and at that
    threshold ``f_measure`` and ``tp``, ``fp``, ``tn``, ``fn`` (positive = score >=
    threshold), plus ``roc`` = (fpr, tpr) and ``pr`` = (precision, recall) for the plots.

    A split with only positives or only negatives, or with scores that are not numbers (a
    training that diverged), has no ROC / PR curve: AUC and AP are nan (torchmetrics is not
    called, so it neither warns nor returns a misleading number), the best-F threshold is
    0.5 and the counts are still computed (a NaN score counts as negative).
    """
    scores_t, labels_t = _flat(scores, labels)
    empty = np.zeros(0, dtype=np.float32)
    roc: tuple[np.ndarray, np.ndarray] = (empty, empty.copy())
    pr: tuple[np.ndarray, np.ndarray] = (empty.copy(), empty.copy())
    if _has_curves(scores_t, labels_t):
        auc = float(binary_auroc(scores_t, labels_t))
        ap = float(binary_average_precision(scores_t, labels_t))
        fpr, tpr, _ = binary_roc(scores_t, labels_t)
        precision, recall, _ = binary_precision_recall_curve(scores_t, labels_t)
        ap_trapezoid = float(torch.trapezoid(precision, recall).abs())
        roc = (fpr.numpy(), tpr.numpy())
        pr = (precision.numpy(), recall.numpy())
    else:
        log.warning("%s: AUC and AP are undefined (nan)", _why_no_curves(scores_t, labels_t))
        auc = ap = ap_trapezoid = math.nan
    best_threshold, best_f = best_f_threshold(scores_t, labels_t)
    chosen = best_threshold if threshold is None else float(threshold)
    return {
        "image_auc": auc,
        "image_ap": ap,
        "image_ap_trapezoid": ap_trapezoid,
        "best_f_threshold": best_threshold,
        "best_f_measure": best_f,
        "image_threshold": chosen,
        **confusion_at(scores_t, labels_t, chosen),
        "roc": roc,
        "pr": pr,
    }


# --------------------------------------------------------------------------- serialisation

_DROP = object()


def _plain(value: Any) -> Any:
    """A JSON-ready scalar, or a sentinel when the value is an array (to be dropped)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return _DROP
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0:
            return _DROP
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return json_ready(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_ready(metrics: dict) -> dict:
    """Metrics made fit for ``metrics.json``: arrays (curves, per-image values) dropped,
    tensors and numpy scalars turned to Python numbers, nan/inf to None (JSON has no nan).
    Nested dicts (e.g. split sizes) are converted the same way."""
    out = {}
    for key, value in metrics.items():
        plain = _plain(value)
        if plain is not _DROP:
            out[str(key)] = plain
    return out
