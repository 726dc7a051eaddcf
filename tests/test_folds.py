"""Cross-validation folds (whole groups, stratified, reproducible), Severstal's training
sizes, and the folds' test scores joined at a sweep's folder."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from crackseg.data.samples import Sample
from crackseg.data.splits import grouped_split, resolve_splits, source_group
from crackseg.errors import ConfigError
from crackseg.sweep.folds import pooled_folds
from crackseg.sweep.summary import collect_runs, write_summary


def _samples(n_pos: int, n_neg: int) -> list[Sample]:
    return [
        Sample(f"p{i:03d}", Path(f"p{i}.jpg"), Path(f"p{i}.png"), True) for i in range(n_pos)
    ] + [Sample(f"n{i:03d}", Path(f"n{i}.jpg"), None, False) for i in range(n_neg)]


def _folders(count: int, parts: int = 8) -> list[Sample]:
    """KSDD-like: every folder a group, its Part1 positive (folder 3 has none)."""
    return [
        Sample(
            f"kos{f:02d}_Part{k}",
            Path(f"kos{f:02d}/Part{k}.jpg"),
            Path("m.bmp"),
            k == 1 and f != 3,
            group=f"kos{f:02d}",
        )
        for f in range(1, count + 1)
        for k in range(parts)
    ]


def _counts(samples: list[Sample]) -> tuple[int, int]:
    positives = sum(s.is_positive for s in samples)
    return positives, len(samples) - positives


def test_k_fold_is_stratified_disjoint_and_complete():
    samples = _samples(10, 23)
    folds = grouped_split(samples, {f"f{k}": 1 / 3 for k in range(3)}, seed=0)
    # 10 positives -> 4, 3, 3; 23 negatives -> 8, 8, 7 (the earlier folds take the extra ones)
    assert [_counts(f) for f in folds.values()] == [(4, 8), (3, 8), (3, 7)]
    ids = [s.sample_id for f in folds.values() for s in f]
    assert sorted(ids) == sorted(s.sample_id for s in samples)


def test_folds_are_reproducible_and_the_seed_matters():
    samples = _samples(10, 23)
    fractions = {f"f{k}": 1 / 3 for k in range(3)}
    first = grouped_split(samples, fractions, seed=4)
    assert grouped_split(list(reversed(samples)), fractions, seed=4) == first
    assert grouped_split(samples, fractions, seed=5) != first


def test_ksdd_folds_are_sets_of_folders():
    samples = _folders(10)
    folds = grouped_split(samples, {f"f{k}": 1 / 3 for k in range(3)}, seed=0)
    folder_of = {}
    for name, members in folds.items():
        for s in members:
            assert folder_of.setdefault(s.group, name) == name  # a folder in one fold only
    # 9 folders with a positive -> 3 a fold; the clean folder joins the fold with fewest negatives
    assert sorted(Counter(folder_of.values()).values()) == [3, 3, 4]
    assert [_counts(f)[0] for f in folds.values()] == [3, 3, 3]


def test_tiles_of_one_photograph_stay_in_one_fold():
    tiles = [
        Sample(f"train_{name}", Path(f"t/train/images/{name}.png"), None, False)
        for photo in ("a", "b", "c", "d")
        for name in (f"{photo}_r0_c0", f"{photo}_r0_c1", f"noncrack_{photo}_r1_c0")
    ]
    assert {source_group(s) for s in tiles} == {"photo:a", "photo:b", "photo:c", "photo:d"}
    splits = resolve_splits({"all": tiles}, 0.0, 0.15, seed=0, num_folds=2, fold=1)
    photos_test = {source_group(s) for s in splits["test"]}
    photos_train = {source_group(s) for s in splits["train"]}
    assert len(photos_test) == 2 and not photos_test & photos_train
    assert splits["val"] == []


def test_a_split_without_folds_keeps_folders_and_photographs_whole():
    """No folds and no split file: the three-way split of a KSDD folder or of a flat folder
    of tiles deals whole folders and photographs, so no source is trained and tested on."""
    tiles = [
        Sample(name, Path(f"t/images/{name}.png"), None, name.startswith("p"))
        for photo in range(12)
        for name in (f"p{photo:02d}_r0_c0", f"p{photo:02d}_r0_c1", f"noncrack_p{photo:02d}_r1_c0")
    ]
    for samples in (_folders(22), tiles):
        splits = resolve_splits({"all": samples}, 0.15, 0.15, seed=0)
        sources = {name: {source_group(s) for s in part} for name, part in splits.items()}
        assert all(sources.values())
        assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
        assert not sources["val"] & sources["test"]
    # A dataset's own train/ split has validation carved the same way.
    carved = resolve_splits({"train": _folders(12), "test": _folders(2)}, 0.25, 0.0, seed=0)
    assert not {s.group for s in carved["train"]} & {s.group for s in carved["val"]}
    # Samples that are each their own source keep the plain stratified split.
    plain = resolve_splits({"all": _samples(20, 10)}, 0.2, 0.1, seed=0)
    assert [_counts(plain[k]) for k in ("train", "val", "test")] == [(14, 7), (4, 2), (2, 1)]


def test_fold_i_is_the_test_split_and_validation_comes_from_the_others():
    samples = _samples(9, 9)
    folds = grouped_split(samples, {f"f{k}": 1 / 3 for k in range(3)}, seed=2)
    for fold in range(3):
        splits = resolve_splits(
            {"train": samples[:10], "test": samples[10:]}, 0.2, 0.0, 2, num_folds=3, fold=fold
        )
        assert splits["test"] == folds[f"f{fold}"]
        assert _counts(splits["val"]) == (1, 1)  # 20 % of the other folds' 6 + 6, per class
        assert len(splits["train"]) + len(splits["val"]) == 12


@pytest.mark.parametrize(
    "num_folds,fold,says",
    [(3, None, "go together"), (None, 0, "go together"), (1, 0, ">= 2"), (3, 3, "must be 0..2")],
)
def test_bad_fold_settings_are_refused(num_folds, fold, says):
    with pytest.raises(ConfigError, match=says):
        resolve_splits({"all": _samples(6, 6)}, 0.1, 0.1, 0, num_folds=num_folds, fold=fold)


def test_training_size_keeps_positives_nested_and_every_negative():
    indexed = {"all": _samples(40, 20)}
    small = resolve_splits(indexed, 0.15, 0.15, 0, train_positives=5)["train"]
    large = resolve_splits(indexed, 0.15, 0.15, 0, train_positives=20)["train"]
    full = resolve_splits(indexed, 0.15, 0.15, 0)["train"]
    assert _counts(small) == (5, 14) and _counts(large) == (20, 14) and _counts(full) == (28, 14)
    assert {s.sample_id for s in small} < {s.sample_id for s in large}
    with pytest.raises(ConfigError, match="data.train_positives=29 but the training split has 28"):
        resolve_splits(indexed, 0.15, 0.15, 0, train_positives=29)


# ---------------------------------------------------------------- joined at the sweep folder


def _job(
    root: Path, name: str, overrides: list[str], scores: list[tuple[int, float]], **config
) -> None:
    """A finished job folder as a sweep leaves it (metrics from its own scores)."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"seed": 0}))
    lines = ["sample_id,image,label,decision_score,decision,dice"]
    lines += [f"s{i},x.png,{label},{score},0," for i, (label, score) in enumerate(scores)]
    (job / "test_scores.csv").write_text("\n".join(lines) + "\n")
    auc = {(1, 0.9): 1.0, (1, 0.3): 0.0}[scores[0]]
    ap = {(1, 0.9): 1.0, (1, 0.3): 0.5}[scores[0]]
    metrics = {"image_auc": auc, "image_ap": ap, "dice_mean": 0.5, "num_segmented": 1}
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": "finished"}))


