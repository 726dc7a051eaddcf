"""The segmentation threshold is chosen on validation and applied unchanged to test."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from crackseg.models.lit_segdec import SegDecModule


class ProbabilitiesAsImages(SegDecModule):
    """Its 'image' already is the segmentation probability map, so outcomes are known."""

    def forward(self, images):
        seg = images[:, :1]
        return seg.amax(dim=(1, 2, 3)), seg


def _split(target_prob: float, background_prob: float) -> list[dict]:
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:4, 2:4] = 1  # 4 defect pixels of 64
    image = torch.where(mask > 0, target_prob, background_prob).expand(3, 8, 8)
    negative = torch.full((3, 8, 8), 0.1)
    return [
        {"image": image, "mask": mask, "label": torch.tensor(1.0), "index": torch.tensor(0)},
        {"image": negative, "mask": mask * 0, "label": torch.tensor(0.0), "index": torch.tensor(1)},
    ]


def test_test_split_uses_the_validation_threshold():
    module = ProbabilitiesAsImages(network={"channels": (4, 4, 4), "volume_channels": 4})
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    # Validation: defects at 0.35 over a 0.25 background -> the lowest best threshold is 0.26.
    trainer.validate(module, DataLoader(_split(0.35, 0.25), batch_size=2), verbose=False)
    assert module.seg_threshold == pytest.approx(0.26)
    # Test alone would pick a threshold above 0.30 (Dice 1); at 0.26 every pixel is predicted.
    trainer.test(module, DataLoader(_split(0.75, 0.30), batch_size=2), verbose=False)
    results = module.test_results
    assert results["seg_threshold"] == pytest.approx(0.26)
    assert results["dice_mean"] == pytest.approx(2 * 4 / (64 + 4))
    assert results["iou_mean"] == pytest.approx(4 / 64)


class ScoresAsImages(SegDecModule):
    """Its 'image' holds the decision score in every pixel, so the counts are known."""

    def forward(self, images):
        return images[:, 0, 0, 0], images[:, :1]


def _scored(positives: list[float], negatives: list[float]) -> list[dict]:
    items = []
    for label, scores in ((1.0, positives), (0.0, negatives)):
        for score in scores:
            items.append(
                {
                    "image": torch.full((3, 8, 8), score),
                    "mask": torch.zeros(1, 8, 8),
                    "label": torch.tensor(label),
                    "index": torch.tensor(len(items)),
                }
            )
    return items


def test_the_image_threshold_comes_from_validation_and_counts_the_test_split():
    module = ScoresAsImages(network={"channels": (4, 4, 4), "volume_channels": 4})
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    # Validation: 0.6 separates positives {0.6, 0.8} from negatives {0.3, 0.5}: F = 1 there.
    val = DataLoader(_scored([0.6, 0.8], [0.3, 0.5]), batch_size=4)
    trainer.validate(module, val, verbose=False)
    assert float(module.image_threshold) == pytest.approx(0.6)
    # Test alone would choose 0.55 (TP 2, FP 1: F 0.8, better than 0.9's 2/3).
    test = DataLoader(_scored([0.55, 0.9], [0.2, 0.58]), batch_size=4)
    trainer.test(module, test, verbose=False)
    results = module.test_results
    assert results["image_threshold"] == pytest.approx(0.6)
    assert (results["tp"], results["fp"], results["tn"], results["fn"]) == (1, 0, 2, 1)
    assert results["f_measure"] == pytest.approx(2 / 3)
    # The published protocol's numbers are kept apart, clearly named.
    assert results["test_best_f_threshold"] == pytest.approx(0.55)
    published = tuple(results[f"test_best_f_{k}"] for k in ("tp", "fp", "tn", "fn"))
    assert published == (2, 1, 1, 0)
    assert results["test_best_f_measure"] == pytest.approx(0.8)


def test_the_test_results_name_the_thresholds_no_validation_chose():
    module = ScoresAsImages(network={"channels": (4, 4, 4), "volume_channels": 4})
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    # Both classes, but scores that are not numbers (a diverged run), and no mask pixel.
    nan = float("nan")
    trainer.validate(module, DataLoader(_scored([nan], [nan]), batch_size=2), verbose=False)
    assert float(module.image_threshold) == 0.5 and float(module.seg_threshold) == 0.5
    trainer.test(module, DataLoader(_scored([0.9], [0.1]), batch_size=2), verbose=False)
    assert module.test_results["stand_in_thresholds"] == ["image", "segmentation"]
    # chosen both: none stood in
    module = ProbabilitiesAsImages(network={"channels": (4, 4, 4), "volume_channels": 4})
    trainer.validate(module, DataLoader(_split(0.35, 0.25), batch_size=2), verbose=False)
    trainer.test(module, DataLoader(_split(0.75, 0.30), batch_size=2), verbose=False)
    assert module.test_results["stand_in_thresholds"] == []


def test_weights_saved_before_stand_ins_were_recorded_leave_them_unknown():
    """Their test results say nothing of stand-ins (the report falls back on what the
    split's counts show), rather than that none stood in."""
    module = ScoresAsImages(network={"channels": (4, 4, 4), "volume_channels": 4})
    module.on_load_checkpoint({"global_step": 3})  # no stand_in_thresholds key
    assert module.stand_in_thresholds is None
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, DataLoader(_scored([0.9], [0.1]), batch_size=2), verbose=False)
    assert "stand_in_thresholds" not in module.test_results
    saved: dict = {}
    module.on_save_checkpoint(saved)
    assert saved["stand_in_thresholds"] is None
