"""Reading images/masks and indexing every dataset layout from small fixtures."""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import datamodule_of
from helpers.paper_replicas import write_image

from crackseg.data.io import IMAGE_EXTENSIONS, image_size, read_image, read_mask
from crackseg.data.layouts import LAYOUTS, check_samples, index_layout
from crackseg.data.samples import Sample
from crackseg.errors import ConfigError, DataError

CFD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cfd"
H, W = 16, 24


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(positive: bool) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if positive:
        mask[4:8, 5:15] = 255
    return mask


def _pair(base: Path, name: str, positive: bool, img_ext=".jpg", mask_ext=".png", mask=True):
    write_image(base / "images" / f"{name}{img_ext}", _image())
    if mask:
        write_image(base / "masks" / f"{name}{mask_ext}", _mask(positive))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------- io


def test_grey_image_read_as_three_channels_and_colour_as_one(tmp_path):
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    write_image(tmp_path / "g.png", grey)
    rgb = read_image(tmp_path / "g.png", 3)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey)

    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[:, :, 2] = 255  # pure red in OpenCV's BGR order
    write_image(tmp_path / "red.png", bgr)
    colour = read_image(tmp_path / "red.png", 3)
    assert colour[0, 0].tolist() == [255, 0, 0]  # returned in RGB order
    one = read_image(tmp_path / "red.png", 1)
    assert one.shape == (H, W, 1)
    assert abs(int(one[0, 0, 0]) - 76) <= 1  # luminance of red: 0.299 * 255