def test_pooled_scores_and_the_mean_over_folds(tmp_path):
    # fold 0 separates perfectly (AUC 1, AP 1), fold 1 ranks its negative first (AUC 0, AP 0.5).
    # Pooled: positives 0.9, 0.3; negatives 0.2, 0.6. AUC = 3 of 4 pairs right = 0.75;
    # AP: 0.9 (P) -> precision 1 at recall 1/2, 0.6 (N), 0.3 (P) -> 2/3 at recall 1: 5/6.
    _job(tmp_path, "0_data.fold=0", ["data.fold=0"], [(1, 0.9), (0, 0.2)])
    _job(tmp_path, "1_data.fold=1", ["data.fold=1"], [(1, 0.3), (0, 0.6)])
    rows = collect_runs(tmp_path)
    (joined,) = pooled_folds(tmp_path, rows, ["data.fold"])
    assert joined["folds"] == "2/2" and joined["fold_values"] == "0 1"
    assert joined["pooled_image_auc"] == pytest.approx(0.75)
    assert joined["pooled_image_ap"] == pytest.approx(5 / 6)
    # the trapezoid under (0, 1), (1/2, 1), (1/2, 1/2), (1, 2/3): 1/2 + 7/24
    assert joined["pooled_image_ap_trapezoid"] == pytest.approx(1 / 2 + 7 / 24)
    assert joined["image_auc_mean"] == pytest.approx(0.5)
    assert joined["image_auc_std"] == pytest.approx(2**0.5 / 2)  # sample std of 1 and 0
    assert joined["image_ap"] == "0.7500 ± 0.3536"


