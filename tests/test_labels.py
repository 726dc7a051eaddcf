"""Label preparation (docs/method.md §4) against small hand-computed arrays."""

import numpy as np
import pytest
import torch

from crackseg.data.labels import (
    binarize,
    dilate,
    distance_weight_map,
    prepare_mask,
)
from crackseg.models.losses import downsample_to_output


def test_binarize_threshold_is_strict():
    assert binarize(np.array([0, 127, 128, 255])).tolist() == [False, False, True, True]


def test_dilate_with_square_kernel():
    mask = np.zeros((5, 5), np.uint8)
    mask[2, 2] = 1
    assert dilate(mask, 3).sum() == 9
    assert dilate(mask, 1).sum() == 1


def test_prepare_mask_binarises_before_dilating_and_resizing():
    raw = np.zeros((16, 16), np.uint8)
    raw[8, 8] = 100  # a JPEG artefact, below the threshold
    raw[2, 2] = 200
    mask = prepare_mask(raw, 16, 16, dilate_kernel=3)
    assert mask.dtype == np.float32
    assert mask.sum() == 9 and not mask[8, 8]


@pytest.mark.parametrize("column", range(200, 208))
def test_a_one_pixel_crack_keeps_soft_coverage_when_resized(column):
    """448x448 -> 640x232 (the seed's resize): binarising again at one half erased a 1 px
    vertical crack in every other column position; the soft mask covers it in every row."""
    raw = np.zeros((448, 448), np.uint8)
    raw[:, column] = 255
    mask = prepare_mask(raw, 640, 232)
    assert mask.dtype == np.float32 and mask.max() <= 1.0
    assert (mask.max(axis=1) > 0).all()
    # Area averaging spreads the line over at most two columns, keeping its share of each.
    assert np.count_nonzero(mask.any(axis=0)) <= 2
    np.testing.assert_allclose(mask.sum(axis=1), 232 / 448, rtol=1e-4)


@pytest.mark.parametrize("column", range(8))
def test_a_one_pixel_crack_survives_a_fourfold_shrink(column):
    raw = np.zeros((64, 64), np.uint8)
    raw[:, column + 24] = 255
    mask = prepare_mask(raw, 16, 16)
    np.testing.assert_allclose(mask.max(axis=1), 0.25, rtol=1e-6)


def test_weight_map_whole_image():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    weights = distance_weight_map(mask, max_weight=1.0, power=2.0)
    # Distance to background: 2 at the centre, 1 on the ring; d_max = 2.
    expected = np.ones((5, 5), np.float32)
    expected[1:4, 1:4] = 0.25
    expected[2, 2] = 1.0
    np.testing.assert_allclose(weights, expected)
    np.testing.assert_allclose(distance_weight_map(mask, 3.0, 1.0)[1, 1], 1.5)


def test_weight_map_per_component():
    mask = np.zeros((5, 9), bool)
    mask[1:4, 1:4] = True  # thick: d_max 2
    mask[2, 7] = True  # thin: d 1
    whole = distance_weight_map(mask, 1.0, 2.0)
    per = distance_weight_map(mask, 1.0, 2.0, per_component=True)
    assert whole[2, 7] == pytest.approx(0.25)
    assert per[2, 7] == pytest.approx(1.0)
    assert per[1, 1] == pytest.approx(0.25) and per[2, 2] == pytest.approx(1.0)


def test_weight_map_of_a_negative_is_all_ones():
    assert (distance_weight_map(np.zeros((4, 4), bool)) == 1).all()


def test_downsample_reflection_pad_and_average():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 1, 1] = 1.0
    out = downsample_to_output(mask)[0, 0]
    assert out.shape == (2, 2)
    # Reflection puts copies of (1,1) at (-1,1), (1,-1), (-1,-1); the 17x17 window of
    # output (0,0) spans rows/cols -8..8 and holds all four; output (1,1) spans 0..16.
    expected = torch.tensor([[4.0, 2.0], [2.0, 1.0]]) / 289
    assert torch.allclose(out, expected)


def test_downsample_keeps_a_full_mask_full():
    assert torch.allclose(downsample_to_output(torch.ones(1, 1, 24, 40)), torch.ones(1, 1, 3, 5))


def test_an_image_and_its_mask_are_resized_alike_and_stay_aligned():
    """448x448 to the seed's 640x232 grows the height and shrinks the width: image and mask
    are both resized one axis at a time, so a crack is where its mask says (resized in one
    2-D pass, a 1 px crack moved by up to 0.76 px, or vanished from the image)."""
    from crackseg.data.labels import resize_image, resize_mask

    columns = np.arange(232)
    for column in range(90, 100):
        mask = np.zeros((448, 448), np.uint8)
        mask[100:300, column] = 1
        image = np.dstack([mask * 255] * 3)
        soft = resize_mask(mask, 640, 232).sum(axis=0)
        resized = resize_image(image, 640, 232)
        assert resized.shape == (640, 232, 3) and resized.dtype == np.uint8
        profile = resized[..., 0].astype(np.float64).sum(axis=0)
        assert profile.sum() > 0
        centres = [(p * columns).sum() / p.sum() for p in (soft, profile)]
        assert centres[0] == pytest.approx(centres[1], abs=0.02), column
    assert resize_image(image[..., :1], 640, 232).shape == (640, 232, 1)  # grey keeps its axis