def test_alpha_dropped_and_16_bit_image_scaled(tmp_path):
    bgra = np.zeros((H, W, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 10  # nearly transparent: alpha must not leak into the colours
    write_image(tmp_path / "a.png", bgra)
    assert read_image(tmp_path / "a.png", 3)[0, 0].tolist() == [0, 0, 200]
    image16 = np.full((H, W), 25800, np.uint16)  # 100.4 * 257
    write_image(tmp_path / "i16.png", image16)
    assert read_image(tmp_path / "i16.png", 1)[0, 0, 0] == 100


def test_16_bit_and_colour_masks(tmp_path):
    mask16 = np.zeros((H, W), np.uint16)
    mask16[0, 0] = 65535
    mask16[0, 1] = 33000  # 128.4 once scaled: just above the > 127 threshold
    mask16[0, 2] = 32700  # 127.2: just below
    write_image(tmp_path / "m16.png", mask16)
    mask = read_mask(tmp_path / "m16.png")
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    assert mask[0, :3].tolist() == [255, 128, 127]

    colour = np.zeros((H, W, 3), np.uint8)
    colour[1, 1] = (0, 0, 255)  # a red annotation
    write_image(tmp_path / "mc.png", colour)
    mask = read_mask(tmp_path / "mc.png")
    assert mask.shape == (H, W) and mask[1, 1] == 255 and mask.sum() == 255


@pytest.mark.parametrize(
    ("drawn", "colour", "reads"),
    [
        ("white everywhere, the crack opaque", (255, 255, 255), "crack"),
        ("16 bit, white everywhere", (65535, 65535, 65535), "crack"),
        ("red strokes on transparent black", None, "crack"),
        # black strokes on a transparent layer are an empty black mask with transparent
        # parts: both read empty (an image whose mask is empty is named in a warning)
        ("black everywhere, the crack opaque", (0, 0, 0), "nothing"),
    ],
)
def test_a_mask_drawn_on_a_transparent_layer_reads_its_transparent_pixels_as_background(
    tmp_path, drawn, colour, reads
):
    """A mask whose annotation is its alpha read as all crack (its colour, white
    everywhere)."""
    crack = np.zeros((H, W), bool)
    crack[4:8, 5:15] = True
    deep = colour is not None and max(colour) > 255
    opaque = 65535 if deep else 255
    layer = np.zeros((H, W, 4), np.uint16 if deep else np.uint8)
    if colour is None:
        layer[crack, 2] = 255  # red in BGR, only where drawn
    else:
        layer[..., :3] = colour
    layer[crack, 3] = opaque
    write_image(tmp_path / "m.png", layer)
    expected = crack if reads == "crack" else np.zeros_like(crack)
    assert (read_mask(tmp_path / "m.png") > 127).tolist() == expected.tolist(), drawn
    layer[..., 3] = opaque  # opaque throughout: its colour is the mask
    write_image(tmp_path / "opaque.png", layer)
    expected = np.broadcast_to(max(colour) > 0, (H, W)) if colour is not None else crack
    assert (read_mask(tmp_path / "opaque.png") > 127).tolist() == expected.tolist(), drawn


def test_a_faint_or_anti_aliased_stroke_on_a_transparent_layer_is_crack(tmp_path):
    """Weighted by its opacity, a white stroke at 40 % read as no crack, and an opaque
    crack lost its anti-aliased edge; an empty black mask with a transparent border read
    as all crack."""
    layer = np.zeros((H, W, 4), np.uint8)
    layer[4:8, 5:15] = (255, 255, 255, 102)  # 40 % opaque
    layer[8, 5:15] = (255, 255, 255, 30)  # its anti-aliased edge
    write_image(tmp_path / "faint.png", layer)
    crack = np.zeros((H, W), bool)
    crack[4:9, 5:15] = True
    assert (read_mask(tmp_path / "faint.png") > 127).tolist() == crack.tolist()
    bordered = np.zeros((H, W, 4), np.uint8)
    bordered[2:-2, 2:-2, 3] = 255  # opaque black inside a transparent border
    write_image(tmp_path / "bordered.png", bordered)
    assert not read_mask(tmp_path / "bordered.png").any()


def test_truncated_png_and_jpeg_are_caught(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    png = _truncate(write_image(tmp_path / "t.png", big))
    jpg = _truncate(write_image(tmp_path / "t.jpg", big))
    assert cv2.imread(str(jpg)) is not None  # OpenCV's imread accepts the truncated JPEG
    # cut just the end-of-image marker: the decoder alone still returns an image
    jpg_end = write_image(tmp_path / "e.jpg", big)
    jpg_end.write_bytes(jpg_end.read_bytes()[:-2])
    data = np.frombuffer(jpg_end.read_bytes(), np.uint8)
    assert cv2.imdecode(data, cv2.IMREAD_UNCHANGED) is not None
    png_end = write_image(tmp_path / "e.png", big)
    png_end.write_bytes(png_end.read_bytes()[:-12])  # the IEND chunk
    for path in (png, jpg, jpg_end, png_end):
        with pytest.raises(DataError, match=path.name):
            read_image(path, 3)


def test_a_damaged_png_is_refused_in_one_line_of_ours(tmp_path, capfd):
    """Bytes of its image data zeroed: libpng refused it, after a line of its own on stderr
    ("libpng error: IDAT: incorrect data check") before crackseg's."""
    big = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = write_image(tmp_path / "d.png", big)
    data = bytearray(path.read_bytes())
    data[100:200] = bytes(100)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged PNG file \(its IDAT chunk fails its checksum\)"):
        read_image(path, 3)
    assert capfd.readouterr().err == ""
    # an ancillary chunk after the image data, IEND last: read as before
    good = write_image(tmp_path / "g.png", big).read_bytes()
    text = b"tEXt" + b"Comment\x00crack"
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    (tmp_path / "g.png").write_bytes(good[:-12] + chunk + good[-12:])
    assert read_image(tmp_path / "g.png", 3).shape == (128, 128, 3)
    # a damaged ancillary chunk: libpng drops it and decodes the image, and so is it read
    damaged = chunk[:-1] + bytes([chunk[-1] ^ 1])
    (tmp_path / "t.png").write_bytes(good[:-12] + damaged + good[-12:])
    assert read_image(tmp_path / "t.png", 3).shape == (128, 128, 3)


def test_truncated_jpeg_with_thumbnail_end_marker_is_caught(tmp_path):
    # An EXIF thumbnail carries its own FF D9; a search for that marker would be fooled.
    thumb = b"Exif\x00\x00" + b"\xff\xd8" + bytes(40) + b"\xff\xd9"
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    path = write_image(tmp_path / "x.jpg", _image())
    data = path.read_bytes()
    full = data[:2] + app1 + data[2:]
    path.write_bytes(full)
    assert read_image(path, 3).shape == (H, W, 3)
    path.write_bytes(full[:-2])
    with pytest.raises(DataError, match="x.jpg"):
        read_image(path, 3)


def test_jpeg_with_trailing_bytes_is_accepted(tmp_path):
    path = write_image(tmp_path / "x.jpg", _image())
    path.write_bytes(path.read_bytes() + b"camera trailer \xff\x00\x12")
    assert read_image(path, 3).shape == (H, W, 3)


def test_unreadable_file_names_it(tmp_path, capfd):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        read_mask(bad)
    broken = tmp_path / "broken.bmp"  # a header OpenCV refuses, logging its internals
    broken.write_bytes(b"BM" + bytes(60))
    with pytest.raises(DataError, match="broken.bmp"):
        read_mask(broken)
    assert capfd.readouterr().err == ""  # the error alone names the file, in one line
    assert cv2.utils.logging.getLogLevel() != cv2.utils.logging.LOG_LEVEL_SILENT  # given back
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png", 3)


def test_an_image_over_opencvs_pixel_limit_names_the_variable_that_raises_it(tmp_path):
    """OpenCV reads its limit from the environment once: a process of its own."""
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((40, 30), np.uint8))
    read = "from crackseg.data.io import read_image; read_image('big.png', 3)"
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "1000"}
    result = subprocess.run(
        [sys.executable, "-c", read], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stderr.strip().splitlines()[-1] == (
        "crackseg.errors.DataError: cannot decode image big.png: more pixels than OpenCV "
        "decodes (OPENCV_IO_MAX_IMAGE_PIXELS=1000; set it higher to read it)"
    )
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = "1200"
    read += "; print('read')"
    result = subprocess.run(
        [sys.executable, "-c", read], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout == "read\n", result.stderr


def test_image_size_from_header(tmp_path):
    array = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp"):
        assert image_size(write_image(tmp_path / f"s{ext}", array)) == (37, 53)


# ---------------------------------------------------------------- layouts


def test_crack_segmentation_flat(tmp_path):
    _pair(tmp_path, "b_crack", True)
    _pair(tmp_path, "a_crack", True, img_ext=".JPG")
    _pair(tmp_path, "noncrack_1", False)
    _pair(tmp_path, "noncrack_2", False, mask=False)  # negatives may lack a mask
    (tmp_path / "images" / "README.txt").write_text("ignored")
    indexed = index_layout("crack_segmentation", tmp_path)
    assert list(indexed) == ["all"]
    samples = indexed["all"]
    assert [s.sample_id for s in samples] == ["a_crack", "b_crack", "noncrack_1", "noncrack_2"]
    assert [s.is_positive for s in samples] == [True, True, False, False]
    assert samples[0].image_path.name == "a_crack.JPG"
    assert samples[0].mask_path.name == "a_crack.png"
    assert samples[3].mask_path is None


def test_crack_segmentation_train_test(tmp_path):
    for split in ("train", "test"):
        _pair(tmp_path / split, "same_name", True)
        _pair(tmp_path / split, f"noncrack_{split}", False)
    indexed = index_layout("crack_segmentation", tmp_path)
    assert sorted(indexed) == ["test", "train"]
    assert [s.sample_id for s in indexed["train"]] == ["train_noncrack_train", "train_same_name"]
    assert [s.sample_id for s in indexed["test"]] == ["test_noncrack_test", "test_same_name"]
    assert indexed["test"][1].image_path == tmp_path / "test" / "images" / "same_name.jpg"


def test_the_crack_segmentation_archive_gives_its_flat_set_or_its_split(tmp_path, caplog):
    """The archive holds the whole set flat and a train/test split of it beside: the split
    folders were read without a word, so the seed run's 70/15/15 of the whole was another
    split; its experiment reads the flat set (splits=flat)."""
    _pair(tmp_path, "a_crack", True)
    _pair(tmp_path, "noncrack_1", False)
    for split in ("train", "test"):
        _pair(tmp_path / split, "a_crack" if split == "train" else "noncrack_1", split == "train")
    with caplog.at_level(logging.WARNING):
        assert sorted(index_layout("crack_segmentation", tmp_path)) == ["test", "train"]
    assert "the flat images/ beside them is not read (++data.layout_options.splits=flat" in (
        caplog.text
    )
    flat = index_layout("crack_segmentation", tmp_path, splits="flat")
    assert [s.sample_id for s in flat["all"]] == ["a_crack", "noncrack_1"]
    assert sorted(index_layout("crack_segmentation", tmp_path, splits="folders")) == [
        "test",
        "train",
    ]
    with pytest.raises(DataError, match=r"looked in .*/train/images, .*/test/images$"):
        index_layout("crack_segmentation", tmp_path / "train", splits="folders")
    with pytest.raises(ConfigError, match=r"option splits must be one of auto, flat, folders"):
        index_layout("crack_segmentation", tmp_path, splits="both")
    from hydra import compose, initialize_config_dir

    from crackseg import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        seed = compose("train", ["experiment=seed_crack_segmentation", "data.root=/x"])
    assert seed.data.layout_options.splits == "flat"


def test_ksdd2_label_from_mask(tmp_path):
    for split in ("train", "test"):
        write_image(tmp_path / split / "10.png", _image())
        write_image(tmp_path / split / "10_GT.png", _mask(True))
        write_image(tmp_path / split / "11.png", _image())
        write_image(tmp_path / split / "11_GT.png", _mask(False))
    weak_jpeg = _mask(False)
    weak_jpeg[0, 0] = 100  # JPEG-like noise below the threshold is no defect
    write_image(tmp_path / "train" / "11_GT.png", weak_jpeg)
    indexed = index_layout("ksdd2", tmp_path)
    assert sorted(indexed) == ["test", "train"]
    train = indexed["train"]
    assert [(s.sample_id, s.is_positive) for s in train] == [
        ("train_10", True),
        ("train_11", False),
    ]
    assert train[0].mask_path.name == "10_GT.png"


def test_labels_from_masks_use_the_binarize_threshold(tmp_path):
    """The image label agrees with the mask binarised as in training (data.binarize_threshold)."""
    faint = _mask(False)
    faint[4:8, 5:15] = 100
    write_image(tmp_path / "train" / "1.png", _image())
    write_image(tmp_path / "train" / "1_GT.png", faint)
    write_image(tmp_path / "test" / "2.png", _image())  # a run needs images to test on
    write_image(tmp_path / "test" / "2_GT.png", _mask(False))
    assert not index_layout("ksdd2", tmp_path)["train"][0].is_positive  # 100 <= 127
    assert index_layout("ksdd2", tmp_path, binarize_threshold=50)["train"][0].is_positive
    (positive,) = check_samples(index_layout("ksdd2", tmp_path, binarize_threshold=50)["train"], 50)
    assert positive.mask_path is not None  # check_samples agrees: the mask is not emptied
    # and training indexes with the run's threshold (the data module passes it on): at 127
    # the faint mask is empty, and a training split without a positive is refused
    datamodule = datamodule_of(tmp_path, layout="ksdd2", binarize_threshold=50, val_fraction=0)
    assert sum(s.is_positive for s in datamodule.data_split.splits["train"]) == 1
    with pytest.raises(DataError, match="holds no defect image"):
        datamodule_of(tmp_path, layout="ksdd2", binarize_threshold=127, val_fraction=0)


def test_segdec_label_from_folder(tmp_path):
    for split in ("train", "test"):
        write_image(tmp_path / f"{split}_positive" / "1.jpg", _image())
        write_image(tmp_path / f"{split}_positive" / "1_GT.jpg", _mask(True))
        write_image(tmp_path / f"{split}_negative" / "1.jpg", _image())
        write_image(tmp_path / f"{split}_negative" / "1_GT.jpg", _mask(False))
    indexed = index_layout("segdec", tmp_path)
    assert sorted(indexed) == ["test", "train"]
    assert [(s.sample_id, s.is_positive) for s in indexed["train"]] == [
        ("train_negative_1", False),
        ("train_positive_1", True),
    ]


def test_folder_layout_options(tmp_path):
    write_image(tmp_path / "img" / "x.jpg", _image())
    write_image(tmp_path / "gt" / "x_label.png", _mask(True))
    write_image(tmp_path / "img" / "free_y.jpg", _image())
    indexed = index_layout(
        "folder",
        tmp_path,
        image_dir="img",
        mask_dir="gt",
        mask_suffix="_label",
        mask_ext="png",
        negative_prefix="free",
    )
    assert [(s.sample_id, s.is_positive, s.mask_path) for s in indexed["all"]] == [
        ("free_y", False, None),
        ("x", True, tmp_path / "gt" / "x_label.png"),
    ]
    # label from the mask: the empty mask makes a negative whatever the name
    write_image(tmp_path / "gt" / "free_y_label.png", _mask(True))
    write_image(tmp_path / "img" / "z.jpg", _image())
    write_image(tmp_path / "gt" / "z_label.png", _mask(False))
    indexed = index_layout(
        "folder",
        tmp_path,
        image_dir="img",
        mask_dir="gt",
        mask_suffix="_label",
        mask_ext=".png",
        label_from_mask=True,
    )
    assert [(s.sample_id, s.is_positive) for s in indexed["all"]] == [
        ("free_y", True),
        ("x", True),
        ("z", False),
    ]


# ---------------------------------------------------------------- bad input


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        index_layout("crack_segmentation", tmp_path / "nowhere")


def test_unknown_layout_lists_known():
    with pytest.raises(DataError) as info:
        index_layout("kolektor", "/tmp")
    for name in LAYOUTS:
        assert name in str(info.value)


def test_unknown_option(tmp_path):
    _pair(tmp_path, "a", True)
    with pytest.raises(ConfigError, match="mask_sufix"):
        index_layout("folder", tmp_path, mask_sufix="_GT")


@pytest.mark.parametrize(
    ("layout", "option", "expected"),
    [
        ("folder", {"negative_prefix": None}, "option negative_prefix must be a string, not null"),
        ("folder", {"image_dir": ["a"]}, "option image_dir must be a string, not ['a']"),
        ("folder", {"mask_ext": 5}, "option mask_ext must be a string or null, not 5"),
        ("folder", {"label_from_mask": "maybe"}, "label_from_mask must be true or false, not"),
        ("dagm", {"class_id": True}, "option class_id must be an integer, not true"),
        ("crack_segmentation", {"negative_prefix": 5}, "negative_prefix must be a string, not 5"),
    ],
)
def test_a_layout_option_of_another_type_is_refused_by_name(tmp_path, layout, option, expected):
    """They ended in a TypeError or AttributeError inside the indexing, or (a string for a
    switch) were taken as true."""
    _pair(tmp_path, "a", True)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        index_layout(layout, tmp_path, **option)


def test_no_images_says_where_it_looked(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=str(tmp_path / "images")):
        index_layout("crack_segmentation", tmp_path)
    with pytest.raises(DataError, match="images"):
        index_layout("crack_segmentation", tmp_path / "images")  # no images/ folder at all
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "train")):
        index_layout("ksdd2", tmp_path)


def test_image_without_mask_and_mask_without_image(tmp_path):
    _pair(tmp_path, "ok", True)
    _pair(tmp_path, "lonely", True, mask=False)
    with pytest.raises(DataError, match="lonely.jpg"):
        index_layout("crack_segmentation", tmp_path)
    with pytest.raises(DataError, match="lonely.jpg"):
        index_layout("folder", tmp_path, mask_ext=".png")
    (tmp_path / "images" / "lonely.jpg").unlink()
    write_image(tmp_path / "masks" / "orphan.png", _mask(True))
    with pytest.raises(DataError, match="orphan.png"):
        index_layout("crack_segmentation", tmp_path)
    with pytest.raises(DataError, match="orphan.png"):
        index_layout("folder", tmp_path, mask_ext=".png")


def test_a_mask_whose_image_is_of_a_kind_not_read_names_that_image(tmp_path):
    """A GIF beside its mask was reported as a mask without an image: the image is there,
    left out for its kind. A mask that has no image at all is still named as such."""
    _pair(tmp_path, "ok", True)
    _pair(tmp_path, "GIFIMG", True, img_ext=".gif")
    kinds = "/".join(IMAGE_EXTENSIONS)
    left_out = (
        f"images left out, as crackseg reads only {kinds} files, though their masks are there: "
        f"{tmp_path / 'images' / 'GIFIMG.gif'}; convert them to one of those"
    )
    for layout, options in (("crack_segmentation", {}), ("folder", {"mask_ext": ".png"})):
        with pytest.raises(DataError) as raised:
            index_layout(layout, tmp_path, **options)
        assert str(raised.value) == left_out, layout
    write_image(tmp_path / "masks" / "orphan.png", _mask(True))
    with pytest.raises(DataError) as raised:
        index_layout("crack_segmentation", tmp_path)
    assert (
        str(raised.value)
        == f"{left_out}; masks without an image: {tmp_path / 'masks' / 'orphan.png'}"
    )
    write_image(tmp_path / "train" / "5.png", _image())  # an image and its mask in one folder
    write_image(tmp_path / "train" / "5_GT.png", _mask(True))
    write_image(tmp_path / "train" / "6.gif", _image())
    write_image(tmp_path / "train" / "6_GT.png", _mask(True))
    with pytest.raises(DataError, match=r"images left out, .*train/6\.gif; convert them"):
        index_layout("ksdd2", tmp_path)


def test_an_image_whose_mask_is_of_a_kind_not_read_names_that_mask(tmp_path):
    """The reverse: a GIF mask was reported as no mask at all. An image that has none is
    still named as such; in one folder (ksdd2) the mask is named with its suffix."""
    _pair(tmp_path, "ok", True)
    _pair(tmp_path, "GIFMASK", True, mask=False)
    (tmp_path / "masks" / "GIFMASK.gif").write_bytes(b"GIF89a")  # never read: its kind
    _pair(tmp_path, "alone", True, mask=False)
    kinds = "/".join(IMAGE_EXTENSIONS)
    assert str(_refusal("crack_segmentation", tmp_path)) == (
        f"masks left out, as crackseg reads only {kinds} files, though their images are "
        f"there: {tmp_path / 'masks' / 'GIFMASK.gif'}; convert them to one of those; "
        f"images without a mask: {tmp_path / 'images' / 'alone.jpg'}"
    )
    write_image(tmp_path / "train" / "5.png", _image())
    (tmp_path / "train" / "5_GT.gif").write_bytes(b"GIF89a")
    assert str(_refusal("ksdd2", tmp_path)).startswith(
        f"masks left out, as crackseg reads only {kinds} files, though their images are "
        f"there: {tmp_path / 'train' / '5_GT.gif'}; "
    )


def _refusal(layout: str, root: Path) -> DataError:
    with pytest.raises(DataError) as raised:
        index_layout(layout, root)
    return raised.value


def test_ksdd2_and_segdec_missing_masks(tmp_path):
    write_image(tmp_path / "train" / "5.png", _image())
    with pytest.raises(DataError, match="5.png"):
        index_layout("ksdd2", tmp_path)
    write_image(tmp_path / "train_positive" / "7.jpg", _image())
    with pytest.raises(DataError, match="7.jpg"):
        index_layout("segdec", tmp_path)


# ---------------------------------------------------------------- check_samples


def _sample(tmp_path: Path, name: str, positive: bool, mask: np.ndarray | None) -> Sample:
    image = write_image(tmp_path / f"{name}.png", _image())
    mask_path = None if mask is None else write_image(tmp_path / f"{name}_m.png", mask)
    return Sample(name, image, mask_path, positive)


def test_empty_positive_mask_becomes_weak_with_warning(tmp_path, caplog):
    samples = [
        _sample(tmp_path, "good", True, _mask(True)),
        _sample(tmp_path, "empty", True, _mask(False)),
        _sample(tmp_path, "neg", False, None),
    ]
    with caplog.at_level(logging.WARNING):
        checked = check_samples(samples)
    assert [s.sample_id for s in checked] == ["good", "empty", "neg"]
    assert checked[0].mask_path is not None
    assert checked[1].mask_path is None and checked[1].is_positive  # weak, not dropped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "empty" in warnings[0] and warnings[0].startswith("1 positive")


def test_check_samples_lists_all_unreadable_files(tmp_path):
    big = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    a = _truncate(write_image(tmp_path / "a.jpg", big))
    b = _sample(tmp_path, "b", True, _mask(True))
    _truncate(b.mask_path)
    samples = [Sample("a", a, None, False), b, _sample(tmp_path, "c", False, None)]
    with pytest.raises(DataError) as info:
        check_samples(samples)
    message = str(info.value)
    assert "a.jpg" in message and "b_m.png" in message and "c.png" not in message


def test_a_file_that_cannot_be_read_is_named_with_why(tmp_path):
    """A float TIFF mask of grey levels was named "unreadable or truncated", whose reason
    (its pixel type) was dropped; an empty float mask (0/1, no 1) was refused with it
    where one marking a crack (0/1) was read."""
    empty = np.zeros((H, W), np.float32)
    grey = np.full((H, W), 100.0, np.float32)
    samples = []
    for name, mask in (("empty", empty), ("grey", grey)):
        image = write_image(tmp_path / f"{name}.png", _image())
        samples.append(Sample(name, image, write_image(tmp_path / f"{name}_m.tif", mask), False))
    with pytest.raises(DataError) as info:
        check_samples(samples)
    assert str(info.value) == (
        f"files that cannot be read: {tmp_path / 'grey_m.tif'} "
        "(unsupported pixel type float32 (8 or 16 bit expected))"
    )
    assert not read_mask(tmp_path / "empty_m.tif").any()


def test_broken_symlinks_are_reported_not_skipped(tmp_path):
    _pair(tmp_path, "a_crack", True)
    (tmp_path / "images" / "b_crack.jpg").symlink_to(tmp_path / "gone.jpg")  # dangling
    (tmp_path / "masks" / "b_crack.png").symlink_to(tmp_path / "gone.png")
    loop = tmp_path / "images" / "noncrack_1.jpg"  # a negative needs no mask
    loop.symlink_to(loop)
    samples = index_layout("crack_segmentation", tmp_path)["all"]
    assert [s.sample_id for s in samples] == ["a_crack", "b_crack", "noncrack_1"]
    with pytest.raises(DataError, match="files that cannot be read") as info:
        check_samples(samples)
    message = str(info.value)
    assert all(name in message for name in ("b_crack.jpg", "b_crack.png", "noncrack_1.jpg"))


def test_check_samples_size_mismatch(tmp_path):
    sample = _sample(tmp_path, "odd", True, np.full((H + 1, W), 255, np.uint8))
    with pytest.raises(DataError, match="odd_m.png"):
        check_samples([sample])


# ---------------------------------------------------------------- real photographs


def test_real_cfd_photographs_through_folder_layout():
    if not (CFD / "images").is_dir():
        pytest.skip(f"CrackForest sample not found at {CFD} (shared data absent)")
    samples = index_layout("folder", CFD, image_dir="images", mask_dir="masks", mask_ext=".png")[
        "all"
    ]
    assert len(samples) == 80 and all(s.is_positive for s in samples)
    checked = check_samples(samples[:3])
    for sample in checked:
        image = read_image(sample.image_path, 3)
        mask = read_mask(sample.mask_path)
        assert image.shape == (320, 480, 3) and mask.shape == (320, 480)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert 0.002 < (mask > 127).mean() < 0.07  # the README: 0.4 % to 6 % crack pixels
        assert image_size(sample.image_path) == (320, 480)


def test_masks_of_another_extension_than_their_images_are_named_with_the_setting(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", _image())
    write_image(tmp_path / "masks" / "a.png", _mask(True))
    with pytest.raises(
        DataError, match=r"masks are \.png files: set data.layout_options.mask_ext=png$"
    ):
        index_layout("folder", tmp_path)
    assert [s.sample_id for s in index_layout("folder", tmp_path, mask_ext="png")["all"]] == ["a"]


def test_a_data_module_names_every_bad_mask_of_every_split_at_once(tmp_path):
    """Not those of the first split with one: "in all" counts the whole dataset's."""
    for i in range(12):
        name = f"crack_{i}.png" if i % 2 else f"noncrack_{i}.png"
        write_image(tmp_path / "images" / name, np.full((64, 128, 3), 90, np.uint8))
        write_image(tmp_path / "masks" / name, np.zeros((32, 128), np.uint8))
    with pytest.raises(DataError, match=r"masks whose size differs .*\(and 7 more, 12 in all\)"):
        datamodule_of(tmp_path, layout="folder")


def test_a_mask_of_another_size_is_refused_and_one_turned_a_quarter_is_named_so(tmp_path):
    image = np.full((16, 24, 3), 90, np.uint8)
    write_image(tmp_path / "images" / "a.png", image)
    write_image(tmp_path / "masks" / "a.png", np.zeros((10, 24), np.uint8))
    samples = index_layout("folder", tmp_path)["all"]
    with pytest.raises(
        DataError, match=r"masks whose size differs .*a.png \(10x24, image 16x24\)$"
    ):
        check_samples(samples)
    write_image(tmp_path / "masks" / "a.png", np.zeros((24, 16), np.uint8))
    with pytest.raises(
        DataError, match=r"\(24x16, image 16x24\) \(a mask turned a quarter: .*EXIF"
    ):
        check_samples(samples)


def test_a_kolektorsdd_archive_s_extra_folder_is_left_out_and_one_level_too_deep_is_named(
    tmp_path, caplog
):
    from helpers.paper_replicas import make_ksdd

    root = make_ksdd(tmp_path / "ksdd", folders=2, parts=2, size=(64, 32))
    (root / "__MACOSX" / "kos01").mkdir(parents=True)  # what a zip made on macOS brings
    (root / "__MACOSX" / "kos01" / "._Part0.jpg").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level(logging.WARNING):
        samples = index_layout("ksdd", root)["all"]
    assert {s.group for s in samples} == {"kos01", "kos02"}
    assert "left out" in caplog.text and "__MACOSX" in caplog.text
    assert "subfolders" not in caplog.text  # (what the extra folder holds is not named)
    # a part folder left empty (an archive half unpacked) is no extra folder: refused
    (root / "kos03").mkdir()
    with pytest.raises(DataError, match=r"no images .* looked in: .*kos03$"):
        index_layout("ksdd", root)
    (root / "kos03").rmdir()
    # the archive unpacked into a folder of its own, data.root naming the one above it
    deeper = tmp_path / "download"
    deeper.mkdir()
    root.rename(deeper / "KolektorSDD")
    with pytest.raises(DataError, match=r"found in .*download; point data.root at .*KolektorSDD$"):
        index_layout("ksdd", deeper)


def test_a_subfolder_of_an_image_folder_is_named_as_left_out(tmp_path, caplog):
    """Images in ``images/batch2/`` were left out without a word; a layout's own subfolder
    (DAGM's ``Label/`` inside ``Train/``, a mask folder inside the image folder) is read."""
    from helpers.paper_replicas import make_dagm

    root = tmp_path / "cracks"
    for name in ("a", "b"):
        _pair(root, name, positive=True)
    _pair(root / "images", "c", positive=True)  # images/images/c.jpg, images/masks/c.png
    with caplog.at_level(logging.WARNING):
        samples = index_layout("crack_segmentation", root)["all"]
    assert len(samples) == 2
    assert f"{root / 'images'}: 2 subfolders not read, their images left out: " in caplog.text
    caplog.clear()
    dagm = make_dagm(tmp_path / "dagm", classes=(1,))
    nested = tmp_path / "nested"
    for name in ("a", "b"):
        write_image(nested / "photos" / f"{name}.jpg", _image())
        write_image(nested / "photos" / "gt" / "masks" / f"{name}.png", _mask(True))
    with caplog.at_level(logging.WARNING):
        index_layout("dagm", dagm, class_id=1)
        folder = {"image_dir": "photos", "mask_dir": "photos/gt/masks", "mask_ext": "png"}
        assert len(index_layout("folder", nested, **folder)["all"]) == 2
    assert "subfolders" not in caplog.text
