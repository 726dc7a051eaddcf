"""The paper's datasets as distributed: KolektorSDD, DAGM 2007 and Severstal's run-length
masks, read from tiny replicas; their errors name the file (and the CSV line)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import datamodule_of
from helpers.paper_replicas import make_dagm, make_ksdd, make_severstal, severstal_codes

from crackseg.data.datamodule import CrackDataModule
from crackseg.data.io import read_mask
from crackseg.data.layouts import check_samples, index_layout
from crackseg.data.rle import RunLengthMask, decode_runs, parse_runs
from crackseg.data.tools import main
from crackseg.errors import ConfigError, DataError

# ---------------------------------------------------------------- run-length codes


def test_codes_are_one_based_and_column_major():
    # 4x5 image: pixels 1-3 run down column 0; 10-11 are rows 1-2 of column 2.
    mask = decode_runs(parse_runs("1 3 10 2", 4, 5, "x"), 4, 5)
    expected = np.zeros((4, 5), np.uint8)
    expected[0:3, 0] = 255
    expected[1:3, 2] = 255
    np.testing.assert_array_equal(mask, expected)
    # the last pixel (20) is the bottom-right one
    assert decode_runs(parse_runs("20 1", 4, 5, "x"), 4, 5)[3, 4] == 255


def test_the_replica_encoder_and_the_decoder_agree():
    mask = np.zeros((256, 1600), np.uint8)
    mask[100:140, 200:400] = 1
    mask[0, 1599] = 1
    runs = parse_runs(severstal_codes(mask), 256, 1600, "x")
    assert len(runs) == 200 + 1  # one run a column of the band, one for the corner pixel
    np.testing.assert_array_equal(decode_runs(runs, 256, 1600) > 0, mask > 0)


@pytest.mark.parametrize(
    "code,says",
    [
        ("1 3 10", "3 numbers, not start-length pairs"),
        ("1 3 x 2", "'x', not an integer"),
        ("1.5 3", "'1.5', not an integer"),
        ("0 3", "run 0 3 lies outside"),
        ("19 3", "run 19 3 lies outside the 4x5 image (pixels 1..20)"),
        ("5 0", "run 5 0 lies outside"),
    ],
)
def test_malformed_codes_are_refused_with_where(code, says):
    with pytest.raises(DataError, match="train.csv, line 7") as raised:
        parse_runs(code, 4, 5, "train.csv, line 7")
    assert says in str(raised.value)


# ---------------------------------------------------------------- Severstal


def test_severstal_images_labels_and_joined_classes(tmp_path):
    root = make_severstal(tmp_path / "severstal", positives=2, negatives=2)
    samples = index_layout("severstal", root)["all"]
    assert [s.is_positive for s in samples] == [True, True, False, False]
    first = samples[0]
    assert isinstance(first.mask_path, RunLengthMask) and first.mask_path.lines == (2, 3)
    assert str(first.mask_path) == f"{root / 'train.csv'} lines 2,3"
    mask = read_mask(first.mask_path)
    # band 40x200 of class 3 plus 10x100 of class 1, both in one mask
    assert mask.shape == (256, 1600) and int((mask > 0).sum()) == 40 * 200 + 10 * 100
    assert mask[120, 250] == 255 and mask[15, 1050] == 255 and mask[60, 250] == 0
    assert samples[2].mask_path is None  # an image without a row is a negative
    # every file reads and the decoded masks match their images
    assert [s.sample_id for s in check_samples(samples)] == [s.sample_id for s in samples]


def test_severstal_keeps_codes_not_masks(tmp_path):
    """Memory grows by the codes (a few numbers an image), not by 256x1600 masks."""
    root = make_severstal(tmp_path / "severstal", positives=3, negatives=0)
    samples = index_layout("severstal", root)["all"]
    for sample in samples:
        assert sample.mask_path.runs.nbytes <= 2 * 4 * 300  # a run per column of the band


def _csv(root: Path, *rows: str) -> None:
    (root / "train.csv").write_text("\n".join(["ImageId,ClassId,EncodedPixels", *rows]) + "\n")


def test_severstal_errors_name_the_file_and_line(tmp_path):
    root = make_severstal(tmp_path / "s", positives=1, negatives=1)
    names = sorted(p.name for p in (root / "train_images").iterdir())
    _csv(root, f"{names[0]},1,1 10", f"{names[1]},2,5 7 9")
    with pytest.raises(DataError, match=r"train.csv, line 3 \(.*\): EncodedPixels holds 3"):
        index_layout("severstal", root)
    _csv(root, f"{names[0]},1,409600 2")
    with pytest.raises(DataError, match=r"line 2 .*run 409600 2 lies outside the 256x1600"):
        index_layout("severstal", root)
    _csv(root, f"{names[0]},1,1 10", "gone.jpg,4,1 3")
    with pytest.raises(DataError, match=r"missing: .*gone.jpg \(.*train.csv line 3\)"):
        index_layout("severstal", root)
    (root / "train.csv").write_text("ImageId_ClassId,EncodedPixels\nx.jpg_1,1 2\n")
    with pytest.raises(DataError, match=r"lacks ImageId and ClassId \(expected the columns"):
        index_layout("severstal", root)


def test_a_severstal_csv_saved_with_a_byte_order_mark_is_read_as_it_was(tmp_path):
    """A spreadsheet's "CSV UTF-8" starts with a BOM, invisible in a terminal: it is not
    part of the first column's name."""
    root = make_severstal(tmp_path / "s", positives=2, negatives=1)

    def samples() -> list[tuple]:
        found = index_layout("severstal", root)["all"]
        return [(s.sample_id, s.is_positive, str(s.mask_path)) for s in found]

    before = samples()
    csv_file = root / "train.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())
    assert samples() == before and sum(positive for _, positive, _ in before) == 2


