"""Cutting a photograph into overlapping tiles and blending their predictions back.

The network normalises its features over each input (FeatureNorm), so it sees a large photo
best the way it was trained: tile by tile at the training scale. Tiles overlap; each tile's
map is weighted by a window that rises smoothly from its edges, and every pixel is the
weighted mean of the tiles covering it, so neighbouring tiles fade into each other without
seams. The weights are divided out, hence a constant prediction stays constant (up to
float32 rounding); the map of an image one tile covers is that tile's, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The smallest weight a window gives (at a tile's outer pixels), so that pixels covered by
#: one tile only are still divided by a weight far from zero.
MIN_WEIGHT = 1e-3


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Where tiles start along an axis of ``length`` pixels (``length >= tile``).

    As few tiles as keep neighbours overlapping by at least ``overlap`` of a tile, spread
    evenly from the first pixel to the last, so none reaches past the image.
    """
    if length <= tile:
        return [0]
    stride = max(1, tile - round(tile * overlap))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp(size: int, width: int) -> np.ndarray:
    """A 1-D window: a raised-cosine rise over ``width`` pixels at each end, 1 in between."""
    if width <= 0:
        return np.ones(size, np.float32)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5  # to the nearer edge
    t = np.clip(distance / width, 0.0, 1.0)
    return np.maximum(np.sin(0.5 * math.pi * t) ** 2, MIN_WEIGHT).astype(np.float32)


def blend_window(height: int, width: int, overlap: float) -> np.ndarray:
    """The 2-D weight of a tile's pixels: the outer product of two ramps, each as wide as
    the overlap between neighbouring tiles."""
    rise_y = ramp(height, round(height * overlap))
    rise_x = ramp(width, round(width * overlap))
    return rise_y[:, None] * rise_x[None, :]


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Extend an image at its bottom and right by reflection to at least ``height`` x ``width``."""
    extra_y, extra_x = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if not extra_y and not extra_x:
        return image
    pad = [(0, extra_y), (0, extra_x)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="reflect")


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering one image (padded first where it is smaller than a tile)."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: float

    @property
    def padded_shape(self) -> tuple[int, int]:
        return max(self.height, self.tile_height), max(self.width, self.tile_width)

    def origins(self) -> list[tuple[int, int]]:
        """Top-left corners of the tiles, row by row."""
        padded_h, padded_w = self.padded_shape
        ys = tile_starts(padded_h, self.tile_height, self.overlap)
        xs = tile_starts(padded_w, self.tile_width, self.overlap)
        return [(y, x) for y in ys for x in xs]

    def tiles(self, image: np.ndarray) -> list[np.ndarray]:
        """The tiles of ``image`` (HxW or HxWxC), in the order of :meth:`origins`."""
        padded = pad_to(image, *self.padded_shape)
        th, tw = self.tile_height, self.tile_width
        return [padded[y : y + th, x : x + tw] for y, x in self.origins()]


class Stitcher:
    """Accumulates the tiles' probability maps of one image into its blended map."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.single_tile = len(grid.origins()) == 1
        #: The map of the one tile, where one covers the image: nothing to blend.
        self.only: np.ndarray | None = None
        if not self.single_tile:
            self.window = blend_window(grid.tile_height, grid.tile_width, grid.overlap)
            self.total = np.zeros(grid.padded_shape, np.float32)
            self.weight = np.zeros(grid.padded_shape, np.float32)

    def add(self, origin: tuple[int, int], probabilities: np.ndarray) -> None:
        if self.single_tile:  # kept as it is, not divided back by its window
            if self.only is not None:
                raise ValueError("a second tile added where one covers the image")
            self.only = np.array(probabilities, np.float32)  # a copy, not a batch's view
            return
        y, x = origin
        th, tw = self.grid.tile_height, self.grid.tile_width
        self.total[y : y + th, x : x + tw] += probabilities * self.window
        self.weight[y : y + th, x : x + tw] += self.window

    def result(self) -> np.ndarray:
        """The blended map, cropped to the image."""
        height, width = self.grid.height, self.grid.width
        if self.single_tile:
            if self.only is None:
                raise ValueError("no tile was added")
            return self.only[:height, :width]
        return self.total[:height, :width] / self.weight[:height, :width]
