"""Stratified, reproducible splits and the split.csv round trip."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from crackseg.data.samples import Sample
from crackseg.data.splits import (
    read_split_csv,
    resolve_splits,
    stratified_split,
    write_split_csv,
)
from crackseg.errors import ConfigError, DataError

FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def _samples(n_pos: int, n_neg: int, prefix: str = "") -> list[Sample]:
    pos = [
        Sample(f"{prefix}p{i:05d}", Path(f"p{i}.jpg"), Path(f"p{i}.png"), True)
        for i in range(n_pos)
    ]
    neg = [Sample(f"{prefix}n{i:05d}", Path(f"n{i}.jpg"), None, False) for i in range(n_neg)]
    return pos + neg


def _ids(splits: dict[str, list[Sample]]) -> dict[str, list[str]]:
    return {k: [s.sample_id for s in v] for k, v in splits.items()}


def _counts(samples: list[Sample]) -> tuple[int, int]:
    pos = sum(s.is_positive for s in samples)
    return pos, len(samples) - pos


def test_sizes_per_class_match_the_seed_report():
    # 9887 positives, 1411 negatives at .70/.15/.15 -> the report's 6921+987, 1483+212, 1483+212
    splits = stratified_split(_samples(9887, 1411), FRACTIONS, seed=0)
    assert _counts(splits["train"]) == (6921, 987)
    assert _counts(splits["val"]) == (1483, 212)
    assert _counts(splits["test"]) == (1483, 212)


def test_stratified_disjoint_complete():
    samples = _samples(100, 20)
    splits = stratified_split(samples, FRACTIONS, seed=3)
    # hand-computed: 15 % of 100 = 15, 15 % of 20 = 3; train takes the rest
    assert _counts(splits["train"]) == (70, 14)
    assert _counts(splits["val"]) == (15, 3)
    assert _counts(splits["test"]) == (15, 3)
    all_ids = [i for ids in _ids(splits).values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == len(samples)
    assert set(all_ids) == {s.sample_id for s in samples}


def test_rounding_remainder_goes_to_first_key():
    # 7 positives: val round(1.05) = 1, test round(1.05) = 1, train 5; 1 negative: 0, 0, 1
    splits = stratified_split(_samples(7, 1), FRACTIONS, seed=0)
    assert [_counts(splits[k]) for k in ("train", "val", "test")] == [(5, 1), (1, 0), (1, 0)]
    # half rounds up: 10 * .25 = 2.5 -> 3
    splits = stratified_split(_samples(10, 0), {"a": 0.5, "b": 0.25, "c": 0.25}, seed=0)
    assert [len(splits[k]) for k in "abc"] == [4, 3, 3]


def test_reproducible_and_order_independent():
    samples = _samples(50, 30)
    first = _ids(stratified_split(samples, FRACTIONS, seed=7))
    shuffled = list(samples)
    random.Random(1).shuffle(shuffled)
    assert _ids(stratified_split(shuffled, FRACTIONS, seed=7)) == first
    assert _ids(stratified_split(samples, FRACTIONS, seed=8)) != first


def test_bad_fractions_and_duplicates():
    with pytest.raises(ConfigError):
        stratified_split(_samples(5, 5), {"train": 0.7, "val": 0.2}, seed=0)
    with pytest.raises(ConfigError):
        stratified_split(_samples(5, 5), {"train": 1.2, "val": -0.2}, seed=0)
    with pytest.raises(DataError, match="p00000"):
        stratified_split(_samples(2, 0) + _samples(1, 0), {"train": 1.0}, seed=0)


def test_resolve_all_is_three_way():
    splits = resolve_splits({"all": _samples(100, 20)}, 0.15, 0.15, seed=0)
    assert [_counts(splits[k]) for k in ("train", "val", "test")] == [(70, 14), (15, 3), (15, 3)]


def test_resolve_carves_val_from_train():
    train, test = _samples(40, 20, "tr"), _samples(10, 5, "te")
    splits = resolve_splits({"train": train, "test": test}, 0.25, 0.15, seed=0)
    assert _ids(splits)["test"] == [s.sample_id for s in test]  # the dataset's test is kept
    assert _counts(splits["val"]) == (10, 5)  # 25 % of 40 and of 20
    assert _counts(splits["train"]) == (30, 15)
    carved = {s.sample_id for s in splits["train"] + splits["val"]}
    assert carved == {s.sample_id for s in train}


def test_resolve_keeps_three_splits():
    indexed = {
        "train": _samples(4, 2, "a"),
        "val": _samples(2, 1, "b"),
        "test": _samples(2, 1, "c"),
    }
    assert _ids(resolve_splits(indexed, 0.15, 0.15, seed=0)) == _ids(indexed)


def test_split_csv_round_trip(tmp_path):
    samples = _samples(30, 10)
    splits = resolve_splits({"all": samples}, 0.2, 0.2, seed=5)
    path = tmp_path / "run" / "split.csv"
    write_split_csv(path, splits)
    lines = path.read_text().splitlines()
    assert lines[0] == "split,sample_id,label,segmented,image,mask"
    assert lines[1].startswith("train,")
    positive_row = next(r for r in lines if ",p00000," in r)
    assert positive_row.endswith(",1,1,p0.jpg,p0.png")
    assert read_split_csv(path) == _ids(splits)
    # a different seed, but the file pins the split
    again = resolve_splits({"all": list(reversed(samples))}, 0.2, 0.2, seed=99, split_file=path)
    assert _ids(again) == _ids(splits)
    negative_row = next(r for r in lines if ",n00000," in r)
    assert negative_row.endswith(",0,0,n0.jpg,")
    for folds in ({"num_folds": 3, "fold": 0}, {"num_folds": 3}):
        with pytest.raises(ConfigError, match="data.split_file fixes the split already"):
            resolve_splits({"all": samples}, 0.2, 0.2, seed=0, split_file=path, **folds)
    # a fold beside a split file names the published fold it holds: the file decides
    named = resolve_splits({"all": samples}, 0.2, 0.2, seed=0, split_file=path, fold=2)
    assert _ids(named) == _ids(splits)
    for fold in ("abc", -1, 1.5):  # no fold's name: the sweep's fold join would be wrong
        with pytest.raises(ConfigError, match="data.fold names the published fold"):
            resolve_splits({"all": samples}, 0.2, 0.2, seed=0, split_file=path, fold=fold)


def test_a_split_file_gives_back_names_that_are_not_utf8(tmp_path):
    """Linux allows any bytes in a name; Python holds the others as surrogates, which the
    file keeps as the bytes they were, so the split pins the same samples again."""
    name = os.fsdecode(b"caf\xe9")
    sample = Sample(name, Path(f"{name}.jpg"), Path(f"{name}.png"), True)
    path = tmp_path / "split.csv"
    write_split_csv(path, {"train": [sample], "test": _samples(1, 1)})
    assert b"train,caf\xe9,1,1,caf\xe9.jpg,caf\xe9.png" in path.read_bytes()
    assert read_split_csv(path)["train"] == [name]


def test_a_split_file_gives_back_names_that_begin_or_end_with_a_space(tmp_path):
    """Written as they are, they were read back stripped: no such sample in the dataset. A
    file typed by hand with spaces after its commas still names its samples."""
    samples = [Sample(name, Path(f"{name}.jpg"), None, False) for name in (" lead", "b ", "c")]
    path = tmp_path / "split.csv"
    write_split_csv(path, {"train": samples[:2], "test": samples[2:]})
    splits = resolve_splits({"all": samples}, 0.0, 0.0, seed=0, split_file=path)
    assert [s.sample_id for s in splits["train"]] == [" lead", "b "]
    typed = tmp_path / "typed.csv"
    typed.write_text("split,sample_id\ntrain, c\ntest, lead\n")
    splits = resolve_splits({"all": samples}, 0.0, 0.0, seed=0, split_file=typed)
    assert [s.sample_id for s in splits["train"]] == ["c"]


@pytest.mark.parametrize(
    ("folds", "expected"),
    [
        ({"num_folds": 3, "fold": True}, "data.fold must be 0..2 (data.num_folds=3), not true"),
        ({"num_folds": 3, "fold": 1.5}, "data.fold must be 0..2 (data.num_folds=3), not 1.5"),
        ({"num_folds": True, "fold": 0}, "data.num_folds must be an integer >= 2, not true"),
    ],
)
def test_a_fold_typed_as_a_boolean_or_a_fraction_is_refused_by_name(folds, expected):
    """True is 1 to Python: data.fold=true ended in a KeyError of 'foldTrue'."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        resolve_splits({"all": _samples(6, 6)}, 0.0, 0.0, seed=0, **folds)


