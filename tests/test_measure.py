"""Crack length and width on drawings of known geometry."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import predict_settings

from crackseg.deploy import measure
from crackseg.deploy.backends import ModelInfo
from crackseg.deploy.measure import measure_cracks, skeleton_length, summarise
from crackseg.deploy.predict_folder import ResultWriter
from crackseg.deploy.predictor import ImagePrediction


def bar(shape: tuple[int, int], centre, length: float, width: float, degrees: float):
    """A filled rectangle: every pixel whose centre lies within it (exact geometry)."""
    angle = math.radians(degrees)
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]])
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    offsets = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
    return (np.abs(offsets @ along) <= length / 2) & (np.abs(offsets @ across) <= width / 2)


def test_a_straight_crack_200_long_and_5_wide():
    mask = np.zeros((60, 300), bool)
    mask[20:25, 50:250] = True
    (crack,) = measure_cracks(mask)
    assert crack.length == pytest.approx(200, abs=3)
    assert crack.max_width == pytest.approx(5, abs=1)
    assert crack.mean_width == pytest.approx(5, abs=1)
    box = (crack.x, crack.y, crack.box_width, crack.box_height)
    assert box == (50, 20, 200, 5) and crack.pixels == 1000


@pytest.mark.parametrize("vertical", [False, True], ids=["horizontal", "vertical"])
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6])
def test_an_axis_aligned_crack_measures_its_width_in_pixels_odd_or_even(width, vertical):
    """Either way: thinning stops an even-width crack a pixel shorter at each end vertically
    than horizontally, which once measured it 2 px short."""
    mask = np.zeros((30, 120), bool)
    mask[10 : 10 + width, 10:110] = True
    (crack,) = measure_cracks(np.ascontiguousarray(mask.T) if vertical else mask)
    assert crack.max_width == width
    # The skeleton may reach the crack's end columns, where the end is nearer than its sides.
    assert crack.mean_width == pytest.approx(width, abs=0.05)
    assert crack.length == 100


def test_a_diagonal_crack_200_long_and_5_wide():
    mask = bar((300, 300), (150, 150), 200, 5, 45)
    (crack,) = measure_cracks(mask)
    assert crack.length == pytest.approx(200, abs=3)
    # Its 7 diagonal rows of pixels, 1/sqrt(2) apart, cover 4.95 px across it.
    assert crack.mean_width == pytest.approx(5, abs=0.1)
    assert crack.max_width == pytest.approx(5, abs=0.1)


def staircase(rows: int, thickness: int) -> np.ndarray:
    """A 45-degree crack drawn row by row: ``thickness`` pixels per row, one column further
    right on each row."""
    mask = np.zeros((rows + 20, rows + thickness + 20), bool)
    for i in range(rows):
        mask[10 + i, 10 + i : 10 + i + thickness] = True
    return mask


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_two_pixel_thick_diagonal_staircase_is_measured_to_its_ends(mirrored):
    """Zhang's thinning broke this crack into fragments and measured about 37 px."""
    mask = staircase(50, 2)
    (crack,) = measure_cracks(np.fliplr(mask) if mirrored else mask)
    # The middles of the first and last rows are 49 diagonal steps apart (69.3 px), and the
    # crack reaches a little beyond them: about 70 px.
    assert crack.length == pytest.approx(70, abs=2)
    # Two pixels per row, the rows 1/sqrt(2) apart across the crack: sqrt(2) wide.
    assert crack.mean_width == pytest.approx(math.sqrt(2), abs=0.05)


def test_a_one_pixel_diagonal_line_is_sqrt2_per_step():
    mask = np.eye(101, dtype=bool)
    (crack,) = measure_cracks(mask)
    # 100 diagonal steps between centres, plus half a pixel beyond each end centre.
    assert crack.length == pytest.approx(100 * math.sqrt(2) + 1, abs=1e-6)
    assert crack.max_width == 1


def test_a_corner_of_the_skeleton_is_not_counted_twice():
    corner = np.array([[1, 1], [0, 1]], bool)  # right then down: 2, not 2 + sqrt(2)
    assert skeleton_length(corner) == pytest.approx(2.0)
    knight = np.array([[1, 1, 0], [0, 0, 1]], bool)  # right, then diagonally down
    assert skeleton_length(knight) == pytest.approx(1 + math.sqrt(2))


