"""The record every dataset layout produces: one image, its mask, and its label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``mask_path`` is None for a negative stored without a mask; such a sample gets an
    all-zero mask. Whether a positive keeps its mask for training (mixed supervision)
    is decided by the DataModule, not here.
    """

    sample_id: str
    image_path: Path
    mask_path: Path | None
    is_positive: bool


def count_positives(samples: list[Sample]) -> tuple[int, int]:
    """Return (positives, negatives) of a list of samples."""
    positives = sum(s.is_positive for s in samples)
    return positives, len(samples) - positives
