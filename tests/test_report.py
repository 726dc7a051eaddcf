"""report.md keeps the seed report's shape, and its numbers and links are right."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from crackseg.callbacks import warn_of_another_scale
from crackseg.data.data_settings import InputSize
from crackseg.data.samples import Sample
from crackseg.evaluation.metrics import confusion_at, image_metrics
from crackseg.evaluation.plots import (
    dice_panel_name,
    plot_precision_recall,
    plot_roc,
    save_dice_panel,
)
from crackseg.evaluation.report import (
    dataset_table_from_counts,
    run_parameters_from_config,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SEED_NAME = Path("seed") / "crack_segmentation_results.md"
SEED_CANDIDATES = [
    Path(os.environ["CRACKSEG_SEED_REPORT"]) if os.environ.get("CRACKSEG_SEED_REPORT") else None,
    REPO / "shared" / SEED_NAME,
    REPO.parent / "shared" / SEED_NAME,
]

SEED_CONFIG = {
    "data": {
        "batch_size": 1,
        "dilate": 1,
        "frequency_sampling": True,
        "input_channels": 3,
        "input_height": 640,
        "input_width": 232,
    },
    "trainer": {"max_epochs": 50},
    "optim": {"lr": 1.0},
    "loss": {
        "delta_cls": 0.01,
        "dynamic_balance": True,
        "gradient_adjustment": True,
        "weighted_seg": True,
        "weighted_seg_max": 1.0,
        "weighted_seg_p": 2.0,
    },
    "use_best_model": True,
    "validate": True,
    "validate_on_test": False,
}
SPLITS = {"train": (6921, 987), "val": (1483, 212), "test": (1483, 212)}


def _seed_path() -> Path:
    for candidate in SEED_CANDIDATES:
        if candidate is not None and candidate.is_file():
            return candidate
    pytest.skip(
        "seed report shared/seed/crack_segmentation_results.md not found "
        "(set CRACKSEG_SEED_REPORT to its path)"
    )


def _headings(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("#")]


def _first_cells(text: str) -> list[str]:
    """First column of every table row, separator rows left out, duplicates kept once."""
    cells: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        first = line.strip("|").split("|")[0].strip()
        if set(first) <= {"-"} and first:
            continue
        if first not in cells:
            cells.append(first)
    return cells


def _table_row(text: str, name: str) -> list[str]:
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.strip().startswith("|") and parts[0] == name:
            return parts[1:]
    raise AssertionError(f"no table row {name!r}")


def test_run_parameters_print_like_the_seed() -> None:
    rows = run_parameters_from_config(OmegaConf.create(SEED_CONFIG))
    printed = [(name, str(value)) for name, value in rows]
    assert printed == [
        ("Batch size", "1"),
        ("Epochs", "50"),
        ("Learning rate", "1"),
        ("Delta CLS Loss", "0.01"),
        ("Dilate", "1"),
        ("Dynamically balanced loss", "True"),
        ("Frequency-of-use sampling", "True"),
        ("Gradien-flow adjustment", "True"),
        ("Weighted segmentation loss", "True"),
        ("Weighted segmentation loss Max", "1.0"),
        ("Weighted segmentation loss P", "2.0"),
        ("Use best model", "True"),
        ("Validate", "True"),
        ("Validate on test", "False"),
    ]


def test_dataset_table_from_counts() -> None:
    table = dataset_table_from_counts(OmegaConf.create(SEED_CONFIG), SPLITS, 6921)
    assert table == {
        "Input channels": 3,
        "Input height": 640,
        "Input width": 232,
        "Train samples": 7908,
        "Test samples": 1695,
        "Validation samples": 1695,
        "Segmented samples": 6921,
        "Weak positives (image label only)": 0,
    }
    mixed = dataset_table_from_counts(OmegaConf.create(SEED_CONFIG), SPLITS, 20)
    assert mixed["Segmented samples"] == 20
    assert mixed["Weak positives (image label only)"] == 6921 - 20


def _write_run(
    run_dir: Path, metrics: dict, notes=(), validated_on_test=False
) -> tuple[Path, list[str]]:
    cfg = OmegaConf.create(SEED_CONFIG)
    plot_roc(*metrics["roc"], metrics["image_auc"], run_dir / "ROC.png")
    plot_precision_recall(*metrics["pr"], metrics["image_ap"], run_dir / "precision-recall.png")
    dice_files = []
    for dice, sample_id in ((0.0, "113"), (0.665, "2484"), (1.0, "165")):
        name = dice_panel_name(dice, sample_id)
        save_dice_panel(
            torch.rand(16, 8, 3).numpy(),
            torch.zeros(16, 8, dtype=torch.bool).numpy(),
            torch.rand(16, 8).numpy(),
            0.5,
            0.9,
            dice,
            run_dir / "dices" / name,
        )
        dice_files.append(name)
    path = write_report(
        run_dir,
        title="crack_segmentation dataset",
        dataset=dataset_table_from_counts(cfg, SPLITS, 6921),
        split_counts=SPLITS,
        run_parameters=run_parameters_from_config(cfg),
        metrics=metrics,
        dice_files=dice_files,
        notes=notes,
        validated_on_test=validated_on_test,
    )
    return path, dice_files


def _seed_like_metrics() -> dict:
    """Test-split scores giving the seed's table: TP 1473, FN 10, TN 179, FP 33."""
    scores = torch.cat(
        [
            torch.full((1473,), 0.95),
            torch.full((10,), 0.05),  # positives
            torch.full((179,), 0.05),
            torch.full((33,), 0.95),  # negatives
        ]
    )
    labels = torch.cat([torch.ones(1483), torch.zeros(212)]).long()
    # The counts at the validation threshold; the published protocol's at 0.01 on test.
    metrics = image_metrics(scores, labels, threshold=0.5)
    published = confusion_at(scores, labels, 0.01)
    metrics.update({f"test_best_f_{k}": published[k] for k in ("tp", "fp", "tn", "fn")})
    metrics.update(test_best_f_threshold=0.01, test_best_f_measure=published["f_measure"])
    metrics.update(
        seg_threshold=0.43,
        dice_mean=0.6512,
        dice_std=0.2101,
        iou_mean=0.5123,
        iou_std=0.2222,
        seg_threshold_val_dice=0.66,
    )
    return metrics