def test_a_weak_positive_is_recorded_without_its_mask(tmp_path):
    samples = {"train": _samples(2, 1), "test": _samples(1, 1, "t")}
    path = tmp_path / "split.csv"
    write_split_csv(path, samples, segmented_ids=frozenset({"p00001"}))
    rows = path.read_text().splitlines()
    assert "train,p00000,1,0,p0.jpg," in rows  # weak
    assert "train,p00001,1,1,p1.jpg,p1.png" in rows
    assert "test,tp00000,1,1,p0.jpg,p0.png" in rows  # only training positives train weakly


def test_split_csv_missing_ids_and_malformed(tmp_path):
    path = tmp_path / "split.csv"
    write_split_csv(path, {"train": _samples(3, 1), "test": _samples(0, 0)})
    with pytest.raises(DataError, match="p00002"):
        resolve_splits({"all": _samples(2, 1)}, 0.1, 0.1, seed=0, split_file=path)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\na,1\n")
    with pytest.raises(DataError, match="bad.csv"):
        read_split_csv(bad)
    bad.write_text("split,sample_id\nholdout,a\n")
    with pytest.raises(DataError, match="holdout"):
        read_split_csv(bad)
    bad.write_text("split,sample_id\ntrain,a\ntest,a\n")
    with pytest.raises(DataError, match="repeated"):
        read_split_csv(bad)
    with pytest.raises(DataError, match="nothere.csv"):
        read_split_csv(tmp_path / "nothere.csv")