def test_folds_of_the_grid_no_job_started_count_as_missing(tmp_path):
    """A sweep over three folds stopped before its third: two of three folds joined, not
    two of two, where the sweep's grid is known; the fold of a job whose folder holds no
    record counts as missing too. A setting of an earlier run of the folder, not in the
    last run's grid, counts the folds its jobs ran."""
    from crackseg.runs.job_names import BASIC_SWEEPER

    hydra = {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {}},
        "overrides": {"task": ["data.num_segmented=10", "data.fold=0,1,2"]},
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))

    def by_segmented() -> dict[str, dict]:
        rows = pooled_folds(tmp_path, collect_runs(tmp_path), ["data.num_segmented", "data.fold"])
        return {row["data.num_segmented"]: row for row in rows}

    for n, fold, scores in ((10, 0, [(1, 0.9), (0, 0.2)]), (10, 1, [(1, 0.3), (0, 0.6)])):
        _job(tmp_path, f"{n}_{fold}", [f"data.num_segmented={n}", f"data.fold={fold}"], scores)
    for fold in (0, 1):  # an earlier run's
        _job(tmp_path, f"0_{fold}", ["data.num_segmented=0", f"data.fold={fold}"], [(1, 0.9)])
    joined = by_segmented()
    assert joined["10"]["folds"] == "2/3" and joined["10"]["fold_values"] == "0 1"
    assert joined["0"]["folds"] == "2/2"
    shutil.rmtree(tmp_path / "10_1" / ".hydra")
    joined = by_segmented()
    assert joined["10"]["folds"] == "1/3" and joined["10"]["fold_values"] == "0"
    # without the grid (another sweeper), the folds its jobs ran
    (tmp_path / "multirun.yaml").unlink()
    _job(tmp_path, "10_2", ["data.num_segmented=10", "data.fold=2"], [(1, 0.9), (0, 0.2)])
    joined = by_segmented()
    assert joined["10"]["folds"] == "2/2"


