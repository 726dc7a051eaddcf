"""Tiles at the training scale, blended back without seams; images resized as in training."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import predict_settings
from helpers.bf16_bounds import bf16_relative_bound

from crackseg.data.data_settings import InputSize
from crackseg.deploy.backends import ModelInfo, TorchBackend
from crackseg.deploy.predictor import Plan, predict_images
from crackseg.deploy.tiling import TileGrid, blend_window, tile_starts
from crackseg.errors import ConfigError
from crackseg.models import precision
from crackseg.models.lit_segdec import SegDecModule

SMALL_NET = {"channels": [8, 8, 8], "volume_channels": 16, "volume_kernel": 3}


class IdentityModel:
    """A stub whose map is the tile's first channel / 255 and whose score is its maximum;
    it records the shape of every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(tiles.shape)
        maps = tiles[..., 0].astype(np.float32) / 255
        return maps.max(axis=(1, 2)), maps


def predict_one(image: np.ndarray, model, plan: Plan):
    ((_, prediction),) = list(predict_images([("image", image)], model, plan))
    return prediction


def test_tiles_start_evenly_spaced_with_at_least_the_asked_overlap():
    # 300 px, tiles of 128, overlap 32 px -> stride 96 -> ceil(172 / 96) + 1 = 3 tiles,
    # spread over 0..172: 0, 86, 172 (overlap 42 px).
    assert tile_starts(300, 128, 0.25) == [0, 86, 172]
    assert tile_starts(128, 128, 0.25) == [0]
    assert tile_starts(129, 128, 0.25) == [0, 1]
    assert tile_starts(256, 128, 0.0) == [0, 128]


def test_the_window_rises_smoothly_from_the_edges_and_is_flat_inside():
    window = blend_window(64, 64, 0.25)  # ramps of 16 px
    assert window.min() > 0 and window.max() == pytest.approx(1.0)
    assert window[16:48, 16:48] == pytest.approx(np.ones((32, 32)))
    row = window[32]
    assert np.all(np.diff(row[:16]) > 0) and np.all(np.diff(row[48:]) < 0)


def test_a_constant_image_three_tiles_wide_gives_a_constant_map():
    image = np.full((3 * 64, 3 * 128, 3), 100, np.uint8)
    model = IdentityModel()
    prediction = predict_one(image, model, Plan("tile", 64, 128, overlap=0.25, batch_size=4))
    assert prediction.probabilities.shape == (192, 384)
    np.testing.assert_allclose(prediction.probabilities, 100 / 255, atol=1e-6)
    # 4 x 4 tiles (three tiles per axis would not overlap), in batches of 4.
    assert [b[0] for b in model.batches] == [4, 4, 4, 4]


def test_every_tile_lands_where_it_was_cut():
    image = np.random.default_rng(0).integers(0, 256, (150, 333, 3), np.uint8)
    prediction = predict_one(image, IdentityModel(), Plan("tile", 64, 128, overlap=0.3))
    np.testing.assert_allclose(prediction.probabilities, image[..., 0] / 255, atol=1e-6)


def test_neighbouring_tiles_fade_into_each_other_without_a_seam():
    """Tiles predicting 0 and 1 everywhere: a hard seam would jump by 1 between two pixels;
    blended over a 32 px overlap the largest step is about pi / (2 * 32)."""

    class TileIndexModel:
        def __call__(self, tiles):
            values = tiles[:, 0, 0, 0].astype(np.float32) / 255
            return values, np.broadcast_to(values[:, None, None], tiles.shape[:3]).copy()

    image = np.zeros((64, 224, 3), np.uint8)  # two 128-wide tiles at x = 0 and 96
    image[:, 96:] = 255  # the second tile's first pixel is 255, the first tile's is 0
    maps = predict_one(image, TileIndexModel(), Plan("tile", 64, 128, overlap=0.25)).probabilities
    assert maps[0, 0] == pytest.approx(0.0) and maps[0, -1] == pytest.approx(1.0)
    steps = np.abs(np.diff(maps[32]))
    assert steps.max() < 0.06
    assert np.all(np.diff(maps[32]) >= -1e-6)  # a monotone blend