def test_report_has_the_seed_shape_and_right_numbers(tmp_path) -> None:
    seed = _seed_path().read_text(encoding="utf-8")
    metrics = _seed_like_metrics()
    assert (metrics["tp"], metrics["fn"], metrics["tn"], metrics["fp"]) == (1473, 10, 179, 33)
    path, dice_files = _write_run(tmp_path / "run", metrics, notes=["a caller's note"])
    assert path == tmp_path / "run" / "report.md"
    report = path.read_text(encoding="utf-8")

    # Every heading and table row name of the seed, in the seed's order.
    ours_headings = _headings(report)
    for heading in _headings(seed):
        assert heading in ours_headings, heading
    assert [h for h in ours_headings if h in _headings(seed)] == _headings(seed)
    ours_cells = _first_cells(report)
    seed_cells = _first_cells(seed)
    for name in seed_cells:
        assert name in ours_cells, name
    assert [c for c in ours_cells if c in seed_cells] == seed_cells
    assert report.count("| Input width ") == 1  # the seed's duplicate row is not copied

    # Numbers agree with the metrics and the splits.
    positives = _table_row(report, "**Positives**")
    negatives = _table_row(report, "**Negatives**")
    assert positives == ["1473", "10"] and negatives == ["179", "33"]
    assert sum(map(int, positives)) == SPLITS["test"][0]  # TP + FN = test positives
    assert sum(map(int, negatives)) == SPLITS["test"][1]  # TN + FP = test negatives
    assert _table_row(report, "Test") == ["1483", "212", "1695"]
    assert _table_row(report, "**Sum**") == ["9887", "1411", "11298"]
    assert _table_row(report, "Learning rate") == ["1"]
    assert _table_row(report, "Weighted segmentation loss P") == ["2.0"]
    summary = f"AUC: {metrics['image_auc']:.4f}, AP: {metrics['image_ap']:.4f}."
    assert summary in report
    assert "chosen on the validation split (0.5000" in report
    assert f"F-measure {2 * 1473 / (2 * 1473 + 33 + 10):.4f}, accuracy 97.46 %" in report
    # The published protocol's counts: a second, labelled table (every test image positive).
    published = report.split("### Results by the published protocol", 1)[1]
    assert "best F-measure on the test split itself (0.0100)" in published
    trapezoid = f"{metrics['image_ap_trapezoid']:.4f}"
    assert f"Its AP, the trapezoidal area under the PR curve: {trapezoid}." in published
    assert _table_row(published, "**Positives**") == ["1483", "0"]
    assert _table_row(published, "**Negatives**") == ["0", "212"]
    assert _table_row(report, "Dice") == ["0.6512", "0.2101"]
    assert _table_row(report, "IoU") == ["0.5123", "0.2222"]
    assert "threshold: 0.43" in report.lower() and "validation" in report
    assert "- a caller's note" in report

    # Links: relative, forward slashes, and the files exist.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == 2 + len(dice_files)
    for link in links:
        assert "\\" not in link and not Path(link).is_absolute() and "://" not in link
        assert _is_png(tmp_path / "run" / link), link
    for name in dice_files:
        assert f"![test_output](dices/{name})" in report