def test_the_summary_joins_folds_per_setting_and_names_table4_rows(tmp_path):
    for row in (6, 13):
        for fold, scores in ((0, [(1, 0.9), (0, 0.2)]), (1, [(1, 0.3), (0, 0.6)])):
            overrides = [f"table4_row={row}", f"data.fold={fold}"]
            _job(tmp_path, f"{row}_{fold}", overrides, scores)
    (tmp_path / "6_1" / "status.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    write_summary(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    # the group table (a row a fold) and the joined one (a row a Table 4 row) name the row
    assert "| 6 | 1 | 6: full; weighted loss, dynamic balance, adjustment on | 0 | 1 |" in text
    assert "| 13 | 0 | 13: weak; weighted loss, adjustment on | 2/2 | 0.7500 | 0.8333 |" in text
    assert "## Folds joined (`data.fold`)" in text
    header, row6, row13 = csv.reader((tmp_path / "folds.csv").open())
    assert header[:6] == [
        "table4_row",
        "seed",
        "table4",
        "folds",
        "fold_values",
        "pooled_image_auc",
    ]
    assert row6[3:6] == ["1/2", "0", "1.0"]  # fold 1 failed: the pooled numbers are fold 0's
    assert row13[3:5] == ["2/2", "0 1"] and float(row13[5]) == pytest.approx(0.75)


def test_a_sweep_one_may_only_read_is_summarised_elsewhere(tmp_path, monkeypatch, capsys):
    """``crackseg-summary FOLDER --out DIR`` writes nothing into FOLDER; the notebook's
    summary goes to outputs/compare/ where the sweep's folder cannot be written."""
    import errno

    from crackseg.sweep import summary

    sweep = tmp_path / "multiruns" / "train" / "2026-01-01_10-00-00"
    for fold, scores in ((0, [(1, 0.9), (0, 0.2)]), (1, [(1, 0.3), (0, 0.6)])):
        _job(sweep, f"{fold}_data.fold={fold}", [f"data.fold={fold}"], scores, fold=fold)
    before = sorted(sweep.rglob("*"))
    out = tmp_path / "elsewhere"
    assert summary.main([str(sweep), "--out", str(out)]) == 0
    assert sorted(sweep.rglob("*")) == before
    assert {p.name for p in out.iterdir()} >= {"summary.csv", "summary.md", "folds.csv"}
    assert "## Folds joined (`data.fold`)" in (out / "summary.md").read_text()
    assert f"written: {out / 'summary.csv'}" in capsys.readouterr().out
    assert summary.main([str(sweep), "--out", str(out / "summary.md")]) == 2
    assert capsys.readouterr().err == f"error: --out {out / 'summary.md'} is not a folder\n"

    written = summary.atomic_write_csv

    def read_only(path, *args, **kwargs):
        if Path(path).parent == sweep:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return written(path, *args, **kwargs)

    monkeypatch.setattr(summary, "atomic_write_csv", read_only)
    project = tmp_path / "project"
    compare = summary.write_summary_to_compare(sweep, project)
    assert compare == project / "outputs" / "compare" / "train" / sweep.name
    assert (compare / "summary.csv").read_text() == (out / "summary.csv").read_text()
    assert sorted(sweep.rglob("*")) == before


def test_the_summary_names_weak_runs_that_depart_from_the_published_ones(tmp_path):
    scores = [(1, 0.9), (0, 0.2)]
    weak = {
        "data": {"num_segmented": 0},
        "loss": {"gradient_adjustment": False, "dynamic_balance": False},
    }
    published = {
        "data": {"num_segmented": 0},
        "loss": {"gradient_adjustment": True, "dynamic_balance": False},
    }
    mixed = {
        "data": {"num_segmented": 5},
        "loss": {"gradient_adjustment": False, "dynamic_balance": True},
    }
    _job(tmp_path, "0_a", ["x=0"], scores, **weak)
    _job(tmp_path, "1_b", ["x=1"], scores, **published)
    _job(tmp_path, "2_c", ["x=2"], scores, **mixed)
    write_summary(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    section = text.split("## Departures from the published settings", 1)[1]
    assert "`0_a`" in section and "gradient-flow adjustment is off" in section
    assert "`1_b`" not in section and "`2_c`" not in section
    assert not (tmp_path / "folds.csv").exists()  # no fold key swept