def test_an_image_smaller_than_a_tile_is_padded_by_reflection_and_cropped_back():
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 1), np.uint8)
    model = IdentityModel()
    prediction = predict_one(image, model, Plan("tile", 64, 128))
    assert model.batches == [(1, 64, 128, 1)]
    np.testing.assert_allclose(prediction.probabilities, image[..., 0] / 255, atol=1e-6)
    (tile,) = TileGrid(40, 50, 64, 128, 0.25).tiles(image)
    assert tile[40, 0, 0] == image[38, 0, 0] and tile[0, 50, 0] == image[0, 48, 0]


def test_an_image_one_tile_covers_keeps_that_tiles_map_bit_for_bit():
    """Nothing to blend: the map is the network's, not divided back by its window (which
    changes values in the last bit and could move a pixel across the threshold)."""
    image = np.random.default_rng(3).integers(0, 256, (64, 128, 3), np.uint8)
    prediction = predict_one(image, IdentityModel(), Plan("tile", 64, 128))
    np.testing.assert_array_equal(prediction.probabilities, image[..., 0].astype(np.float32) / 255)


def test_the_image_score_is_the_maximum_over_its_tiles():
    image = np.full((200, 300, 3), 10, np.uint8)
    image[190, 290] = 240  # in the last tile only
    prediction = predict_one(image, IdentityModel(), Plan("tile", 64, 128))
    assert prediction.score == pytest.approx(240 / 255)


def test_tiles_of_consecutive_images_share_batches_and_come_back_in_order():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(64, 128, 3), (100, 200, 3)]]
    images.append(rng.integers(0, 256, (64, 128, 3), np.uint8))
    model = IdentityModel()
    plan = Plan("tile", 64, 128, overlap=0.25, batch_size=3)
    results = list(predict_images(enumerate(images), model, plan))
    assert [key for key, _ in results] == [0, 1, 2]
    assert [b[0] for b in model.batches] == [3, 3]  # 1 + 4 + 1 tiles
    for (_, prediction), image in zip(results, images, strict=True):
        np.testing.assert_allclose(prediction.probabilities, image[..., 0] / 255, atol=1e-6)


def test_resize_mode_resizes_to_the_input_size_and_the_map_back():
    image = np.tile(np.linspace(0, 255, 150, dtype=np.float32), (90, 1)).astype(np.uint8)
    model = IdentityModel()
    prediction = predict_one(image[..., None], model, Plan("resize", 64, 128))
    assert model.batches == [(1, 64, 128, 1)]
    assert prediction.probabilities.shape == (90, 150)
    np.testing.assert_allclose(prediction.probabilities, image / 255, atol=0.02)