def test_a_run_validated_on_test_says_its_thresholds_saw_the_test_labels(tmp_path) -> None:
    metrics = dict(_seed_like_metrics(), best_val_image_ap=0.99)
    honest = _write_run(tmp_path / "val", metrics)[0].read_text(encoding="utf-8")
    assert "never on the test split" in honest and "chosen on the test split" not in honest
    report = _write_run(tmp_path / "test", metrics, validated_on_test=True)[0].read_text(
        encoding="utf-8"
    )
    assert "never on the test split" not in report
    assert "validation split" not in report
    assert "image threshold chosen on the test split (`validate_on_test`) (0.5000" in report
    assert "Segmentation threshold: 0.43, chosen on the test split" in report
    assert "Validation AP, on the test split, of the weights tested: 0.9900" in report
    assert "both thresholds were chosen on the test labels" in report


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_undefined_metrics(tmp_path) -> None:
    metrics = image_metrics(torch.tensor([0.9, 0.2]), torch.tensor([0, 0]))
    metrics.update(
        seg_threshold=0.5,
        dice_mean=float("nan"),
        dice_std=float("nan"),
        iou_mean=None,
        iou_std=None,
        test_best_f_threshold=metrics["best_f_threshold"],
        test_best_f_measure=metrics["best_f_measure"],
        **{f"test_best_f_{k}": metrics[k] for k in ("tp", "fp", "tn", "fn")},
    )
    path, _ = _write_run(tmp_path, metrics)
    report = path.read_text(encoding="utf-8")
    # no threshold has a best F-measure here: 0.5 is not called one
    assert "A test split of one class has no threshold of best F-measure" in report
    assert "The threshold with the best F-measure" not in report
    assert "AUC: n/a, AP: n/a." in report and "validation split (0.5000, the best F" in report
    # a validation split of one class chose nothing either: 0.5 stood in, not a best F
    one_class = dict(metrics, val_positives=0, val_negatives=3)
    report = _write_run(tmp_path / "one", one_class)[0].read_text(encoding="utf-8")
    assert (
        "validation split (0.5000, standing in: scores of one class, or not numbers, have no "
        "threshold of best F-measure)" in report
    )
    assert "Segmentation threshold: 0.50, chosen on the validation split" in report
    # a run records which thresholds stood in: both classes, scores that are not numbers,
    # no mask pixel
    recorded = dict(metrics, stand_in_thresholds=["image", "segmentation"])
    report = _write_run(tmp_path / "recorded", recorded)[0].read_text(encoding="utf-8")
    assert "validation split (0.5000, standing in: scores of one class" in report
    assert (
        "Segmentation threshold: 0.50, standing in: no positive of the validation split has "
        "a mask pixel to choose it by." in report
    )
    chosen = dict(one_class, stand_in_thresholds=[])
    report = _write_run(tmp_path / "chosen", chosen)[0].read_text(encoding="utf-8")
    assert "validation split (0.5000, the best F-measure there)" in report
    assert _table_row(report, "Dice") == ["n/a", "n/a"]
    assert _table_row(report, "**Negatives**") == ["1", "1"]
    assert "only one class" in report and "no positives" in report
    assert "nan" not in report.lower()


@pytest.mark.parametrize(
    ("trained", "image_size", "warned"),
    [
        ({"mode": "native", "source_height": 64, "source_width": 64}, (96, 128), True),
        ({"mode": "native", "source_height": 64, "source_width": 64}, (64, 64), False),
        ({"mode": "resize", "source_height": 448, "source_width": 448}, (96, 128), False),
        (None, (96, 128), False),
    ],
)
def test_tile_weights_evaluated_on_resized_photographs_are_warned_of(
    trained, image_size, warned, tmp_path, caplog
):
    """Weights trained on tiles at their own size, tested on images squeezed to that size
    (crackseg-eval data.all_as_test=true on whole photographs): a scale they never saw."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((*image_size, 3), np.uint8))
    test = [Sample("photo", image, None, False)]
    datamodule = SimpleNamespace(
        input_size=InputSize(height=64, width=64), data_split=SimpleNamespace(splits={"test": test})
    )
    with caplog.at_level(logging.WARNING, logger="crackseg.callbacks"):
        warn_of_another_scale(trained, datamodule)
    expected = "test images here, most 96x128, are resized to 64x64, a scale it never saw"
    assert (expected in caplog.text) is warned


def test_a_run_tested_with_its_final_weights_gives_their_validation_ap_not_the_best(tmp_path):
    """use_best_model=false: the weights tested are the final ones, whose validation AP is
    not the run's best (that of other weights)."""
    metrics = dict(_seed_like_metrics(), best_val_image_ap=0.829, tested_val_image_ap=0.705)
    final = dict(metrics, tested_final_weights=True)
    report = _write_run(tmp_path / "final", final)[0].read_text(encoding="utf-8")
    assert (
        "Validation AP of the weights tested: 0.7050 (the run's best, other weights: 0.8290)"
    ) in report
    # the final weights scored the best: no "other" weights
    same = dict(final, tested_val_image_ap=0.829)
    report = _write_run(tmp_path / "same", same)[0].read_text(encoding="utf-8")
    assert "Validation AP of the weights tested: 0.8290\n" in report
    # the best weights tested, validated again a hair off their logged score: no "other"
    again = dict(metrics, tested_val_image_ap=0.82899, best_val_image_ap=0.82901)
    report = _write_run(tmp_path / "best", again)[0].read_text(encoding="utf-8")
    assert "Validation AP of the weights tested: 0.8290\n" in report
