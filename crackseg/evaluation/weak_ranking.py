"""Which weak positives to annotate next: the loop of mixed supervision.

After a run with weak positives (training images known to hold a crack but without a pixel
mask), the model's segmentation of each of them says how sure it is of where the crack is.
The score is the mean binary entropy, in bits, of the probability map over the pixels the
model calls crack (probability at or above the segmentation threshold chosen on validation):

    H(p) = -p log2 p - (1 - p) log2 (1 - p),   score = mean of H over {p >= threshold}

0 when every crack pixel is certain, 1 when they all sit at 0.5. An image in which the model
calls no pixel a crack scores 1: its label says there is a crack the segmentation does not
find, which is what a mask teaches best. Higher scores come first in ``weak_ranking.csv``;
drawing the masks of the top-ranked images and training with them
(``data.extra_segmented.ranking=.../weak_ranking.csv``) is the next step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crackseg.atomic import atomic_write_csv
from crackseg.evaluation.metrics import score_text

COLUMNS = (
    "rank",
    "sample_id",
    "image",
    "uncertainty",
    "decision_score",
    "crack_pixels",
    "mean_crack_probability",
)


def binary_entropy(probabilities: Tensor) -> Tensor:
    """H(p) in bits, elementwise, with H(0) = H(1) = 0."""
    p = probabilities.double().clamp(0.0, 1.0)
    terms = torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)
    return -terms / math.log(2)


def uncertainty(probabilities: Tensor, threshold: float) -> tuple[float, int, float]:
    """(score, crack pixels, their mean probability) of one probability map."""
    called = probabilities >= threshold
    count = int(called.sum())
    if count == 0:
        return 1.0, 0, math.nan
    chosen = probabilities[called]
    return float(binary_entropy(chosen).mean()), count, float(chosen.double().mean())


def rank(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most uncertain first; ties by sample id, so the order never depends on the loader."""
    ordered = sorted(entries, key=lambda e: (-e["uncertainty"], e["sample_id"]))
    return [{"rank": i + 1, **entry} for i, entry in enumerate(ordered)]


def write_ranking(path: str | Path, ranked: Sequence[dict[str, Any]]) -> Path:
    # read back by data.extra_segmented.ranking: names that are not UTF-8 kept as bytes
    atomic_write_csv(path, COLUMNS, (_ranking_row(entry) for entry in ranked), names_as_bytes=True)
    return Path(path)


def _ranking_row(entry: dict[str, Any]) -> list[Any]:
    mean = entry["mean_crack_probability"]
    return [
        entry["rank"],
        entry["sample_id"],
        entry["image"],
        f"{entry['uncertainty']:.6f}",
        score_text(entry["decision_score"]),
        entry["crack_pixels"],
        "" if math.isnan(mean) else f"{mean:.6f}",
    ]
