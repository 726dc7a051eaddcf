"""The crackseg-data tool: tiling, the stats table, and its error exit."""

from __future__ import annotations

import csv
import json
import logging
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.paper_replicas import make_dagm, make_ksdd, write_image

import crackseg.data.tiles as tiles
from crackseg.data.data_settings import InputSize, SourceSettings
from crackseg.data.datamodule import CrackDataModule
from crackseg.data.layouts import index_layout
from crackseg.data.tiles import tile_dataset
from crackseg.data.tools import main
from crackseg.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _photo(base: Path, name: str, crack_rows: list[tuple[int, int, int]], h=64, w=96) -> None:
    """A photograph with horizontal crack segments (row, col0, col1) marked in its mask."""
    image = np.random.default_rng(len(name)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for row, c0, c1 in crack_rows:
        mask[row, c0:c1] = 255
    write_image(base / "images" / f"{name}.jpg", image)
    write_image(base / "masks" / f"{name}.png", mask)


def test_a_photographs_label_wins_over_its_mask_as_in_a_run(tmp_path, caplog):
    """A crack photograph whose mask is blank gave crack-free tiles (a run trains it as a
    weak positive): it is not tiled; a crack-free one whose mask marks a crack gives only
    crack-free tiles (a run keeps it a negative). Both are named in a warning."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _photo(src, "P1", [(3, 0, 30)])
    _photo(src, "P2", [])  # a crack photograph, its crack not drawn
    _photo(src, "noncrack_N1", [(40, 0, 30)])
    with caplog.at_level("WARNING"):
        counts = tile_dataset(src, dst, size=32, min_crack_pixels=20)
    assert counts == {"all": (1, 11)}  # P1: 1 + 5; N1: 6 crack-free; P2: none
    names = {p.name for p in (dst / "images").iterdir()}
    assert not any("P2" in name for name in names)
    assert {n for n in names if "N1" in n} == {
        f"noncrack_noncrack_N1_r{r}_c{c}.png" for r in range(2) for c in range(3)
    }
    for name in names - {"P1_r0_c0.png"}:
        assert cv2.imread(str(dst / "masks" / name), cv2.IMREAD_UNCHANGED).max() == 0, name
    warned = caplog.text
    assert "1 crack photograph with an empty mask" in warned and "P2" in warned
    assert "1 crack-free photograph with crack pixels in the mask" in warned
    assert "noncrack_N1" in warned
    # none of them tileable: no empty dataset (which data.tile would have kept, marked done)
    only = tmp_path / "only"
    _photo(only, "P2", [])
    with pytest.raises(DataError, match=r"^no tile cut: every photograph is a crack photo"):
        tile_dataset(only, tmp_path / "none", size=32)


def test_tile_counts_names_and_noncrack(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    # 64x96 -> 2 x 3 tiles of 32; a 30-px crack in tile r0_c0, a 5-px speck in tile r1_c2
    _photo(src, "P1", [(3, 0, 30), (40, 70, 75)])
    counts = tile_dataset(src, dst, size=32, min_crack_pixels=20)
    assert counts == {"all": (1, 4)}  # the speck's tile is neither crack nor clean: left out
    names = sorted(p.name for p in (dst / "images").iterdir())
    assert names == [
        "P1_r0_c0.png",
        "noncrack_P1_r0_c1.png",
        "noncrack_P1_r0_c2.png",
        "noncrack_P1_r1_c0.png",
        "noncrack_P1_r1_c1.png",
    ]
    assert sorted(p.name for p in (dst / "masks").iterdir()) == names
    clean = cv2.imread(str(dst / "masks" / "noncrack_P1_r1_c1.png"), cv2.IMREAD_UNCHANGED)
    assert clean.shape == (32, 32) and clean.max() == 0
    # with a threshold of 1 the speck's tile is a crack
    assert tile_dataset(src, tmp_path / "all", size=32, min_crack_pixels=1) == {"all": (2, 4)}
    crack = cv2.imread(str(dst / "masks" / "P1_r0_c0.png"), cv2.IMREAD_UNCHANGED)
    assert int((crack > 127).sum()) == 30
    source = cv2.imread(str(src / "images" / "P1.jpg"))
    tile = cv2.imread(str(dst / "images" / "noncrack_P1_r1_c1.png"))
    np.testing.assert_array_equal(tile, source[32:64, 32:64])
    # the output reads back in the crack_segmentation layout
    samples = index_layout("crack_segmentation", dst)["all"]
    assert [s.is_positive for s in samples].count(True) == 1 and len(samples) == 5


def test_a_stride_of_zero_is_refused_not_taken_as_the_tile_size(tmp_path, capsys):
    _photo(tmp_path / "src", "A", [(3, 0, 30)])
    assert main(["tile", str(tmp_path / "src"), str(tmp_path / "dst"), "--stride", "0"]) == 2
    assert capsys.readouterr().err == (
        "error: tile size and stride must be positive, got 160 and 0\n"
    )
    assert not (tmp_path / "dst").exists()


def test_tile_stride_and_pad(tmp_path):
    src = tmp_path / "src"
    _photo(src, "A", [(5, 0, 60)], h=70, w=100)
    # no pad: rows 0,32 ; cols 0,32,64 -> 6 ; stride 16: rows 0,16,32 ; cols 0..64 -> 3 x 5
    assert sum(tile_dataset(src, tmp_path / "a", size=32, min_crack_pixels=1)["all"]) == 6
    assert (
        sum(tile_dataset(src, tmp_path / "b", size=32, stride=16, min_crack_pixels=1)["all"]) == 15
    )
    # pad: rows ceil(38 / 32) + 1 = 3, cols ceil(68 / 32) + 1 = 4
    assert (
        sum(tile_dataset(src, tmp_path / "c", size=32, pad=True, min_crack_pixels=1)["all"]) == 12
    )
    assert (tmp_path / "c" / "images" / "noncrack_A_r2_c3.png").exists()
    corner = cv2.imread(str(tmp_path / "c" / "images" / "noncrack_A_r2_c3.png"))
    assert corner.shape == (32, 32, 3)


def test_tile_by_photograph_keeps_photos_disjoint(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(10):
        _photo(src, f"IMG{i}", [(10, 0, 90)])
    counts = tile_dataset(src, dst, size=32, test_fraction=0.3, seed=1)
    assert set(counts) == {"train", "test"}
    photos = {}
    for split in ("train", "test"):
        names = [p.stem for p in (dst / split / "images").iterdir()]
        photos[split] = {n.removeprefix("noncrack_").split("_r")[0] for n in names}
        assert len(names) == 6 * len(photos[split])
    assert len(photos["test"]) == 3 and len(photos["train"]) == 7  # round(.3 * 10)
    assert not photos["train"] & photos["test"]
    with (dst / "source_split.csv").open() as handle:
        recorded = {row["sample_id"]: row["split"] for row in csv.DictReader(handle)}
    assert {k for k, v in recorded.items() if v == "test"} == photos["test"]
    # the same seed gives the same photographs
    again = tile_dataset(src, tmp_path / "again", size=32, test_fraction=0.3, seed=1)
    assert again == counts
    assert {p.name for p in (tmp_path / "again" / "test" / "images").iterdir()} == {
        p.name for p in (dst / "test" / "images").iterdir()
    }


def test_tile_val_and_test_by_photograph(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(10):
        _photo(src, f"IMG{i}", [(10, 0, 90)])
    counts = tile_dataset(src, dst, size=32, val_fraction=0.2, test_fraction=0.3, seed=0)
    # 10 photographs x 6 tiles: val round(2.0) = 2, test round(3.0) = 3, train the other 5
    assert {k: sum(v) for k, v in counts.items()} == {"train": 30, "val": 12, "test": 18}
    indexed = index_layout("crack_segmentation", dst)
    assert sorted(indexed) == ["test", "train", "val"]


def test_tile_keeps_source_splits_and_refuses_non_empty_dst(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _photo(src / "train", "T", [(3, 0, 30)])
    _photo(src / "test", "E", [(3, 0, 30)])
    assert main(["tile", str(src), str(dst), "--size", "32"]) == 0
    assert (dst / "train" / "images" / "T_r0_c0.png").exists()
    assert (dst / "test" / "images" / "E_r0_c0.png").exists()
    assert "| **Sum**     | 2           | 10          | 12          |" in capsys.readouterr().out
    assert main(["tile", str(src), str(dst), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and str(dst) in err


def _crackforest(root: Path, names: list[str], cell: bool = False) -> np.ndarray:
    """CrackForest as distributed: image/NAME.jpg and groundTruth/NAME.mat, whose
    groundTruth.Segmentation marks a crack 2 and the background 1 (the first photograph
    has a one-pixel crack in row 5). Returns that photograph's expected mask."""
    import scipy.io

    segmentation = np.ones((32, 48), np.uint8)
    segmentation[5, 10:30] = 2
    (root / "image").mkdir(parents=True)
    (root / "groundTruth").mkdir()
    for i, name in enumerate(names):
        write_image(root / "image" / f"{name}.jpg", np.full((32, 48, 3), 40 * i, np.uint8))
        truth = {"Segmentation": segmentation if i == 0 else np.ones_like(segmentation)}
        truth["Boundaries"] = truth["Segmentation"] == 2
        if cell:  # a cell around the struct, as BSDS-style files hold it
            wrapped = np.empty((1, 1), dtype=object)
            wrapped[0, 0] = truth
            truth = wrapped
        scipy.io.savemat(root / "groundTruth" / f"{name}.mat", {"groundTruth": truth})
    return np.where(segmentation == 2, 255, 0).astype(np.uint8)


@pytest.mark.parametrize("cell", [False, True])
def test_crackforest_as_distributed_becomes_the_layout_it_tiles(tmp_path, capsys, cell):
    src, dst = tmp_path / "CrackForest-dataset", tmp_path / "cfd"
    expected = _crackforest(src, ["001", "002"], cell)
    assert main(["crackforest", str(src), str(dst)]) == 0
    assert "2 photographs and their masks written" in capsys.readouterr().out
    assert sorted(p.name for p in (dst / "images").iterdir()) == ["001.jpg", "002.jpg"]
    assert (dst / "images" / "001.jpg").read_bytes() == (src / "image" / "001.jpg").read_bytes()
    mask = cv2.imread(str(dst / "masks" / "001.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert not cv2.imread(str(dst / "masks" / "002.png"), cv2.IMREAD_UNCHANGED).any()
    (samples,) = index_layout("crack_segmentation", dst).values()  # what cfd_tiles tiles
    assert [Path(s.mask_path).name for s in samples] == ["001.png", "002.png"]


def test_crackforest_photographs_of_any_image_type_are_converted_and_others_named(
    tmp_path, capsys, caplog
):
    """A photograph saved as .jpeg or .png was dropped without a word, and macOS's
    ``._001.jpg`` beside the photographs stopped the conversion."""
    src, dst = tmp_path / "CrackForest-dataset", tmp_path / "cfd"
    _crackforest(src, ["001", "002", "003", "004"])
    for name, suffix in (("002", ".jpeg"), ("003", ".png")):
        (src / "image" / f"{name}.jpg").rename(src / "image" / f"{name}{suffix}")
    (src / "image" / "._001.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (src / "image" / "004.jpg").unlink()  # its mask left without a photograph
    with caplog.at_level("WARNING"):
        assert main(["crackforest", str(src), str(dst)]) == 0
    assert "3 photographs and their masks written" in capsys.readouterr().out
    assert sorted(p.name for p in (dst / "images").iterdir()) == ["001.jpg", "002.jpeg", "003.png"]
    assert "1 mask in" in caplog.text and "004.mat" in caplog.text
    write_image(src / "image" / "001.png", np.zeros((32, 48, 3), np.uint8))  # a second 001
    assert main(["crackforest", str(src), str(tmp_path / "again")]) == 2
    assert "several files share one name" in capsys.readouterr().err


def test_crackforest_that_cannot_be_converted_is_one_line_and_leaves_nothing(tmp_path, capsys):
    src, dst = tmp_path / "CrackForest-dataset", tmp_path / "cfd"
    assert main(["crackforest", str(tmp_path), str(dst)]) == 2
    assert "is not CrackForest as distributed: it needs image/ and groundTruth/" in (
        capsys.readouterr().err
    )
    _crackforest(src, ["001", "002", "003"])
    (src / "groundTruth" / "003.mat").unlink()
    assert main(["crackforest", str(src), str(dst)]) == 2
    assert capsys.readouterr().err == "error: photographs without a groundTruth/NAME.mat: 003.jpg\n"
    (src / "groundTruth" / "003.mat").write_text("not a MATLAB file")
    assert main(["crackforest", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / 'groundTruth' / '003.mat'} is not a MATLAB file")
    assert err.count("\n") == 1
    assert not dst.exists() and [p.name for p in tmp_path.iterdir()] == [src.name]
    import scipy.io

    mat = src / "groundTruth" / "003.mat"
    for truth, expected in (
        ({"Segmentation": np.full((32, 48), 255, np.uint8)}, "holds 255, not CrackForest's 1"),
        ([{"Segmentation": np.ones((32, 48))}] * 2, "holds 2 annotations of the photograph"),
    ):
        scipy.io.savemat(mat, {"groundTruth": truth})
        assert main(["crackforest", str(src), str(dst)]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ".ljust(124)
    mat.write_bytes(header + b"\x00\x02IM" + bytes(384))  # version 0x0200: HDF5
    assert main(["crackforest", str(src), str(dst)]) == 2
    assert "is a MATLAB v7.3 (HDF5) file, which crackseg does not read" in (capsys.readouterr().err)
    assert not dst.exists()
    with pytest.raises(DataError, match="CrackForest as distributed[?] convert it first"):
        index_layout("crack_segmentation", src)  # what cfd_tiles would tile, unconverted


def test_crackforest_from_a_folder_not_there_or_converted_already_says_so(tmp_path, capsys):
    """Both were told the folder is not CrackForest as distributed: one that does not exist
    is named as such, one in the crack_segmentation layout (../shared/data/cfd) is read as
    it is, with no converting."""
    dst = tmp_path / "cfd"
    assert main(["crackforest", str(tmp_path / "nope"), str(dst)]) == 2
    assert (
        capsys.readouterr().err == f"error: CrackForest folder {tmp_path / 'nope'} does not exist\n"
    )
    src = tmp_path / "converted"
    _photo(src, "001", [(3, 0, 30)])
    assert main(["crackforest", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src} holds images/ and masks/: it is in the crack_segmentation")
    assert f"data=crack_segmentation data.root={src};" in err and err.count("\n") == 1
    assert f"CRACKSEG_CFD_DIR={src} crackseg-train experiment=cfd_tiles" in err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_stats_table(tmp_path, capsys):
    for i in range(20):
        _photo(tmp_path, f"c{i:02d}", [(3, 0, 30)], h=8, w=40)
    for i in range(10):
        _photo(tmp_path, f"noncrack_{i:02d}", [], h=8, w=40)
    assert (
        main(
            [
                "stats",
                str(tmp_path),
                "--layout",
                "crack_segmentation",
                "--val-fraction",
                "0.2",
                "--test-fraction",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    # positives: val round(4.0) = 4, test round(2.0) = 2, train 14; negatives: 2, 1, 7
    assert out == [
        "| Set         | Positives   | Negatives   | Sum         |",
        "| ----------- | ----------- | ----------- | ----------- |",
        "| Train       | 14          | 7           | 21          |",
        "| Test        | 2           | 1           | 3           |",
        "| Validation  | 4           | 2           | 6           |",
        "| **Sum**     | 20          | 10          | 30          |",
    ]


def test_a_photograph_with_cracks_named_as_a_clean_one_is_refused(tmp_path, capsys):
    """Its crack tile was read back as clean, and took the name of photograph a's clean
    tile (noncrack_a_r0_c0), one overwriting the other. A clean photograph of that name
    (crack_segmentation's own) tiles as before."""
    src = tmp_path / "src"
    _photo(src, "a", [], h=32, w=32)
    _photo(src, "noncrack_b", [], h=32, w=32)
    options = {"layout": "folder", "mask_ext": "png", "label_from_mask": True}
    assert tile_dataset(src, tmp_path / "ok", size=32, **options) == {"all": (0, 2)}
    _photo(src, "noncrack_a", [(3, 0, 30)], h=32, w=32)
    with pytest.raises(DataError, match=r"noncrack_a.jpg has cracks but its name starts with"):
        tile_dataset(src, tmp_path / "lib", size=32, **options)
    command = ["tile", str(src), str(tmp_path / "dst"), "--size", "32", "--layout", "folder"]
    assert main([*command, "--mask-ext", "png", "--label-from-mask"]) == 2
    assert "has cracks but its name starts with 'noncrack'" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_tiles_go_into_the_folder_a_link_names(tmp_path, capsys):
    """A link to an empty folder as the destination: the tiles were made, then the rename
    onto the link failed, naming a temporary folder already removed."""
    src = tmp_path / "src"
    _photo(src, "P1", [(3, 0, 30)])
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert main(["tile", str(src), str(tmp_path / "link"), "--size", "32"]) == 0
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "target" / "images" / "P1_r0_c0.png").is_file()


def test_photographs_sharing_a_file_name_keep_every_tile(tmp_path):
    """Every KolektorSDD folder holds Part0.jpg ... : their tiles are named by sample id
    (``kos01_Part1_r0_c0``), every tile counted is on disk, and a test split by photograph
    keeps each photograph's tiles in one split."""
    root = make_ksdd(tmp_path / "ksdd", folders=3, parts=3, size=(64, 32))
    counts = tile_dataset(root, tmp_path / "tiles", size=32, layout="ksdd", min_crack_pixels=1)
    written = sorted(p.name for p in (tmp_path / "tiles" / "images").iterdir())
    assert sum(counts["all"]) == len(written) == 3 * 3 * 2  # 2 tiles a photograph
    assert "kos01_Part1_r0_c0.png" in written and "kos03_Part1_r1_c0.png" in written
    assert "noncrack_kos02_Part0_r1_c0.png" in written
    tiled = tile_dataset(root, tmp_path / "split", size=32, layout="ksdd", test_fraction=0.34)
    names = {
        split: {p.stem for p in (tmp_path / "split" / split / "images").iterdir()}
        for split in ("train", "test")
    }
    assert {k: sum(v) for k, v in tiled.items()} == {k: len(v) for k, v in names.items()}
    photos = {k: {n.removeprefix("noncrack_").split("_r")[0] for n in v} for k, v in names.items()}
    assert not photos["train"] & photos["test"] and len(photos["train"] | photos["test"]) == 9
    # a layout whose file names are unique keeps them (the DAGM class below, crack_segmentation)
    dagm = make_dagm(tmp_path / "dagm", classes=(1,), images=2)
    tile_dataset(dagm, tmp_path / "dagm_tiles", size=32, layout="dagm", class_id=1)
    assert (tmp_path / "dagm_tiles" / "train" / "images" / "noncrack_0002_r0_c0.png").exists()


def test_tiles_of_a_kolektorsdd_folder_stay_together_in_the_splits_made_of_them(tmp_path):
    """A KolektorSDD folder is one physical part: the tiles of all its photographs are one
    group, which folds and the validation carve of a later run keep whole."""
    from crackseg.data.layouts import index_layout
    from crackseg.data.splits import source_group, split_by_source

    root = make_ksdd(tmp_path / "ksdd", folders=6, parts=3, size=(64, 32))
    tile_dataset(root, tmp_path / "tiles", size=32, layout="ksdd", min_crack_pixels=1)
    samples = index_layout("crack_segmentation", tmp_path / "tiles")["all"]
    assert {source_group(s) for s in samples} == {f"kos{f:02d}" for f in range(1, 7)}
    parts = split_by_source(samples, {"train": 0.5, "test": 0.5}, seed=0)
    folders = {k: {s.sample_id.removeprefix("noncrack_")[:5] for s in v} for k, v in parts.items()}
    assert folders["train"] and folders["test"] and not folders["train"] & folders["test"]


def test_stats_read_the_crack_segmentation_archives_flat_set_and_a_runs_threshold(tmp_path, capsys):
    """The archive's flat images/ beside its train/ and test/ (what the seed run reads,
    splits=flat) could not be counted; nor masks binarised at a run's own threshold."""
    root = tmp_path / "archive"
    for i in range(6):
        _photo(root, f"c{i}", [(3, 0, 30)], h=8, w=40)
    _photo(root / "train", "c0", [(3, 0, 30)], h=8, w=40)
    _photo(root / "test", "c1", [(3, 0, 30)], h=8, w=40)
    stats = ["stats", str(root), "--layout", "crack_segmentation", "--test-fraction", "0.5"]
    assert main([*stats, "--val-fraction", "0", "--splits", "flat"]) == 0
    assert "| **Sum** | 6 | 0 | 6 |" in " ".join(capsys.readouterr().out.split())  # not 2
    assert main(["stats", str(root), "--layout", "ksdd2", "--splits", "flat"]) == 2
    assert "--splits picks the folders of --layout crack_segmentation" in capsys.readouterr().err
    # a mask drawn at grey level 100 marks a crack at threshold 50, none at 127
    grey = tmp_path / "grey"
    for i in range(2):
        _photo(grey, f"c{i}", [(3, 0, 30)], h=8, w=40)
        mask = cv2.imread(str(grey / "masks" / f"c{i}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(grey / "masks" / f"c{i}.png"), np.where(mask > 0, 100, 0).astype("uint8"))
    tiles = ["tile", str(grey), "--size", "8", "--min-crack-pixels", "1"]
    assert main([*tiles[:2], str(tmp_path / "t50"), *tiles[2:], "--binarize-threshold", "50"]) == 0
    assert any((tmp_path / "t50" / "images").glob("c0_*"))
    assert main(["stats", str(grey), "--layout", "folder", "--binarize-threshold", "255"]) == 2
    assert "--binarize-threshold: must be an integer 0..254, not '255'" in capsys.readouterr().err


def test_stats_of_a_dagm_class(tmp_path, capsys):
    root = make_dagm(tmp_path / "dagm", classes=(1, 2), images=4)
    (root / "Class2" / "Train" / "Label" / "0001_label.PNG").unlink()  # Class2: one fewer
    (root / "Class2" / "Train" / "0001.PNG").unlink()
    counts = {}
    for class_id in ("1", "2"):
        assert main(["stats", str(root), "--layout", "dagm", "--dagm-class", class_id]) == 0
        counts[class_id] = capsys.readouterr().out.splitlines()[-1]
    assert counts["1"] != counts["2"] and "| 7 " in counts["2"]
    assert main(["stats", str(root), "--layout", "ksdd2", "--dagm-class", "2"]) == 2
    assert "--dagm-class picks a class of --layout dagm" in capsys.readouterr().err


def test_stats_of_a_paper_fold(tmp_path, capsys):
    """The KSDD fold a paper run tests on (whole folders), with nothing carved for validation."""
    root = make_ksdd(tmp_path / "ksdd", folders=6)  # 6 folders of 1 positive, 3 negatives
    fold = ["--layout", "ksdd", "--num-folds", "3", "--fold", "1", "--val-fraction", "0"]
    assert main(["stats", str(root), *fold]) == 0
    assert capsys.readouterr().out.splitlines()[2:5] == [
        "| Train       | 4           | 12          | 16          |",
        "| Test        | 2           | 6           | 8           |",
        "| Validation  | 0           | 0           | 0           |",
    ]
    assert main(["stats", str(root), *fold, "--train-positives", "3"]) == 0
    assert "| Train       | 3           | 12          | 15          |" in capsys.readouterr().out
    assert main(["stats", str(root), "--layout", "ksdd", "--fold", "1"]) == 2
    err = capsys.readouterr().err
    # worded with the options of the command, not the settings of a run
    assert err == "error: --num-folds and --fold go together: --num-folds K --fold 0..K-1\n"
    assert main(["stats", str(root), "--layout", "ksdd", "--num-folds", "3", "--fold", "5"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --fold must be 0..2 (--num-folds 3), not 5\n"
    for fractions, expected in (
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], "--val-fraction plus"),
    ):
        assert main(["stats", str(root), "--layout", "ksdd", *fractions]) == 2
        assert capsys.readouterr().err.startswith(f"error: {expected}")


def test_cli_missing_root_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    assert main(["stats", str(missing), "--layout", "ksdd2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(missing) in err


def test_cli_as_module_without_traceback(tmp_path):
    missing = tmp_path / "absent"
    proc = subprocess.run(
        [sys.executable, "-m", "crackseg.data.tools", "tile", str(missing), str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "bad", [["--size", "0"], ["--test-fraction", "1.5"], ["--seed", "-1"], ["--seed", "x"]]
)
def test_tile_bad_options(tmp_path, capsys, bad):
    _photo(tmp_path / "src", "A", [])
    assert main(["tile", str(tmp_path / "src"), str(tmp_path / "dst"), *bad]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["stats", str(tmp_path / "src"), "--layout", "folder", "--seed", "-1"]) == 2
    assert capsys.readouterr().err == (
        "error: crackseg-data stats: argument --seed: must be an integer >= 0, not '-1' "
        "(see crackseg-data stats --help)\n"
    )


@pytest.mark.parametrize(("size", "near"), [("150", "144 or 152"), ("5", "8")])
def test_tile_size_not_a_multiple_of_8_is_refused_and_nothing_written(tmp_path, capsys, size, near):
    """The network's input sides are multiples of 8: tiles of 150 were cut, and a run
    resized them to its input size without a word."""
    _photo(tmp_path / "src", "A", [(10, 0, 90)], h=160, w=160)
    assert main(["tile", str(tmp_path / "src"), str(tmp_path / "dst"), "--size", size]) == 2
    assert capsys.readouterr().err == (
        f"error: crackseg-data tile: argument --size: tile size {size} is not divisible by 8, "
        f"as the network's input sides must be: {near} (see crackseg-data tile --help)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_tiles_too_small_to_train_on_are_cut_with_a_warning(tmp_path, caplog):
    """96x96 tiles: the decision subnet's last map would be one pixel, which a run refuses;
    the tool cuts them (tiles may be for another use) and says so; 128x128 says nothing."""
    _photo(tmp_path / "src", "A", [(10, 0, 250)], h=256, w=256)
    with caplog.at_level(logging.WARNING):
        assert main(["tile", str(tmp_path / "src"), str(tmp_path / "small"), "--size", "96"]) == 0
        assert main(["tile", str(tmp_path / "src"), str(tmp_path / "big"), "--size", "128"]) == 0
    said = [r.getMessage() for r in caplog.records if "cannot train" in r.getMessage()]
    assert said == [
        "a run cannot train on 96x96 tiles: input 96x96 is too small: the decision subnet's "
        "last map must hold at least 2 pixels (e.g. 64x128)"
    ]
    assert list((tmp_path / "small").rglob("*.png")) and list((tmp_path / "big").rglob("*.png"))


def test_tile_stopped_by_ctrl_c_says_so_in_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch
):
    src = tmp_path / "src"
    _photo(src, "A", [(10, 0, 90)])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiles, "tile_sample", interrupted)
    assert main(["tile", str(src), str(tmp_path / "dst"), "--size", "32"]) == 143
    assert capsys.readouterr().err == "stopped: nothing half-written was left; run it again\n"
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.partial-*"))


def test_a_data_config_tiles_its_photographs_once(tmp_path):
    src, root = tmp_path / "src", tmp_path / "tiles"
    for i in range(10):
        _photo(src, f"IMG{i}", [(10, 0, 90)])
    tile = {"source": str(src), "size": 32, "stride": 32, "test_fraction": 0.3, "seed": 1}
    data = _tiling(root, tile)
    data.prepare_data()
    made = {p.relative_to(root) for p in root.rglob("*.png")}
    assert len(made) == 2 * 60 and not list(tmp_path.glob(".tiles.partial-*"))
    data.prepare_data()  # found, not tiled again
    assert {p.relative_to(root) for p in root.rglob("*.png")} == made
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty root (made by hand, or by another job) is tiled into
    _tiling(empty, tile).prepare_data()
    assert {p.relative_to(empty) for p in empty.rglob("*.png")} == made
    other = _tiling(root, {**tile, "seed": 2})
    with pytest.raises(DataError, match=r"other settings \(seed: 1 -> 2\); use another data.root"):
        other.prepare_data()
    # the tiles made before are used without their photographs (an evaluation where the
    # source's environment variable is not set), not refused for the path
    _tiling(root, {**tile, "source": str(tmp_path / "nowhere")}).prepare_data()
    moved = tmp_path / "moved"
    shutil.copytree(tile["source"], moved)  # other photographs, where they are there
    with pytest.raises(DataError, match=r"other settings \(source: .* -> .*moved\)"):
        _tiling(root, {**tile, "source": str(moved)}).prepare_data()
    with pytest.raises(DataError, match="does not exist"):
        missing = {**tile, "source": str(tmp_path / "nowhere")}
        _tiling(tmp_path / "new", missing).prepare_data()


def _tiling(root, tile):
    """A DataModule that tiles photographs into ``root`` (``data.tile``)."""
    return CrackDataModule(SourceSettings(str(root), tile=tile), InputSize(3, 64, 128))


@pytest.mark.parametrize("same", [True, False], ids=["same settings", "other settings"])
def test_two_jobs_tiling_one_root_at_once(tmp_path, monkeypatch, same):
    """Another job renames its finished tiles into the root while this one is tiling."""
    src, root = tmp_path / "src", tmp_path / "tiles"
    _photo(src, "A", [(10, 0, 90)])
    params = {"source": str(src.resolve()), "size": 32, "seed": 0 if same else 1}

    def tile_while_another_job_finishes(source, dst, **tiling):
        counts = tile_dataset(source, dst, **tiling)
        root.mkdir()
        (root / tiles.TILES_MARKER).write_text(json.dumps(params))
        return counts

    monkeypatch.setattr(tiles, "tile_dataset", tile_while_another_job_finishes)
    if same:
        assert tiles.prepare_tiles(root, src, size=32, seed=0) == root.absolute()
    else:
        with pytest.raises(DataError, match="other settings"):
            tiles.prepare_tiles(root, src, size=32, seed=0)
    assert not list(tmp_path.glob(".tiles.partial-*"))


def test_tile_into_an_unwritable_destination_is_one_line_and_leaves_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    _photo(src, "A", [(10, 0, 90)])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["tile", str(src), str(blocker / "dst"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {blocker}")
    # a folder where no folder can be made: named as typed, not as the temporary one beside it
    assert main(["tile", str(src), "/proc/crackseg-tiles", "--size", "32"]) == 2
    assert capsys.readouterr().err == "error: /proc/crackseg-tiles: No such file or directory\n"
    full = tmp_path / "full"
    result = subprocess.run(
        [sys.executable, "-m", "crackseg.data.tools", "tile", str(src), str(full), "--size", "32"],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert not full.exists() and not list(tmp_path.glob(".full.partial-*"))


def test_tiling_names_masks_that_are_photographs(tmp_path, caplog):
    """masks/ holding the photographs: every tile would be a crack, without a word."""
    src = tmp_path / "src"
    _photo(src, "P1", [(3, 0, 30)])
    _photo(src, "P2", [(3, 0, 30)])
    photo = cv2.GaussianBlur(cv2.imread(str(src / "images" / "P2.jpg")), (5, 5), 2)
    cv2.imwrite(str(src / "masks" / "P2.png"), photo)
    with caplog.at_level("WARNING"):
        tile_dataset(src, tmp_path / "dst", size=32, min_crack_pixels=20)
    warned = [r.getMessage() for r in caplog.records if "photograph, not of a" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("1 mask with the grey levels of a")
    assert warned[0].endswith(str(src / "masks" / "P2.png"))