def test_separate_cracks_are_counted_apart_and_specks_dropped():
    mask = np.zeros((100, 200), bool)
    mask[10:13, 10:110] = True
    mask[60:63, 20:180] = True
    mask[90, 190] = mask[91, 191] = True  # touching corners: one speck of 2 pixels
    cracks = measure_cracks(mask, min_pixels=20)
    assert [c.y for c in cracks] == [10, 60]
    assert [c.length for c in cracks] == [pytest.approx(100, abs=2), pytest.approx(160, abs=2)]
    assert len(measure_cracks(mask, min_pixels=1)) == 3  # 8-connected: the speck is one
    summary = summarise(cracks)
    assert summary.count == 2 and summary.total_length == pytest.approx(260, abs=2)
    assert summary.max_width == pytest.approx(3, abs=1e-6)


def test_widths_taken_block_by_block_equal_those_of_the_whole_crack(monkeypatch):
    """Cracks up to 13 px wide, crossing blocks of 8 px: each block widened by the reach of
    the distance transform gives the widths (and so lengths and widths) of the whole."""
    rng = np.random.default_rng(0)
    mask = np.zeros((120, 160), bool)
    for _ in range(12):
        y, x, half = rng.integers(10, 110), rng.integers(10, 150), rng.integers(0, 7)
        mask[max(y - half, 0) : y + half + 1, 5:155] = True  # horizontal bands
        mask[10:110, max(x - half, 0) : x + half + 1] = True  # and vertical ones
    whole = measure_cracks(mask)
    monkeypatch.setattr(measure, "WIDTH_BLOCK", 8)
    blocks = measure_cracks(mask)
    assert len(blocks) == len(whole) >= 1
    for crack, reference in zip(blocks, whole, strict=True):
        # the mean summed in another order: equal to the last bits
        assert crack.mean_width == pytest.approx(reference.mean_width, rel=1e-12)
        assert crack == dataclasses.replace(reference, mean_width=crack.mean_width)


def test_millimetres_keep_the_pixel_columns_precision_at_small_pixel_sizes(tmp_path: Path):
    """A 2-pixel crack at 0.0004 mm a pixel is 0.0008 mm wide, not 0.001 (3 decimals)."""
    probabilities = np.zeros((50, 300), np.float32)
    probabilities[20:22, 50:250] = 0.9
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    settings = predict_settings(pixel_size_mm=0.0004, overlays=False)
    writer = ResultWriter(tmp_path, settings, info)
    writer.add(
        Path("slide.png"), np.zeros((50, 300, 3), np.uint8), ImagePrediction(0.8, probabilities)
    )
    writer.write_tables()
    (crack,) = csv.DictReader((tmp_path / "cracks.csv").open())
    assert crack["mean_width_px"] == "2.00" and crack["mean_width_mm"] == "0.000800"
    assert float(crack["length_mm"]) == pytest.approx(0.0004 * float(crack["length_px"]), abs=1e-6)


def test_millimetres_are_pixels_times_the_pixel_size(tmp_path: Path):
    probabilities = np.zeros((60, 300), np.float32)
    probabilities[20:25, 50:250] = 0.9
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = ResultWriter(tmp_path, predict_settings(pixel_size_mm=0.25, overlays=False), info)
    image = np.zeros((60, 300, 3), np.uint8)
    writer.add(Path("wall.jpg"), image, ImagePrediction(0.8, probabilities))
    writer.write_tables()
    (row,) = csv.DictReader((tmp_path / "predictions.csv").open())
    assert (row["file"], row["width"], row["height"], row["decision"]) == (
        "wall.jpg",
        "300",
        "60",
        "1",
    )
    assert float(row["crack_fraction"]) == pytest.approx(1000 / 18000, abs=1e-6)
    for name in ("total_length", "max_width", "mean_width"):
        # The pixel columns are rounded to 0.01, the millimetre ones to 0.001.
        assert float(row[f"{name}_mm"]) == pytest.approx(0.25 * float(row[f"{name}_px"]), abs=2e-3)
    assert float(row["total_length_mm"]) == pytest.approx(50, abs=0.75)
    (crack,) = csv.DictReader((tmp_path / "cracks.csv").open())
    assert float(crack["length_mm"]) == pytest.approx(0.25 * float(crack["length_px"]), abs=2e-3)
    assert (crack["x"], crack["y"], crack["box_width"], crack["box_height"]) == (
        "50",
        "20",
        "200",
        "5",
    )


