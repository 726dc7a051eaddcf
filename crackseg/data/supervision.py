"""Mixed supervision: which training positives keep their masks (docs/method.md §1).

The others train as weak positives: no segmentation loss, and a decision target of their
image label (or their mask's maximum with ``loss.decision_target=mask_max_all``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from crackseg.data.data_settings import LabelSettings
from crackseg.data.samples import Sample
from crackseg.data.splits import read_segmented_flags, source_group
from crackseg.errors import ConfigError, DataError, describe_files, plural

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


def segmented_from_file(
    path: Path | str, train: list[Sample], num_segmented: int | None, training: bool = True
) -> set[str] | None:
    """Ids of the training positives a split file marks segmented (its ``segmented``
    column; a group's mark covers its positives); None for a file without that column.

    ``num_segmented`` must be null or the file's count (0 for a file that marks none, when
    ``training``: null would read as "all segmented" to the settings that follow it): the
    file decides which positives keep their masks, so a published split trains on exactly
    its segmented subset. A file that marks groups (KSDD folders) may count its N in the
    groups it marks, one of which can hold two positives: either count is the file's.
    """
    flags = read_segmented_flags(path)
    if flags is None:
        return None
    positives = [s for s in train if s.is_positive]
    marked = {
        s.sample_id for s in positives if flags.get(s.sample_id, flags.get(source_group(s), False))
    }
    marked_groups = {
        source_group(s) for s in positives if s.sample_id in marked and s.sample_id not in flags
    }
    counts = {len(marked), len(marked_groups)} if marked_groups else {len(marked)}
    if num_segmented is not None and num_segmented not in counts:
        raise ConfigError(
            f"data.num_segmented={num_segmented} but split file {path} marks {len(marked)} "
            f"training positives as segmented: set data.num_segmented={len(marked)} (or null)"
        )
    if num_segmented is not None and num_segmented != len(marked):
        log.info(
            "split file %s marks %d groups, which hold %d training positives: all %d segmented",
            path,
            len(marked_groups),
            len(marked),
            len(marked),
        )
    if training and num_segmented is None and positives and not marked:
        # null reads as "all segmented" to the settings that follow N (docs/method.md §10)
        raise ConfigError(
            f"split file {path} marks none of its {len(positives)} training positives "
            "segmented, a weak run: set data.num_segmented=0, which the weak run's settings "
            "follow (gradient-flow adjustment, dynamic balance, KolektorSDD's lr and δ)"
        )
    without_mask = sorted(
        s.sample_id for s in positives if s.sample_id in marked and s.mask_path is None
    )
    if without_mask:
        log.warning(
            "split file %s marks %s segmented without a usable mask, trained as weak: %s",
            path,
            plural(len(without_mask), "positive"),
            describe_files(without_mask),
        )
    return marked - set(without_mask)


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
    # A name that is not UTF-8 comes back as the file system's name (weak_ranking.csv).
    with Path(path).open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
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
    # a name repeated counts once (dict.fromkeys keeps the ranking's order)
    chosen = [i for i in dict.fromkeys(ranked) if i not in segmented][:count]
    if len(chosen) < count:
        raise DataError(
            f"data.extra_segmented.count={count} but {path} ranks only {len(chosen)} weak positives"
        )
    log.info("segmented besides the %d chosen at random: %d from %s", len(segmented), count, path)
    return set(chosen)
