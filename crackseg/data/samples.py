"""The record every dataset layout produces: one image, its mask, and its label."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crackseg.data.rle import RunLengthMask

#: The splits of a dataset, in the order a run uses them.
SPLITS = ("train", "val", "test")

#: The name of a tile (crackseg.data.tiles): ``[noncrack_]PHOTO_rR_cC``.
_TILE_NAME = re.compile(r"(?:noncrack_)?(?P<photo>.+)_r\d+_c\d+")
#: Written beside the tiles of photographs that came in groups (KolektorSDD's folders, one
#: physical part each): ``photo,group`` rows, which folds keep whole.
TILE_GROUPS_FILE = "tile_groups.csv"


def tile_photo(stem: str) -> str | None:
    """The photograph a tile was cut from, by the tile's name (its file's stem); None where
    the name is no tile's."""
    match = _TILE_NAME.fullmatch(stem)
    return match["photo"] if match else None


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``mask_path`` is None for a negative stored without a mask; such a sample gets an
    all-zero mask (a Severstal mask is a RunLengthMask, decoded from its CSV). Whether a
    positive keeps its mask for training (mixed supervision) is decided by the DataModule,
    not here. ``group`` names the photograph or part several samples come from (a KSDD
    folder): folds never split a group.
    """

    sample_id: str
    image_path: Path
    mask_path: Path | RunLengthMask | None
    is_positive: bool
    group: str | None = None

    def image_under(self, root: Path | str) -> str:
        """Its image file's path relative to the dataset's ``root``: the same for the same
        file whichever layout indexed it (sample ids differ: ``train_X`` of a split folder
        is ``X`` to ``data=folder``)."""
        return os.path.relpath(self.image_path, root)


def count_positives(samples: list[Sample]) -> tuple[int, int]:
    """Return (positives, negatives) of a list of samples."""
    positives = sum(s.is_positive for s in samples)
    return positives, len(samples) - positives
