"""Mixed supervision: which training positives keep their masks (docs/method.md §1).

The others train as weak positives, with only their image label.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from crackseg.data.data_settings import LabelSettings
from crackseg.data.samples import Sample
from crackseg.data.splits import segmented_from_file
from crackseg.errors import ConfigError, DataError, describe_files

log = logging.getLogger(__name__)


def segmented_positives(
    train: list[Sample],
    labels: LabelSettings,
    split_file: str | None,
    split_seed: int,
    training: bool = True,
) -> set[str]:
    """Ids of the training positives that keep their masks: those a split file marks
    segmented (a published split decides them), else ``labels.num_segmented`` chosen from
    ``split_seed``; then the first weak ones of a ranking, if ``labels.extra_segmented``.
    ``training``: a run will train on them (an evaluation only counts them)."""
    positives = [s for s in train if s.is_positive]
    recorded = None
    if split_file is not None:
        recorded = segmented_from_file(split_file, positives, labels.num_segmented, training)
    if recorded is not None:
        segmented = recorded
    else:
        segmented = choose_segmented(positives, labels.num_segmented, split_seed)
    extra = labels.extra_segmented
    if extra.ranking:
        segmented |= extra_segmented_ids(positives, segmented, extra.ranking, extra.count)
    return segmented


def choose_segmented(positives: list[Sample], num_segmented: int | None, seed: int) -> set[str]:
    """Ids of the training positives that keep their masks, chosen reproducibly.

    ``None`` keeps every mask. Positives without a mask on disk are weak whatever is asked.
    """
    with_mask = sorted(s.sample_id for s in positives if s.mask_path is not None)
    if num_segmented is None:
        return set(with_mask)
    if not 0 <= num_segmented <= len(with_mask):
        raise ConfigError(
            f"data.num_segmented={num_segmented} but the training split has "
            f"{len(with_mask)} positives with masks (use 0..{len(with_mask)} or null for all)"
        )
    order = np.random.default_rng(seed).permutation(len(with_mask))
    return {with_mask[i] for i in order[:num_segmented]}


def read_ranked_ids(path: str | Path) -> list[str]:
    """The sample ids of a ranking, in file order: ``weak_ranking.csv`` (written by
    crackseg.evaluation.weak_ranking) or any CSV with a ``sample_id`` column."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "sample_id" not in reader.fieldnames:
            raise ValueError(f"{path} has no sample_id column")
        return [row["sample_id"] for row in reader if row["sample_id"]]


def extra_segmented_ids(
    positives: list[Sample], segmented: set[str], ranking: str | Path, count: int
) -> set[str]:
    """The first ``count`` weak positives of a ranking (``weak_ranking.csv``), to train as
    segmented: their masks were drawn after a run ranked them as the most uncertain."""
    path = Path(ranking).expanduser()
    try:
        ranked = read_ranked_ids(path)
    except OSError as error:
        reason = error.strerror or error
        raise DataError(f"data.extra_segmented.ranking: cannot read {path}: {reason}") from error
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        message = f"data.extra_segmented.ranking: {path} is not a ranking: {error}"
        raise DataError(message) from error
    with_mask = {s.sample_id for s in positives if s.mask_path is not None}
    unknown = [i for i in ranked if i not in with_mask]
    if unknown:
        raise DataError(
            f"data.extra_segmented.ranking names images that are not training positives with "
            f"a mask: {describe_files(unknown)}"
        )
    chosen = [i for i in ranked if i not in segmented][:count]
    if len(chosen) < count:
        raise DataError(
            f"data.extra_segmented.count={count} but {path} ranks only {len(chosen)} weak positives"
        )
    log.info("segmented besides the %d chosen at random: %d from %s", len(segmented), count, path)
    return set(chosen)
