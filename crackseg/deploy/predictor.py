"""From photographs to per-pixel crack probabilities and an image-level score.

Every image is turned into network inputs of one size (its tiles, or itself resized as in
training); inputs of consecutive images share batches, so a folder of small images fills whole
batches as a large photograph does. Results come back image by image, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from crackseg.data.labels import resize_image
from crackseg.deploy.tiling import Stitcher, TileGrid

#: A batch of uint8 NHWC inputs -> (decision probabilities [B], crack probabilities [B,H,W]).
Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Plan:
    """``tile``: overlapping tiles of ``tile_height`` x ``tile_width`` at the photo's own scale;
    ``resize``: the whole photo resized to that size, as training resized its images."""

    mode: str
    tile_height: int
    tile_width: int
    overlap: float = 0.25
    batch_size: int = 16


@dataclass(frozen=True)
class ImagePrediction:
    """``score``: the decision probability (the maximum over tiles); ``probabilities``: the
    crack probability of every pixel, at the image's own size."""

    score: float
    probabilities: np.ndarray


class _TiledImage:
    """Blends an image's tiles as they come back; the score is the largest tile score."""

    def __init__(self, grid: TileGrid) -> None:
        self.stitcher = Stitcher(grid)
        self.remaining = len(grid.origins())
        self.score = -np.inf

    def add(self, origin: Any, score: float, probabilities: np.ndarray) -> None:
        self.stitcher.add(origin, probabilities)
        self.score = max(self.score, score)
        self.remaining -= 1

    def result(self) -> ImagePrediction:
        return ImagePrediction(float(self.score), self.stitcher.result())


class _ResizedImage:
    """Takes the one prediction of a resized image and resizes its map back."""

    def __init__(self, height: int, width: int) -> None:
        self.size = width, height
        self.remaining = 1
        self.score = 0.0
        self.probabilities = np.empty(0, np.float32)

    def add(self, origin: Any, score: float, probabilities: np.ndarray) -> None:
        self.score = score
        if probabilities.shape[::-1] != self.size:
            probabilities = cv2.resize(probabilities, self.size, interpolation=cv2.INTER_LINEAR)
        self.probabilities = probabilities
        self.remaining = 0

    def result(self) -> ImagePrediction:
        return ImagePrediction(float(self.score), self.probabilities)


def _start(image: np.ndarray, plan: Plan) -> tuple[Any, list[tuple[Any, np.ndarray]]]:
    """An image's collector of results and its network inputs, each with where it goes."""
    height, width = image.shape[:2]
    if plan.mode == "tile":
        grid = TileGrid(height, width, plan.tile_height, plan.tile_width, plan.overlap)
        return _TiledImage(grid), list(zip(grid.origins(), grid.tiles(image), strict=True))
    return _ResizedImage(height, width), [
        (None, resize_image(image, plan.tile_height, plan.tile_width))
    ]


def predict_images(
    images: Iterable[tuple[Any, np.ndarray]], model: Model, plan: Plan
) -> Iterator[tuple[Any, ImagePrediction]]:
    """Yield ``(key, prediction)`` for each ``(key, HxWxC uint8 image)``, in order."""
    open_jobs: deque[tuple[Any, Any]] = deque()
    pending: deque[tuple[Any, Any, np.ndarray]] = deque()

    def run_batch(size: int) -> None:
        batch = [pending.popleft() for _ in range(size)]
        scores, maps = model(np.stack([tile for _, _, tile in batch]))
        for (job, origin, _), score, probabilities in zip(batch, scores, maps, strict=True):
            job.add(origin, float(score), probabilities)

    def finished() -> Iterator[tuple[Any, ImagePrediction]]:
        while open_jobs and open_jobs[0][1].remaining == 0:
            key, job = open_jobs.popleft()
            yield key, job.result()

    for key, image in images:
        job, inputs = _start(image, plan)
        open_jobs.append((key, job))
        pending.extend((job, origin, tile) for origin, tile in inputs)
        while len(pending) >= plan.batch_size:
            run_batch(plan.batch_size)
            yield from finished()
    while pending:
        run_batch(min(plan.batch_size, len(pending)))
        yield from finished()