def test_an_image_of_one_tile_gives_the_plain_forward_pass():
    torch.manual_seed(0)
    module = SegDecModule(network=SMALL_NET, input_shape=InputSize(height=64, width=128)).eval()
    image = np.random.default_rng(3).integers(0, 256, (64, 128, 3), np.uint8)
    backend = TorchBackend(module, torch.device("cpu"))
    prediction = predict_one(image, backend, Plan("tile", 64, 128))
    with torch.no_grad():
        # As the training data set prepares an image.
        score, seg = module(torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float() / 255)
    assert prediction.score == pytest.approx(float(score), abs=1e-6)
    np.testing.assert_allclose(prediction.probabilities, seg[0, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_autocast_runs_on_the_cpu_close_to_float32(monkeypatch, amx):
    """Probabilities are sigmoids (slope at most 1/4) of logits that bf16 moves by at most
    the first-order bound of tests/helpers/bf16_bounds.py, relative to the logits' size (a
    logit near 0 is a difference of larger terms, each rounded at their own size: the
    image's largest logit); a bf16 output is then rounded once more (at most 2^-9 below 1).
    On a CPU with AMX, bf16 runs channels_last, as training does there."""
    features = ["avx512_bf16", "amx_bf16"] if amx else ["avx512_bf16"]
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: features)
    torch.manual_seed(0)
    module = SegDecModule(network=SMALL_NET, input_shape=InputSize(height=64, width=128)).eval()
    tiles = np.random.default_rng(4).integers(0, 256, (2, 64, 128, 3), np.uint8)
    float32 = TorchBackend(module, torch.device("cpu"), "32")
    scores32, maps32 = float32(tiles)
    bf16 = TorchBackend(module, torch.device("cpu"), "bf16")
    scores16, maps16 = bf16(tiles)
    assert float32.memory_format == torch.contiguous_format
    layout = torch.channels_last if amx else torch.contiguous_format
    assert bf16.memory_format == layout
    assert module.net.volume[0].weight.is_contiguous(memory_format=layout)
    assert maps16.dtype == np.float32 and maps16.shape == (2, 64, 128)
    bound = bf16_relative_bound(module)
    for p16, p32 in ((scores16, scores32), (maps16, maps32)):
        clipped = np.clip(p32, 1e-7, 1 - 1e-7)
        logits = np.abs(np.log(clipped / (1 - clipped))).reshape(len(p32), -1)
        size = logits.max(axis=1).reshape((-1,) + (1,) * (p32.ndim - 1))
        assert np.all(np.abs(p16 - p32) <= bound / 4 * size + 2.0**-9)
    assert not np.array_equal(maps16, maps32)  # bfloat16 did run


def test_a_model_trained_with_the_volume_as_im2col_predicts_so():
    """The speed options come with the checkpoint's hyperparameters: ``model.volume_im2col``
    reaches crackseg-predict, with the same probabilities as the direct convolution's."""
    torch.manual_seed(0)
    shape = InputSize(height=64, width=128)
    direct = SegDecModule(network=SMALL_NET, input_shape=shape).eval()
    im2col = SegDecModule(network=SMALL_NET, input_shape=shape, speed={"volume_im2col": True})
    reloaded = SegDecModule(**im2col.hparams).eval()
    assert reloaded.net.volume_im2col and not direct.net.volume_im2col
    reloaded.load_state_dict(direct.state_dict())
    tiles = np.random.default_rng(5).integers(0, 256, (2, 64, 128, 3), np.uint8)
    expected = TorchBackend(direct, torch.device("cpu"), "32")(tiles)
    got = TorchBackend(reloaded, torch.device("cpu"), "32")(tiles)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def info(scaling) -> ModelInfo:
    return ModelInfo(3, 160, 160, scaling, image_threshold=0.4, seg_threshold=0.3)


def test_auto_mode_follows_how_the_model_was_trained(caplog):
    native = {"mode": "native", "source_height": 160, "source_width": 160}
    resized = {"mode": "resize", "source_height": 448, "source_width": 448}
    assert predict_settings().plan(info(native), "m") == Plan("tile", 160, 160, 0.25, 8)
    assert predict_settings().plan(info(resized), "m") == Plan("resize", 160, 160, 0.0, 8)
    with caplog.at_level(logging.WARNING):
        assert predict_settings().plan(info(None), "old.ckpt").mode == "resize"
    assert "old.ckpt does not record how its training images were scaled" in caplog.text
    assert predict_settings(mode="tile").plan(info(resized), "m").mode == "tile"
    assert predict_settings(mode="tile", tile_width=320).plan(info(None), "m").tile_width == 320


def test_a_tile_the_network_cannot_take_is_refused():
    with pytest.raises(ConfigError, match="tile 100x160 .* not divisible by 8"):
        predict_settings(mode="tile", tile_height=100).plan(info(None), "m")
    with pytest.raises(ConfigError, match="tile_height/tile_width apply to mode=tile"):
        predict_settings(mode="resize", tile_height=64).plan(info(None), "m")
