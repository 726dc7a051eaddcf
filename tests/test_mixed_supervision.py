"""Mixed supervision: nested segmented subsets, weak batches, the sweep's curve, the ranking."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import datamodule_of, run_tiny

from crackseg.data.data_settings import InputSize
from crackseg.data.samples import Sample
from crackseg.data.supervision import choose_segmented
from crackseg.errors import DataError
from crackseg.evaluation.weak_ranking import binary_entropy, rank, uncertainty, write_ranking
from crackseg.models.lit_segdec import SegDecModule
from crackseg.sweep.curves import (
    MIXED_SUPERVISION_FIGURE,
    NUM_SEGMENTED,
    draw_sweep_curves,
    sweep_curves,
)
from crackseg.sweep.summary import collect_runs, write_summary


def test_segmented_subsets_are_nested_and_do_not_depend_on_the_seed(dataset_root):
    positives = [
        Sample(f"crack_{i:03d}", Path(f"{i}.png"), Path(f"m{i}.png"), True) for i in range(60)
    ]
    for split_seed in (0, 7):
        subsets = [choose_segmented(positives, k, split_seed) for k in (0, 5, 10, 20, 50, 60)]
        assert [len(s) for s in subsets] == [0, 5, 10, 20, 50, 60]
        for smaller, larger in zip(subsets, subsets[1:], strict=False):
            assert smaller < larger
    assert choose_segmented(positives, 10, 0) != choose_segmented(positives, 10, 7)

    # Through the data module: `seed` (weights, sampling, augmentation) leaves them alone.
    def segmented(num_segmented, seed):
        return datamodule_of(dataset_root, num_segmented=num_segmented, seed=seed).data_split

    by_seed = [segmented(5, s).segmented_ids for s in (0, 1, 2)]
    assert by_seed[0] == by_seed[1] == by_seed[2]
    assert by_seed[0] < segmented(10, 3).segmented_ids


def test_a_batch_of_weak_positives_has_no_segmentation_loss_and_a_finite_total():
    module = SegDecModule(
        network={"channels": (4, 8, 8), "volume_channels": 8, "volume_kernel": 3},
        input_shape=InputSize(height=64, width=128),
    )
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    module.current_loss_weights = lambda: (0.5, 0.05)
    batch = {
        "image": torch.rand(2, 3, 64, 128),
        "mask": torch.zeros(2, 1, 64, 128),
        "weight": torch.ones(2, 1, 64, 128),
        "label": torch.ones(2),
        "segmented": torch.zeros(2, dtype=torch.bool),
        "mask_known": torch.zeros(2, dtype=torch.bool),
    }
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    # Only the decision term: its gradient reaches the decision head, none the 1/8 head.
    assert (
        module.net.seg_mask[0].weight.grad is None or not module.net.seg_mask[0].weight.grad.any()
    )
    # The epoch's segmentation loss counts segmented samples only: this batch adds weight 0.
    seg_mean = module.train_means["loss_seg"]
    assert float(seg_mean.weight) == 0.0 and float(seg_mean.total) == 0.0
    # An epoch of such batches logs a segmentation loss of 0, not NaN (0/0).
    assert float(seg_mean.compute()) == 0.0
    seg_mean.update(torch.tensor([0.3, 0.9]), torch.tensor([1.0, 0.0]))
    assert float(seg_mean.compute()) == pytest.approx(0.3)


@pytest.mark.parametrize("target,expected", [("mask_max", 1.0), ("mask_max_all", 3 / 17)])
def test_a_weak_positive_trains_its_decision_towards_its_label_or_its_read_mask(target, expected):
    module = SegDecModule(
        network={"channels": (4, 8, 8), "volume_channels": 8, "volume_kernel": 3},
        input_shape=InputSize(height=64, width=128),
        loss={"decision_target": target},
    )
    module.log = lambda *args, **kwargs: None
    module.current_loss_weights = lambda: (1.0, 1.0)
    mask = torch.zeros(1, 1, 64, 128)
    mask[0, 0, :, 60:63] = 1  # a crack 3 pixels wide: its 1/8 soft mask peaks at 3/17
    batch = {
        "image": torch.rand(1, 3, 64, 128),
        "mask": mask,
        "weight": torch.ones(1, 1, 64, 128),
        "label": torch.ones(1),
        "segmented": torch.zeros(1, dtype=torch.bool),  # weak: no segmentation loss
        "mask_known": torch.ones(1, dtype=torch.bool),
    }
    loss = module.training_step(batch, 0)
    decision = module.net(batch["image"]).decision.float()
    target = torch.full_like(decision, expected)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(decision, target)
    assert loss.item() == pytest.approx(bce.item(), rel=1e-5)


def _fake_job(root: Path, num: int, segmented: str, seed: int, metrics: dict) -> None:
    job = root / f"{num}_data.num_segmented={segmented},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"data.num_segmented={segmented}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": "finished"}))


def test_the_summary_draws_the_mixed_supervision_curve(tmp_path):
    # Hand-written results: AP per (segmented, seed), Dice = AP / 2, AUC = 1 - (1 - AP) / 2.
    aps = {"0": (0.80, 0.90), "5": (0.92, 0.94), "null": (0.98, 0.99)}
    counts = {"0": 0, "5": 5, "null": 662}
    num = 0
    for segmented, values in aps.items():
        for seed, ap in enumerate(values):
            metrics = {
                "image_ap": ap,
                "image_auc": 1 - (1 - ap) / 2,
                "dice_mean": ap / 2,
                "num_segmented": counts[segmented],
            }
            _fake_job(tmp_path, num, segmented, seed, metrics)
            num += 1
    write_summary(tmp_path)
    assert (tmp_path / MIXED_SUPERVISION_FIGURE).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "summary.md").read_text()
    assert f"![mixed_supervision]({MIXED_SUPERVISION_FIGURE})" in md
    assert "| null | 662 | 2 | 0 |" in md  # "all" shown with the count it stands for

    rows = collect_runs(tmp_path)
    (curve,) = sweep_curves(rows, "data.num_segmented", ["data.num_segmented"])
    assert curve.x == [0, 5, 662]
    fig = draw_sweep_curves([curve], "data.num_segmented")
    ap_axis, auc_axis, dice_axis = fig.axes
    (bars,) = ap_axis.containers
    line, _, (vertical,) = bars
    assert list(line.get_xdata()) == [0, 5, 662]
    assert list(line.get_ydata()) == pytest.approx([0.85, 0.93, 0.985])
    # Error bars: the sample standard deviation over the two seeds, |a - b| / sqrt(2).
    spans = [segment[1, 1] - segment[0, 1] for segment in vertical.get_segments()]
    expected = [abs(a - b) / math.sqrt(2) for a, b in aps.values()]
    assert spans == pytest.approx([2 * e for e in expected])
    (dice_bars,) = dice_axis.containers
    assert list(dice_bars[0].get_ydata()) == pytest.approx([0.425, 0.465, 0.4925])
    assert ap_axis.get_xscale() == "symlog"
    labels = [t.get_text() for t in ap_axis.get_xticklabels()]
    assert labels[0] == "0\nweak" and labels[-1] == "662\nall"
    (level,) = [h for h in ap_axis.get_lines() if list(h.get_xdata()) == [0, 1]]
    assert list(level.get_ydata()) == pytest.approx([0.985] * 2)  # the fully supervised AP


def test_a_curve_without_the_fully_supervised_run_marks_no_point_all(tmp_path):
    """``data.num_segmented=5,10,20``: 20 is not "all", and there is no level to draw."""
    for num, segmented in enumerate((5, 10, 20)):
        metrics = {"image_ap": 0.8 + num / 100, "num_segmented": segmented}
        _fake_job(tmp_path, num, str(segmented), 0, metrics)
    (curve,) = sweep_curves(collect_runs(tmp_path), NUM_SEGMENTED, [NUM_SEGMENTED])
    assert curve.full is None
    ap_axis = draw_sweep_curves([curve], NUM_SEGMENTED).axes[0]
    assert [t.get_text() for t in ap_axis.get_xticklabels()] == ["5", "10", "20"]
    assert [h for h in ap_axis.get_lines() if list(h.get_xdata()) == [0, 1]] == []


def test_a_curve_of_weak_runs_alone_is_drawn_inside_its_axes(tmp_path):
    """``data.num_segmented=0`` alone (sweeps.md's weak jobs over seeds): the axis went from
    -0.3 to 0, each point on its edge."""
    for seed in (0, 1):
        _fake_job(tmp_path, seed, "0", seed, {"image_ap": 0.7 + seed / 10, "num_segmented": 0})
    rows = [{**row, NUM_SEGMENTED: "0"} for row in collect_runs(tmp_path)]  # typed, one value
    (curve,) = sweep_curves(rows, NUM_SEGMENTED, [NUM_SEGMENTED])
    low, high = draw_sweep_curves([curve], NUM_SEGMENTED).axes[0].get_xlim()
    assert low < 0 < high


def test_folds_are_repeats_in_the_figures_as_seeds_are(tmp_path):
    """KolektorSDD's curve over 3 folds (docs/datasets.md): a figure of data.fold drew
    fold numbers as a quantity, and the curve was a line per fold, not their mean."""
    num = 0
    for segmented in (0, 5):
        for fold in (0, 1, 2):
            job = tmp_path / f"{num}_data.fold={fold},data.num_segmented={segmented}"
            (job / ".hydra").mkdir(parents=True)
            overrides = [f"data.fold={fold}", f"data.num_segmented={segmented}"]
            (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
            metrics = {"image_ap": 0.7 + segmented / 50 + fold / 100, "num_segmented": segmented}
            (job / "metrics.json").write_text(json.dumps(metrics))
            (job / "status.json").write_text(json.dumps({"status": "finished"}))
            num += 1
    write_summary(tmp_path)
    assert not (tmp_path / "sweep_data.fold.png").exists()
    assert (tmp_path / MIXED_SUPERVISION_FIGURE).is_file()
    keys = ["data.fold", NUM_SEGMENTED]
    (curve,) = sweep_curves(collect_runs(tmp_path), NUM_SEGMENTED, keys)
    assert curve.x == [0, 5] and curve.n == [3, 3]
    assert curve.mean["image_ap"] == pytest.approx([0.71, 0.81])


def test_other_numeric_sweeps_draw_their_figure_too(tmp_path):
    for num, (delta, seed, ap) in enumerate([(0.01, 0, 0.9), (0.01, 1, 0.8), (1, 0, 0.95)]):
        job = tmp_path / f"{num}_loss.delta_cls={delta},seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"loss.delta_cls={delta}", f"seed={seed}"])
        )
        (job / "metrics.json").write_text(json.dumps({"image_ap": ap, "num_segmented": 14}))
        (job / "status.json").write_text(json.dumps({"status": "finished"}))
    write_summary(tmp_path)
    assert (tmp_path / "sweep_loss.delta_cls.png").is_file()
    (curve,) = sweep_curves(collect_runs(tmp_path), "loss.delta_cls", ["loss.delta_cls"])
    assert curve.x == [0.01, 1.0] and curve.mean["image_ap"] == pytest.approx([0.85, 0.95])


def test_the_uncertainty_score_orders_hand_built_maps():
    # Threshold 0.4. Map A: four crack pixels at 0.5 -> 1 bit each. Map B: 0.9 -> H(0.9).
    # Map C: nothing at or above 0.4 -> 1 (a crack the segmentation does not find).
    # Map D: two pixels at 0.99 and two at 0.6 -> (2 H(0.99) + 2 H(0.6)) / 4.
    def h(p):
        return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))

    maps = {
        "a": torch.tensor([[0.5, 0.5], [0.5, 0.5]]),
        "b": torch.tensor([[0.9, 0.1], [0.9, 0.0]]),
        "c": torch.tensor([[0.2, 0.39], [0.0, 0.1]]),
        "d": torch.tensor([[0.99, 0.99], [0.6, 0.6]]),
    }
    scores = {k: uncertainty(v, 0.4) for k, v in maps.items()}
    assert scores["a"][0] == pytest.approx(1.0) and scores["a"][1] == 4
    assert scores["b"][0] == pytest.approx(h(0.9)) and scores["b"][1:] == (2, pytest.approx(0.9))
    assert scores["c"] == (1.0, 0, pytest.approx(float("nan"), nan_ok=True))
    assert scores["d"][0] == pytest.approx((h(0.99) + h(0.6)) / 2)
    assert binary_entropy(torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]
    entries = [
        {"sample_id": k, "uncertainty": s[0], "crack_pixels": s[1], "mean_crack_probability": s[2]}
        for k, s in scores.items()
    ]
    ranked = rank(entries)
    # h(0.9) = 0.469, (h(0.99) + h(0.6)) / 2 = 0.525; a and c tie at 1: by sample id.
    assert [e["sample_id"] for e in ranked] == ["a", "c", "d", "b"]
    assert [e["rank"] for e in ranked] == [1, 2, 3, 4]


def test_a_ranking_adds_its_top_weak_positives_to_the_segmented_ones(dataset_root, tmp_path):
    base = datamodule_of(dataset_root, num_segmented=5)
    weak = [s.sample_id for s in base.data_split.splits["train"] if s.is_positive][::-1]
    weak = [i for i in weak if i not in base.data_split.segmented_ids]
    entries = [
        {
            "sample_id": sample_id,
            "image": "",
            "uncertainty": 1 - i / 100,
            "decision_score": 0.5,
            "crack_pixels": 1,
            "mean_crack_probability": 0.5,
        }
        for i, sample_id in enumerate(weak)
    ]
    ranking = write_ranking(tmp_path / "weak_ranking.csv", rank(entries))
    extra = {"ranking": str(ranking), "count": 3}
    grown = datamodule_of(dataset_root, num_segmented=5, extra_segmented=extra)
    assert grown.data_split.segmented_ids == base.data_split.segmented_ids | set(weak[:3])
    with pytest.raises(DataError, match="ranks only"):
        datamodule_of(dataset_root, num_segmented=5, extra_segmented={**extra, "count": 50})
    # a name repeated counts once: count=3 gave the 2 names of 3 rows without a word
    (tmp_path / "twice.csv").write_text(f"sample_id\n{weak[0]}\n{weak[0]}\n{weak[1]}\n")
    with pytest.raises(DataError, match="count=3 but .*twice.csv ranks only 2 weak positives"):
        datamodule_of(
            dataset_root,
            num_segmented=5,
            extra_segmented={**extra, "ranking": str(tmp_path / "twice.csv")},
        )
    (tmp_path / "bad.csv").write_text("sample_id\nnoncrack_00001\n")
    with pytest.raises(DataError, match="not training positives"):
        datamodule_of(dataset_root, extra_segmented={"ranking": str(tmp_path / "bad.csv")})


def test_a_run_with_weak_positives_ranks_them_and_reports_them(tmp_path, tiny_data_dir):
    result = run_tiny(tmp_path, tiny_data_dir, "data.num_segmented=5")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_segmented"] == 5 and metrics["num_weak"] == metrics["train_positives"] - 5
    rows = list(csv.DictReader((tmp_path / "weak_ranking.csv").open()))
    assert len(rows) == metrics["num_weak"]
    scores = [float(r["uncertainty"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    report = (tmp_path / "report.md").read_text()
    assert "| Segmented samples " in report
    weak_row = next(line for line in report.splitlines() if "Weak positives" in line)
    assert f"| {metrics['num_weak']} " in weak_row
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(math.isfinite(v) for _, v in history["train/loss_seg"])


def test_a_failed_job_with_a_value_that_is_no_number_leaves_the_curve_drawn(tmp_path):
    """``data.num_segmented=4,"x"``: the "x" jobs failed; the finished ones are drawn."""
    for num, segmented in enumerate(("4", "8")):
        _fake_job(tmp_path, num, segmented, 0, {"image_ap": 0.9, "num_segmented": 4})
    _fake_job(tmp_path, 2, "x", 0, {})
    (tmp_path / "2_data.num_segmented=x,seed=0" / "status.json").write_text(
        json.dumps({"status": "failed", "error": "data.num_segmented must be an integer"})
    )
    write_summary(tmp_path)
    assert (tmp_path / MIXED_SUPERVISION_FIGURE).is_file()