def test_severstal_error_is_one_line_on_the_command_line(tmp_path, capsys):
    root = make_severstal(tmp_path / "s", positives=1, negatives=0)
    name = next((root / "train_images").iterdir()).name
    _csv(root, f"{name},1,1 x")
    assert main(["stats", str(root), "--layout", "severstal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "line 2" in err[0]


# ---------------------------------------------------------------- KolektorSDD


def test_ksdd_folders_are_groups_and_labels_come_from_masks(tmp_path):
    root = make_ksdd(tmp_path / "ksdd", folders=2, parts=3)
    samples = index_layout("ksdd", root)["all"]
    assert [s.sample_id for s in samples] == [
        "kos01_Part0", "kos01_Part1", "kos01_Part2", "kos02_Part0", "kos02_Part1", "kos02_Part2",
    ]  # fmt: skip
    assert [s.is_positive for s in samples] == [False, True, False] * 2
    assert [s.group for s in samples] == ["kos01"] * 3 + ["kos02"] * 3


def test_ksdd_leaves_kos21_part7_out(tmp_path):
    root = make_ksdd(tmp_path / "ksdd", folders=21, parts=8)
    ids = {s.sample_id for s in index_layout("ksdd", root)["all"]}
    assert "kos21_Part6" in ids and "kos21_Part7" not in ids and len(ids) == 21 * 8 - 1


def test_ksdd_folder_without_masks_is_named(tmp_path):
    root = make_ksdd(tmp_path / "ksdd", folders=2, parts=2)
    for mask in (root / "kos02").glob("*_label.bmp"):
        mask.unlink()
    with pytest.raises(DataError, match=r"folder without masks .*kos02"):
        index_layout("ksdd", root)
    make_ksdd(root, folders=2, parts=2)
    (root / "kos02" / "Part1_label.bmp").unlink()
    with pytest.raises(DataError, match=r"images without a mask: .*kos02/Part1.jpg"):
        index_layout("ksdd", root)


# ---------------------------------------------------------------- DAGM


def test_dagm_class_train_test_and_weak_labels(tmp_path):
    root = make_dagm(tmp_path / "dagm", classes=(1, 2), images=4)
    indexed = index_layout("dagm", root, class_id=2)
    assert sorted(indexed) == ["test", "train"]
    assert [s.sample_id for s in indexed["train"]] == [f"class2_train_{i:04d}" for i in range(1, 5)]
    assert [s.is_positive for s in indexed["test"]] == [True, False, True, False]
    assert all(str(s.image_path).count("Class2") for s in indexed["train"])
    label = read_mask(indexed["train"][0].mask_path)
    assert label[32, 32] == 255 and label[0, 0] == 0  # the ellipse


def test_files_of_another_kind_in_a_papers_dataset_are_named(tmp_path, caplog):
    """The paper layouts left them out without a word (the folder layouts named them)."""
    root = make_ksdd(tmp_path / "ksdd", folders=2, parts=2)
    (root / "kos01" / "Part0.gif").write_bytes(b"GIF89a")
    dagm = make_dagm(tmp_path / "dagm", classes=(1,), images=2)
    (dagm / "Class1" / "Train" / "Label" / "Labels.txt").write_text("1\t0\n")
    (dagm / "Class1" / "Train" / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        index_layout("ksdd", root)
        index_layout("dagm", dagm, class_id=1)
    warned = [r.getMessage() for r in caplog.records if "left out, not" in r.getMessage()]
    assert len(warned) == 2 and "Part0.gif" in warned[0] and "notes.txt" in warned[1]


def test_dagm_errors(tmp_path):
    root = make_dagm(tmp_path / "dagm", classes=(1,), images=2)
    with pytest.raises(
        DataError, match=r"no DAGM class folder for data.dagm_class=3 under .*\(found: Class1\)"
    ):
        index_layout("dagm", root, class_id=3)
    # the archive unpacked into a folder of its own: the folder to point at is named
    with pytest.raises(DataError, match=r"\(found: none\); point data.root at .*/dagm$"):
        index_layout("dagm", tmp_path, class_id=1)
    shutil.rmtree(root / "Class1" / "Test" / "Label")
    with pytest.raises(DataError, match=r"DAGM class without Label/ .*Class1/Test/Label"):
        index_layout("dagm", root, class_id=1)


def test_dagm_class_is_a_data_setting(tmp_path):
    root = make_dagm(tmp_path / "dagm", classes=(1, 2), images=4)
    common = {"input_height": 64, "input_width": 128, "num_workers": 0, "layout": "dagm"}
    datamodule = datamodule_of(root, dagm_class=2, val_fraction=0, **common)
    assert datamodule.source.layout_options == {"class_id": 2}
    splits = datamodule.data_split.splits
    assert len(splits["train"]) == 4 and len(splits["test"]) == 4 and splits["val"] == []
    with pytest.raises(ConfigError, match="data.dagm_class must be a class number"):
        CrackDataModule.from_config({"root": str(root), "dagm_class": 0, **common})
    # a published split file's fold is its class: another fold would mislabel the run
    split = tmp_path / "class2.csv"
    datamodule.data_split.save(split)
    with pytest.raises(ConfigError, match="data.fold=5 against data.dagm_class=2"):
        CrackDataModule.from_config(
            {"root": str(root), "dagm_class": 2, "split_file": str(split), "fold": 5, **common}
        )


def test_a_grey_paper_dataset_trains_from_its_datamodule(tmp_path):
    root = make_ksdd(tmp_path / "ksdd", folders=2, parts=4)
    datamodule = datamodule_of(
        root, layout="ksdd", input_channels=1, input_height=64, input_width=32,
        num_folds=2, fold=1, val_fraction=0,
    )  # fmt: skip
    item = datamodule.dataset("test")[1]
    assert tuple(item["image"].shape) == (1, 64, 32) and item["label"] == 1
    assert item["mask"].sum() > 0
