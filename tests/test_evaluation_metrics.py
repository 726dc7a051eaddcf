"""Image and pixel metrics and the plots, checked against values worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from crackseg.evaluation.metrics import (
    NUM_BINS,
    best_f_threshold,
    choose_seg_threshold,
    dice_iou_at,
    dice_iou_curves,
    image_metrics,
    json_ready,
    pixel_histograms,
    pixel_metrics,
    score_text,
)
from crackseg.evaluation.plots import (
    dice_panel_name,
    plot_precision_recall,
    plot_roc,
    plot_training_curves,
    save_dice_panel,
    spread_indices,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------- image level


def test_image_metrics_hand_example() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    labels = torch.tensor([1, 1, 0, 1, 0, 0])
    m = image_metrics(scores, labels)
    # AUC: of the 9 (positive, negative) pairs only (0.6, 0.7) is ordered wrongly.
    assert m["image_auc"] == pytest.approx(8 / 9, abs=1e-6)
    # AP: precision at each positive's rank: 1/1, 2/2, 3/4.
    assert m["image_ap"] == pytest.approx((1 + 1 + 3 / 4) / 3, abs=1e-6)
    # The published AP, trapezoids under the (recall, precision) points (0, 1), (1/3, 1),
    # (2/3, 1), (2/3, 2/3), (1, 3/4), (1, 3/5), (1, 1/2): 2/3 + (2/3 + 3/4) / 2 / 3.
    assert m["image_ap_trapezoid"] == pytest.approx(65 / 72, abs=1e-6)
    # F at thresholds 0.9: 1/2, 0.8: 4/5, 0.7: 2/3, 0.6: 6/7, 0.4: 3/4, 0.3: 2/3 -> 0.6 wins.
    assert m["image_threshold"] == pytest.approx(0.6)
    assert m["f_measure"] == pytest.approx(6 / 7, abs=1e-6)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 2, 0)
    fpr, tpr = m["roc"]
    precision, recall = m["pr"]
    assert isinstance(fpr, np.ndarray) and isinstance(precision, np.ndarray)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(precision) == len(recall)


def test_the_best_f_threshold_of_two_equal_f_measures_is_the_lower() -> None:
    """At 0.1: TP 13, FP 13, FN 0; at 0.4: TP 10, FP 7, FN 3; both F = 2/3 exactly (and
    0.65 at 0.05). Computed from float32 precision and recall, 0.4 won by rounding."""
    negatives = [0.05] + [0.1] * 6 + [0.4] * 7
    positives = [0.1] * 3 + [0.4] * 10
    scores = torch.tensor(negatives + positives)
    labels = torch.tensor([0] * len(negatives) + [1] * len(positives))
    threshold, f_measure = best_f_threshold(scores, labels)
    assert threshold == pytest.approx(0.1) and f_measure == 2 / 3
    m = image_metrics(scores, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (13, 13, 1, 0)


def test_a_score_written_reads_back_as_the_same_float32() -> None:
    """Metrics computed again from test_scores.csv (a sweep's folds pooled) rank as the run
    did: at six decimals the two lowest scores below would tie at 0, the two highest at 1."""
    logits = torch.tensor([-16.0, -15.0, 15.0, 16.0, 0.3])
    scores = torch.sigmoid(logits)
    back = torch.tensor([float(score_text(s)) for s in scores.tolist()])
    assert torch.equal(back, scores)
    assert score_text(0.5) == "0.5" and score_text(1.0) == "1" and "e" not in score_text(1e-7)
    labels = torch.tensor([1, 0, 0, 1, 1])
    assert image_metrics(back, labels)["image_auc"] == image_metrics(scores, labels)["image_auc"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([1, 1, 1], (2, 0, 0, 1)),  # scores >= 0.5: 0.9 and 0.6 -> TP, 0.4 -> FN
        ([0, 0, 0], (0, 2, 1, 0)),
    ],
)
def test_image_metrics_one_class_is_nan_without_warnings(labels, expected) -> None:
    scores = torch.tensor([0.9, 0.4, 0.6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = image_metrics(scores, torch.tensor(labels))
    assert math.isnan(m["image_auc"]) and math.isnan(m["image_ap"])
    assert math.isnan(m["image_ap_trapezoid"])
    assert m["image_threshold"] == 0.5
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == expected


def test_a_score_that_is_not_a_number_leaves_the_curves_undefined(caplog) -> None:
    """torchmetrics takes a NaN for a logit and applies a sigmoid to every score: the
    best-F threshold came out as sigmoid(a score), and the counts were taken at it."""
    scores = torch.tensor([0.9, 0.8, float("nan"), 0.6, 0.4, 0.3])
    labels = torch.tensor([1, 1, 0, 1, 0, 0])
    m = image_metrics(scores, labels)
    assert math.isnan(m["image_auc"]) and math.isnan(m["image_ap"])
    assert (m["best_f_threshold"], m["image_threshold"]) == (0.5, 0.5)
    assert math.isnan(m["best_f_measure"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 0, 3, 0)  # the NaN counts as negative
    assert "1 of 6 decision scores are not numbers" in caplog.text
    assert best_f_threshold(scores, labels)[0] == 0.5
    m = image_metrics(scores, labels, threshold=0.7)  # a validation's threshold still counts
    assert (m["image_threshold"], m["tp"], m["fn"]) == (0.7, 2, 1)


def test_json_ready_drops_arrays_and_nan() -> None:
    m = image_metrics(torch.tensor([0.9, 0.4]), torch.tensor([1, 1]))
    m["dice_per_image"] = np.array([0.5, 0.25])
    m["dice_mean"] = np.float32(0.375)
    m["split_sizes"] = {"test": torch.tensor(2)}
    out = json_ready(m)
    json.dumps(out)  # must be serialisable
    assert "roc" not in out and "pr" not in out and "dice_per_image" not in out
    assert out["image_auc"] is None and out["image_ap"] is None
    assert out["dice_mean"] == 0.375 and type(out["dice_mean"]) is float
    assert out["split_sizes"] == {"test": 2}
    assert out["tp"] == 1 and out["fn"] == 1


# --------------------------------------------------------------------------- pixel level


def _three_images() -> tuple[torch.Tensor, torch.Tensor]:
    """A: a partly right prediction; B: a positive nothing is predicted on; C: empty/empty."""
    probs = torch.tensor(
        [
            [[0.95, 0.85, 0.15, 0.05], [0.65, 0.35, 0.25, 0.55]],
            [[0.10, 0.10, 0.10, 0.10], [0.10, 0.10, 0.10, 0.10]],
            [[0.20, 0.20, 0.20, 0.20], [0.20, 0.20, 0.20, 0.20]],
        ]
    )
    targets = torch.tensor(
        [
            [[1, 1, 0, 0], [1, 0, 0, 0]],
            [[1, 1, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    return probs, targets


def test_pixel_histograms_counts() -> None:
    probs, targets = _three_images()
    hist = pixel_histograms(probs, targets)
    assert hist.shape == (3, 2, NUM_BINS) and hist.dtype == torch.int64
    assert hist[:, 0].sum(-1).tolist() == [8, 8, 8]
    assert hist[:, 1].sum(-1).tolist() == [3, 2, 0]
    assert hist[0, 0, 95] == 1 and hist[0, 1, 95] == 1  # 0.95, a target pixel
    assert hist[0, 0, 55] == 1 and hist[0, 1, 55] == 0  # 0.55, background
    assert hist[1, 0, 10] == 8 and hist[1, 1, 10] == 2
    assert hist[2, 0, 20] == 8 and hist[2, 1].sum() == 0
    edges = pixel_histograms(torch.tensor([[0.0, 0.015, 0.999, 1.0]]), torch.ones(1, 4).bool())
    assert edges[0, 0].nonzero().flatten().tolist() == [0, 1, NUM_BINS - 1]
    assert edges[0, 0, NUM_BINS - 1] == 2  # 1.0 falls into the last bin


def test_pixel_histograms_count_as_the_threshold_compares() -> None:
    """At every threshold k / NUM_BINS the histogram predicts the pixels ``probs >= t``
    predicts, also for a float32 one step either side of an edge."""
    edges = torch.arange(NUM_BINS + 1, dtype=torch.float64) / NUM_BINS
    near = torch.cat(
        [
            torch.nextafter(edges.float(), torch.tensor(0.0)),
            edges.float(),
            torch.nextafter(edges.float(), torch.tensor(1.0)),
        ]
    ).clamp(0, 1)
    drawn = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        probs = torch.cat([near.to(dtype), drawn.to(dtype)])
        hist = pixel_histograms(probs[None], torch.ones(1, len(probs), dtype=torch.bool))
        predicted = hist[0, 0].flip(0).cumsum(0).flip(0)
        for k in range(NUM_BINS):
            assert predicted[k] == (probs >= k / NUM_BINS).sum(), (dtype, k)
    just_below = torch.nextafter(torch.tensor([[0.09]]), torch.tensor(0.0))
    dice, _ = dice_iou_at(pixel_histograms(just_below, torch.ones(1, 1, dtype=torch.bool)), 0.09)
    assert dice.item() == 0.0  # nothing is predicted at 0.09


def test_dice_iou_at_hand_values() -> None:
    probs, targets = _three_images()
    hist = pixel_histograms(probs, targets)
    dice, iou = dice_iou_at(hist, 0.5)
    # A at 0.5: predicted {0.95, 0.85, 0.65, 0.55}, target 3 px, intersection 3.
    # B: nothing predicted on a 2-px target -> 0. C: empty prediction, empty target -> 1.
    assert dice.tolist() == pytest.approx([6 / 7, 0.0, 1.0])
    assert iou.tolist() == pytest.approx([3 / 4, 0.0, 1.0])
    # A at 0.9: only 0.95 predicted -> dice 2*1/(1+3), iou 1/3.
    dice, iou = dice_iou_at(hist, 0.9)
    assert dice[0].item() == pytest.approx(0.5) and iou[0].item() == pytest.approx(1 / 3)
    # C at 0.2: everything predicted on an empty target -> 0, not NaN.
    dice, iou = dice_iou_at(hist, 0.2)
    assert dice[2].item() == 0.0 and iou[2].item() == 0.0
    full_dice, full_iou = dice_iou_curves(hist)
    assert not torch.isnan(full_dice).any() and not torch.isnan(full_iou).any()


def test_pixel_metrics_mean_std_and_empty() -> None:
    probs, targets = _three_images()
    m = pixel_metrics(pixel_histograms(probs, targets), 0.5)
    # C marks no pixel: counted apart, not scored (its empty answer would be a Dice of 1)
    per_image = np.array([6 / 7, 0.0])
    assert m["seg_threshold"] == pytest.approx(0.5)
    assert m["dice_mean"] == pytest.approx(per_image.mean())
    assert m["dice_std"] == pytest.approx(per_image.std())
    assert m["iou_mean"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["dice_per_image"] == pytest.approx(per_image)
    assert m["positives_without_mask"] == 1 and m["scored"].tolist() == [True, True, False]
    empty = pixel_metrics(torch.zeros(0, 2, NUM_BINS, dtype=torch.long), 0.5)
    assert math.isnan(empty["dice_mean"]) and math.isnan(empty["iou_std"])


def test_choose_seg_threshold_maximises_mean_dice() -> None:
    # Image 1: target pixel in bin 30, background in bin 29 -> perfect only at t = 0.30,
    #   dice 2/3 for t <= 0.29 and 0 above 0.30.
    # Image 2: 3 target pixels at 0.75, 9 background at 0.45 -> perfect for 0.46..0.75,
    #   dice 2*3/(12+3) = 0.4 for t <= 0.45, 0 above 0.75.
    # Mean dice: 0.30 -> (1 + 0.4)/2 = 0.7; 0.46..0.75 -> 0.5; <= 0.29 -> (2/3 + 0.4)/2.
    probs = torch.zeros(2, 1, 12)
    targets = torch.zeros(2, 1, 12, dtype=torch.bool)
    probs[0, 0, :2] = torch.tensor([0.305, 0.295])
    targets[0, 0, 0] = True
    probs[0, 0, 2:] = 0.0  # zero-probability background never enters a t > 0 prediction
    targets[0, 0, 2:] = False
    probs[1, 0, :3] = 0.75
    targets[1, 0, :3] = True
    probs[1, 0, 3:] = 0.45
    hist = pixel_histograms(probs, targets)
    # Image 1's zeros sit in bin 0: they are predicted only at t = 0, lowering dice there.
    threshold, mean_dice = choose_seg_threshold(hist)
    assert threshold == pytest.approx(0.30)
    assert mean_dice == pytest.approx(0.7)
    # Alone, image 2 prefers a threshold in (0.45, 0.75].
    alone, best = choose_seg_threshold(hist[1:])
    assert 0.45 < alone <= 0.75 and best == pytest.approx(1.0)


def test_choose_seg_threshold_without_positives() -> None:
    threshold, mean_dice = choose_seg_threshold(torch.zeros(0, 2, NUM_BINS, dtype=torch.long))
    assert threshold == 0.5 and math.isnan(mean_dice)


# --------------------------------------------------------------------------- plots


def test_spread_indices() -> None:
    values = [0.5, 0.1, 0.9, 0.3, 0.7]  # ascending order: idx 1, 3, 0, 4, 2
    assert spread_indices(values, 3) == [1, 0, 2]  # worst, median, best
    assert spread_indices(values, 2) == [1, 2]
    assert spread_indices(values, 10) == [1, 3, 0, 4, 2]
    assert spread_indices([10, 20, 30, 40, 50, 60], 4) == [0, 2, 3, 5]  # ranks 0, 1.7, 3.3, 5
    assert spread_indices(values, 0) == [] and spread_indices([], 3) == []
    picked = spread_indices(list(np.linspace(0, 1, 101)), 7)
    assert picked[0] == 0 and picked[-1] == 100 and len(set(picked)) == 7


def test_dice_panel_name() -> None:
    assert dice_panel_name(0.12, "2523") == "0.120_dice_2523.png"
    assert dice_panel_name(1.0, "165") == "1.000_dice_165.png"
    assert dice_panel_name(0.6654, "CFD_001") == "0.665_dice_CFD_001.png"


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_write_png(tmp_path) -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    m = image_metrics(scores, torch.tensor([1, 1, 0, 1, 0, 0]))
    plot_roc(*m["roc"], m["image_auc"], tmp_path / "a" / "ROC.png")
    plot_precision_recall(*m["pr"], m["image_ap"], tmp_path / "a" / "precision-recall.png")
    one_class = image_metrics(torch.tensor([0.9, 0.4]), torch.tensor([1, 1]))
    plot_roc(*one_class["roc"], one_class["image_auc"], tmp_path / "one" / "ROC.png")
    history = {
        "train/loss_seg": [(0, 0.7), (1, 0.4), (2, 0.2)],
        "train/loss_dec": [(0, 0.69), (1, 0.5), (2, 0.3)],
        "val/image_ap": [(0, 0.6), (2, 0.9)],
        "train/loss": [],
    }
    plot_training_curves(history, tmp_path / "curves.png")
    plot_training_curves({}, tmp_path / "empty_curves.png")
    rng = np.random.default_rng(0)
    tall_target = np.zeros((640, 232), dtype=bool)
    tall_target[100:500, 110:120] = True
    save_dice_panel(
        rng.integers(0, 256, (640, 232, 3), dtype=np.uint8),
        tall_target,
        rng.random((640, 232)).astype(np.float32),
        0.43,
        0.991,
        0.665,
        tmp_path / "dices" / dice_panel_name(0.665, "tall"),
    )
    save_dice_panel(
        rng.random((64, 64)),
        np.zeros((64, 64), dtype=bool),
        np.zeros((64, 64)),
        0.5,
        0.01,
        1.0,
        tmp_path / "dices" / dice_panel_name(1.0, "small"),
    )
    for rel in (
        "a/ROC.png",
        "a/precision-recall.png",
        "one/ROC.png",
        "curves.png",
        "empty_curves.png",
        "dices/0.665_dice_tall.png",
        "dices/1.000_dice_small.png",
    ):
        assert _is_png(tmp_path / rel), rel