def test_a_sample_named_twice_in_one_split_is_not_said_to_be_in_two(tmp_path):
    """A KSDD folder and one of its parts, both in train: named twice, not in two splits."""
    parts = [Sample(f"kos03_Part{k}", Path(f"{k}.jpg"), None, False, group="kos03") for k in (0, 1)]
    path = tmp_path / "split.csv"
    path.write_text("split,sample_id\ntrain,kos03\ntrain,kos03_Part1\n")
    with pytest.raises(DataError, match=r"names samples more than once .*: kos03_Part1$"):
        resolve_splits({"all": parts}, 0.0, 0.0, seed=0, split_file=path)


def test_a_split_knows_itself_again_and_names_what_moved() -> None:
    """Checkpoints keep a split's identity; a resumed run compares it with its own."""
    from crackseg.data.splits import DataSplit

    def sample(name: str, positive: bool) -> Sample:
        return Sample(name, Path(f"{name}.png"), None, positive)

    before = DataSplit(
        {"train": [sample("a", True), sample("b", False)], "val": [], "test": [sample("c", False)]},
        frozenset({"a"}),
    )
    recorded = before.identity()
    assert before.changes_since(recorded) == []
    moved = DataSplit(
        {"train": [sample("a", True), sample("c", False)], "val": [], "test": [sample("b", False)]},
        frozenset({"a"}),
    )
    assert moved.changes_since(recorded) == [
        "train: 1 gone (b), 1 new (c)",
        "test: 1 gone (c), 1 new (b)",
    ]
    weak = DataSplit(before.splits, frozenset())  # a's mask no longer used
    assert weak.changes_since(recorded) == ["the same images, other labels or masks used"]