def ragged_crack(width: int, run: int, seed: int = 0) -> np.ndarray:
    """A straight crack 200 px long whose edges move by up to a pixel every ``run`` px."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((width + 80, 300), bool)
    for x in range(50, 250, run):
        top, bottom = rng.integers(-1, 2, size=2)
        mask[40 + top : 40 + width + bottom, x : x + run] = True
    return mask


@pytest.mark.parametrize("width", [3, 7, 11, 21, 41])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bumps_of_a_ragged_edge_add_no_length(width, seed):
    """Each bump grew a side branch of the skeleton, counted as crack: 200 px measured up to
    252 px (edges moving every 3 px) and 715 px (every pixel, 41 px wide); then the middle
    line wiggling with the edges, pixel by pixel, up to 241 px. What is left: up to 3% of
    the wiggle, and a wide crack's ragged ends, which move each end by up to a quarter of
    its width."""
    for run in (3, 1):  # its edges move every 3 px, every pixel
        (crack,) = measure_cracks(ragged_crack(width, run, seed))
        assert crack.length == pytest.approx(200, abs=max(7, width / 2)), run


@pytest.mark.parametrize("degrees", [10, 22.5, 30, 60, 67.5, 80])
def test_a_slanted_crack_is_measured_along_its_line_not_its_staircase(degrees):
    """Pixel to pixel, a crack at 22.5 degrees measured 8% long (1 + sqrt(2) for every
    sqrt(5) of its length)."""
    for width in (1, 3, 5):
        (crack,) = measure_cracks(bar((320, 320), (160, 160), 200, width, degrees))
        assert crack.length == pytest.approx(200, rel=0.01), width


def ring(radius: float, width: float = 3) -> np.ndarray:
    side = int(2 * radius + 20)
    ys, xs = np.mgrid[:side, :side]
    distance = np.hypot(ys - side / 2, xs - side / 2)
    return (distance >= radius - width / 2) & (distance <= radius + width / 2)


def wave(amplitude: int, period: int) -> tuple[np.ndarray, float]:
    """A sine crack 3 px wide over 300 columns, and its arc length."""
    mask = np.zeros((2 * amplitude + 40, 340), bool)
    columns = np.arange(20, 320)
    phase = 2 * math.pi * columns / period
    rows = np.rint(amplitude + 20 + amplitude * np.sin(phase)).astype(int)
    for row, column in zip(rows, columns, strict=True):
        mask[row - 1 : row + 2, column] = True
    slope = amplitude * 2 * math.pi / period * np.cos(phase[:-1])
    return mask, float(np.hypot(1, slope).sum()) + 1


@pytest.mark.parametrize(("radius", "within"), [(5, 0.03), (8, 0.03), (10, 0.01), (60, 0.01)])
def test_a_ring_measures_its_circumference(radius, within):
    """Smoothed by averaging each pixel's neighbourhood, a ring of radius 5 shrank by 16%."""
    (crack,) = measure_cracks(ring(radius))
    assert crack.length == pytest.approx(2 * math.pi * radius, rel=within)


@pytest.mark.parametrize(("amplitude", "period"), [(3, 16), (4, 24), (25, 188)])
def test_a_wavy_crack_measures_its_arc_length(amplitude, period):
    mask, arc = wave(amplitude, period)
    (crack,) = measure_cracks(mask)
    assert crack.length == pytest.approx(arc, rel=0.02)


def test_a_corner_keeps_its_length_and_a_small_loop_is_not_shrunk_to_nothing():
    corner = np.zeros((150, 150), bool)
    corner[20:23, 20:120] = True  # along its middle row 21 from its edge at 19.5 to 118,
    corner[20:120, 117:120] = True  # then down its middle column 118 to its edge at 119.5
    (bend,) = measure_cracks(corner)
    assert bend.length == pytest.approx(197, rel=0.01)
    for side in (3, 4, 10):  # a hollow square one pixel wide: no end holds it
        square = np.zeros((side + 4, side + 4), bool)
        square[2 : 2 + side, 2 : 2 + side] = True
        square[3 : 1 + side, 3 : 1 + side] = False
        (loop,) = measure_cracks(square)  # smoothing once measured the first two 0
        assert loop.length > 0.7 * 4 * (side - 1), side


def test_the_smoothed_length_of_a_straight_or_diagonal_skeleton_is_its_pixel_path():
    line = np.zeros((5, 60), bool)
    line[2, 5:55] = True
    diagonal = np.eye(40, dtype=bool)
    for skeleton in (line, diagonal):
        assert skeleton_length(skeleton, measure.SMOOTHING_ROUNDS) == pytest.approx(
            skeleton_length(skeleton)
        )


def test_a_branch_longer_than_the_crack_is_wide_is_crack():
    mask = np.zeros((80, 300), bool)
    mask[20:23, 50:250] = True  # 200 long, 3 wide
    mask[23:53, 150:153] = True  # a branch 30 long below it
    (crack,) = measure_cracks(mask)
    assert crack.length == pytest.approx(200 + 30 + 1.5, abs=2)
    spur = np.zeros((80, 300), bool)
    spur[20:23, 50:250] = True
    spur[23:25, 150] = True  # a bump 2 px deep: no crack of its own
    (crack,) = measure_cracks(spur)
    assert crack.length == pytest.approx(200, abs=1)


@pytest.mark.parametrize("width", [64, 65, 90])
def test_a_crack_wider_than_the_exact_reach_is_measured_within_half_a_pixel(width):
    """Wider than 2 * EXACT_HALF_WIDTH, the width is 2d - 0.5 of the distance transform: its
    half-pixel windows would otherwise grow with the region (minutes and gigabytes for a
    mask marking most of a photograph)."""
    mask = np.zeros((width + 20, 400), bool)
    mask[10 : 10 + width, 10:390] = True
    (crack,) = measure_cracks(mask)
    assert crack.max_width == pytest.approx(width, abs=0.5)
    assert crack.mean_width == pytest.approx(width, abs=0.5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("400 wide", (3000, 399.5, 399.5)),
        ("wide, a crack 5 wide from it", (2800, 35.4, 399.5)),
        ("diagonal, 200 across", (2826.6, 140.5, 140.9)),
        ("marked whole", (3000, 1999.5, 1999.5)),
    ],
)
def test_a_region_too_wide_for_a_crack_is_thinned_on_blocks_within_a_block_of_its_length(
    monkeypatch, name, expected
):
    """More than 4 * EXACT_HALF_WIDTH px wide (a flooded mask), a region is thinned on blocks
    of ``scale`` px (its half-width over EXACT_HALF_WIDTH: 2 to 31 here), not once per pixel
    of its half-width over the whole of it: its length within a block at each end of what
    thinning it whole measures (the values expected), its widths as at full resolution."""
    if name == "400 wide":
        mask = np.zeros((500, 3200), bool)
        mask[50:450, 100:3100] = True
    elif name == "wide, a crack 5 wide from it":
        mask = np.zeros((1000, 3000), bool)
        mask[300:700, 100:600] = True
        mask[498:503, 600:2900] = True
    elif name == "diagonal, 200 across":
        mask = np.zeros((2200, 2200), bool)
        rows, columns = np.mgrid[:2200, :2200]
        mask[(abs(rows - columns) < 100) & (rows >= 100) & (rows < 2100)] = True
        mask[:, :100] = mask[:, 2100:] = False
    else:
        mask = np.ones((2000, 3000), bool)
    thinned = []
    skeletonize = measure.skeletonize
    monkeypatch.setattr(
        measure, "skeletonize", lambda a, **kw: thinned.append(a.size) or skeletonize(a, **kw)
    )
    (crack,) = measure_cracks(mask)
    length, mean_width, max_width = expected
    scale = int(max_width / 2 // measure.EXACT_HALF_WIDTH)
    assert scale >= 2
    assert thinned and max(thinned) < 2 * mask.size / scale**2  # on blocks
    assert crack.length == pytest.approx(length, abs=2 * scale)
    assert crack.mean_width == pytest.approx(mean_width, abs=1.5)
    assert crack.max_width == pytest.approx(max_width, abs=0.5)


@pytest.mark.parametrize(("width", "on_blocks"), [(128, False), (129, True)])
def test_a_region_up_to_128_px_wide_is_thinned_at_full_resolution(monkeypatch, width, on_blocks):
    """Up to 4 * EXACT_HALF_WIDTH px wide (the distance transform at most 64) a region is
    measured as a crack is; wider, on blocks. Its width is right either way."""
    mask = np.zeros((width + 20, 600), bool)
    mask[10 : 10 + width, 10:590] = True
    thinned = []
    skeletonize = measure.skeletonize
    monkeypatch.setattr(
        measure, "skeletonize", lambda a, **kw: thinned.append(a.shape) or skeletonize(a, **kw)
    )
    (crack,) = measure_cracks(mask)
    assert (thinned != [(width + 2, 582)]) == on_blocks
    assert crack.length == pytest.approx(580, abs=4)
    assert crack.max_width == pytest.approx(width, abs=0.5)
