"""Train/validation/test splits: stratified, reproducible, and recorded in a CSV.

A split depends only on the sample ids, their labels, the fractions and the seed (never
on the order the file system lists files in), so the same command on another machine
gives the same split; ``split.csv`` pins it exactly when the data change.

Cross-validation (``data.num_folds=K data.fold=i``) pools every sample the layout found and
deals whole groups (a KSDD folder, the photograph tiles were cut from) into K folds,
stratified by whether a group holds a positive: fold i is the test split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crackseg.atomic import atomic_write_csv
from crackseg.data.data_settings import SplitSettings
from crackseg.data.samples import SPLITS, Sample, count_positives, tile_photo
from crackseg.errors import ConfigError, DataError, describe_files
from crackseg.markdown import markdown_table
from crackseg.setting_rules import as_typed, is_integer

log = logging.getLogger(__name__)

CSV_COLUMNS = ("split", "sample_id", "label", "segmented", "image", "mask")
#: The key of the training images' files (under the dataset's root) in a split's identity.
TRAINED_FILES = "train_files"


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even; half-up is what a reader computes by hand.
    return math.floor(value + 0.5)


def _split_sizes(n: int, fractions: list[float]) -> list[int]:
    """Round each later split's share of ``n``; the first split takes the remainder."""
    sizes = [_round_half_up(n * f) for f in fractions[1:]]
    for i in reversed(range(len(sizes))):  # only when tiny first fractions over-commit n
        excess = sum(sizes) - n
        if excess <= 0:
            break
        sizes[i] -= min(excess, sizes[i])
    return [n - sum(sizes), *sizes]


def stratified_split(
    samples: list[Sample], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Split keeping the positive/negative ratio in every split (rounded per class).

    Sizes are computed per class, so with 9887 positives, 1411 negatives and
    .70/.15/.15 the splits are 6921+987, 1483+212, 1483+212, as in the seed report.
    """
    if not fractions:
        raise ConfigError("no split fractions given")
    values = list(fractions.values())
    if any(f < 0 for f in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    ordered = sorted(samples, key=lambda s: s.sample_id)
    ids = [s.sample_id for s in ordered]
    duplicates = sorted({a for a, b in zip(ids, ids[1:], strict=False) if a == b})
    if duplicates:
        raise DataError(f"duplicate sample ids: {describe_files(duplicates)}")
    rng = np.random.default_rng(seed)
    names = list(fractions)
    result: dict[str, list[Sample]] = {name: [] for name in names}
    for positive in (True, False):
        members = [s for s in ordered if s.is_positive == positive]
        order = rng.permutation(len(members))
        start = 0
        for name, size in zip(names, _split_sizes(len(members), values), strict=True):
            result[name] += [members[i] for i in order[start : start + size]]
            start += size
    return {name: sorted(part, key=lambda s: s.sample_id) for name, part in result.items()}


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def resolve_splits(
    indexed: dict[str, list[Sample]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    split_file: Path | str | None = None,
    num_folds: int | None = None,
    fold: int | None = None,
    train_positives: int | None = None,
) -> dict[str, list[Sample]]:
    """Turn what the layout found on disk into train/val/test.

    - a split file: exactly the split it records (a run can be repeated after the data
      folder changed, or compared with another run on the same split); a file without
      validation samples (a published split) gets them carved from its train part;
      ``fold`` may then name the published fold it holds, ``num_folds`` must be None;
    - ``num_folds`` and ``fold``: fold ``fold`` of all samples is the test split, validation
      is carved from the other folds (``val_fraction``; 0 where the run validates on test);
    - only "all": a three-way stratified split;
    - train and test: validation carved from train (``val_fraction`` of train), so the
      test split the dataset defines is never touched;
    - train, val and test: used as they are.

    ``train_positives`` keeps that many training positives (Severstal's training sizes),
    chosen reproducibly from ``seed`` and nested: the 300 are among the 750.
    """
    _check_fraction("data.val_fraction", val_fraction)
    _check_fraction("data.test_fraction", test_fraction)
    if split_file is not None:
        # data.fold may name the published fold the file holds (the sweep's fold join reads
        # it); the file alone decides the split
        if num_folds is not None:
            raise ConfigError(
                "data.split_file fixes the split already: drop data.num_folds "
                "(a published split holds one fold: crackseg-data import-split --fold)"
            )
        if fold is not None and (not is_integer(fold) or fold < 0):
            raise ConfigError(
                f"data.fold names the published fold data.split_file holds (import-split "
                f"--fold): a number >= 0, not {as_typed(fold)}"
            )
        splits = _splits_from_file(indexed, Path(split_file), val_fraction, seed)
        _check_train_positives(splits["train"], train_positives, f"split file {split_file}")
        return splits
    _check_folds(num_folds, fold)
    if num_folds is not None:
        splits = _fold_splits(indexed, num_folds, fold, val_fraction, seed)
    else:
        splits = _splits_on_disk(indexed, val_fraction, test_fraction, seed)
    if train_positives is not None:
        splits["train"] = keep_positives(splits["train"], train_positives, seed)
    return splits


def _splits_on_disk(
    indexed: dict[str, list[Sample]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    keys = set(indexed)
    if keys == {"all"} or keys == {"train"}:
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                "data.val_fraction plus data.test_fraction must be below 1, got "
                f"{val_fraction + test_fraction}"
            )
        samples = next(iter(indexed.values()))
        fractions = {
            "train": 1.0 - val_fraction - test_fraction,
            "val": val_fraction,
            "test": test_fraction,
        }
        return split_by_source(samples, fractions, seed)
    if keys == {"train", "test"}:
        carved = split_by_source(
            indexed["train"], {"train": 1.0 - val_fraction, "val": val_fraction}, seed
        )
        return {"train": carved["train"], "val": carved["val"], "test": list(indexed["test"])}
    if keys == {"train", "val"}:
        carved = split_by_source(
            indexed["train"], {"train": 1.0 - test_fraction, "test": test_fraction}, seed
        )
        return {"train": carved["train"], "val": list(indexed["val"]), "test": carved["test"]}
    if keys == {"train", "val", "test"}:
        return {name: list(indexed[name]) for name in SPLITS}
    raise DataError(
        f"cannot make train/val/test from the splits found on disk: {', '.join(sorted(keys))}"
    )


# --------------------------------------------------------------------------- folds


def source_group(sample: Sample) -> str:
    """What a sample was cut or taken from, which folds keep whole: the layout's group (a
    KSDD folder, that of the photograph a tile was cut from too), the photograph of a tile
    (by the tile's name), else the sample itself."""
    if sample.group is not None:
        return sample.group
    photo = tile_photo(Path(sample.image_path).stem)
    return f"photo:{photo}" if photo is not None else sample.sample_id


def split_by_source(
    samples: list[Sample], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """A stratified split that keeps each source whole (a KSDD folder, the tiles of one
    photograph: :func:`source_group`), so that no source is both trained and tested on;
    samples that are each their own source take the plain stratified split."""
    if any(source_group(s) != s.sample_id for s in samples):
        return grouped_split(samples, fractions, seed)
    return stratified_split(samples, fractions, seed)


def grouped_split(
    samples: list[Sample],
    fractions: dict[str, float],
    seed: int,
    group_of: Callable[[Sample], str] = source_group,
) -> dict[str, list[Sample]]:
    """Deal whole groups into parts of the given fractions, stratified by positives.

    Groups holding a positive are dealt first, each to the part whose share of positives is
    furthest below its fraction, then the negative-only groups by the negatives; largest
    groups first, equal sizes in an order drawn from ``seed``. With one sample a group and
    equal fractions this is a stratified K-fold: the parts differ by at most one sample of
    each class, the earlier parts taking the extra ones.
    """
    if any(f < 0 for f in fractions.values()) or not math.isclose(
        sum(fractions.values()), 1.0, abs_tol=1e-6
    ):
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    groups: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.sample_id):
        groups.setdefault(group_of(sample), []).append(sample)
    names = list(fractions)
    loads = {name: [0, 0] for name in names}  # positives, negatives dealt to each part
    parts: dict[str, list[Sample]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    for positive in (True, False):
        kind = 0 if positive else 1
        keys = sorted(g for g, m in groups.items() if any(s.is_positive for s in m) == positive)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        keys.sort(key=lambda g: -sum(s.is_positive == positive for s in groups[g]))
        for key in keys:
            open_parts = [n for n in names if fractions[n] > 0]
            chosen = min(open_parts, key=lambda n: (loads[n][kind] / fractions[n], names.index(n)))
            parts[chosen] += groups[key]
            loads[chosen][0] += sum(s.is_positive for s in groups[key])
            loads[chosen][1] += sum(not s.is_positive for s in groups[key])
    return {name: sorted(part, key=lambda s: s.sample_id) for name, part in parts.items()}


def _check_folds(num_folds: int | None, fold: int | None) -> None:
    if num_folds is None and fold is None:
        return
    if num_folds is None or fold is None:
        raise ConfigError(
            "data.num_folds and data.fold go together: data.num_folds=K data.fold=0..K-1"
        )
    if not is_integer(num_folds) or num_folds < 2:
        raise ConfigError(f"data.num_folds must be an integer >= 2, not {as_typed(num_folds)}")
    if not is_integer(fold) or not 0 <= fold < num_folds:
        raise ConfigError(
            f"data.fold must be 0..{num_folds - 1} (data.num_folds={num_folds}), "
            f"not {as_typed(fold)}"
        )


def _fold_splits(
    indexed: dict[str, list[Sample]], num_folds: int, fold: int, val_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    everything = [s for samples in indexed.values() for s in samples]
    folds = grouped_split(everything, {f"fold{k}": 1.0 / num_folds for k in range(num_folds)}, seed)
    test = folds[f"fold{fold}"]
    if not test:
        groups = len({source_group(s) for s in everything})
        raise DataError(
            f"fold {fold} of data.num_folds={num_folds} is empty: folds keep whole groups (a "
            f"KolektorSDD folder, a photograph's tiles), and the data holds {groups}; lower "
            "data.num_folds"
        )
    rest = [s for k in range(num_folds) if k != fold for s in folds[f"fold{k}"]]
    carved = grouped_split(rest, {"train": 1.0 - val_fraction, "val": val_fraction}, seed)
    log.info(
        "fold %d of %d: %d test samples in %d groups",
        fold,
        num_folds,
        len(test),
        len({source_group(s) for s in test}),
    )
    return {"train": carved["train"], "val": carved["val"], "test": test}


# --------------------------------------------------------------------------- training size


def keep_positives(train: list[Sample], count: int, seed: int) -> list[Sample]:
    """The training split with ``count`` of its positives (every negative kept)."""
    positives = sorted((s for s in train if s.is_positive), key=lambda s: s.sample_id)
    if not is_integer(count) or not 0 < count <= len(positives):
        raise ConfigError(
            f"data.train_positives={count} but the training split has {len(positives)} "
            f"positives (use 1..{len(positives)} or null for all)"
        )
    order = np.random.default_rng(seed).permutation(len(positives))
    kept = {positives[i].sample_id for i in order[:count]}
    log.info("training on %d of its %d positives (data.train_positives)", count, len(positives))
    return [s for s in train if not s.is_positive or s.sample_id in kept]


def _check_train_positives(train: list[Sample], count: int | None, source: str) -> None:
    positives = sum(s.is_positive for s in train)
    if count is not None and count != positives:
        raise ConfigError(
            f"data.train_positives={count} but {source} has {positives} training positives: "
            f"set data.train_positives={positives} (or null)"
        )


def _dagm_ids_hint(missing: list[str], everything: list[Sample]) -> str:
    """What to do where a split file names DAGM samples of another class than the run's
    (``class2_train_0001`` in a run of class 1), or as crackseg did before their ids named the
    class (``train_0001`` for ``class1_train_0001``); nothing otherwise."""
    if not any(s.sample_id.startswith("class") for s in everything):
        return ""
    classes = {re.match(r"class(\d+)_", i) for i in missing}
    if None not in classes:
        named = sorted({int(m[1]) for m in classes if m})
        if len(named) == 1:
            return f" (they are of class {named[0]}: train with data.dagm_class={named[0]})"
    if all(i.startswith(("train_", "test_")) for i in missing):
        return (
            " (DAGM ids name their class now, class1_train_0001: import the split file "
            "again with crackseg-data import-split --fold K)"
        )
    return ""


def _splits_from_file(
    indexed: dict[str, list[Sample]], path: Path, val_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """The recorded split; a row may name a group (a KSDD folder) for all of its samples."""
    everything = [s for samples in indexed.values() for s in samples]
    by_id = {s.sample_id: [s] for s in everything}
    by_group: dict[str, list[Sample]] = {}
    for sample in everything:
        by_group.setdefault(source_group(sample), []).append(sample)
    recorded = {
        split: [i if i in by_id or i in by_group else i.strip() for i in ids]
        for split, ids in read_split_csv(path).items()
    }
    missing = [i for ids in recorded.values() for i in ids if i not in by_id and i not in by_group]
    if missing:
        raise DataError(
            f"split file {path} names samples not in the dataset: {describe_files(missing)}"
            + _dagm_ids_hint(missing, everything)
        )
    result = {
        name: sorted(
            (s for i in recorded.get(name, []) for s in by_id.get(i) or by_group[i]),
            key=lambda s: s.sample_id,
        )
        for name in SPLITS
    }
    ids = [s.sample_id for samples in result.values() for s in samples]
    if len(set(ids)) != len(ids):
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise DataError(
            f"split file {path} names samples more than once (in two splits, or by their "
            f"own name and their folder's): {describe_files(twice)}"
        )
    if not result["val"] and val_fraction > 0:
        carved = grouped_split(
            result["train"], {"train": 1.0 - val_fraction, "val": val_fraction}, seed
        )
        result["train"], result["val"] = carved["train"], carved["val"]
        log.info(
            "split file %s has no validation samples: %d carved from its %d training samples "
            "(data.val_fraction=%s)",
            path,
            len(carved["val"]),
            len(carved["train"]) + len(carved["val"]),
            val_fraction,
        )
    used = len(ids)
    if used < len(everything):
        log.warning(
            "split file %s uses %d of the %d samples found; the other %d are left out",
            path,
            used,
            len(everything),
            len(everything) - used,
        )
    return result


def split_samples(
    indexed: dict[str, list[Sample]], settings: SplitSettings
) -> dict[str, list[Sample]]:
    """The split ``settings`` ask for (:func:`resolve_splits`); with ``all_as_test`` every
    sample found is the test split (someone else's labelled folder, evaluated as a whole)."""
    if settings.all_as_test:
        everything = sorted(
            (s for samples in indexed.values() for s in samples), key=lambda s: s.sample_id
        )
        return {"train": [], "val": [], "test": everything}
    return resolve_splits(
        indexed,
        settings.val_fraction,
        settings.test_fraction,
        settings.split_seed,
        settings.split_file,
        num_folds=settings.num_folds,
        fold=settings.fold,
        train_positives=settings.train_positives,
    )


def split_counts(splits: Mapping[str, list[Sample]]) -> dict[str, tuple[int, int]]:
    """(positives, negatives) per split."""
    return {name: count_positives(samples) for name, samples in splits.items()}


#: The seed report's Set table: each split's row name, in its order ("all": a dataset that
#: has no splits).
SET_ROWS = {"all": "All", "train": "Train", "test": "Test", "val": "Validation"}


def set_table(counts: Mapping[str, tuple[int, int] | None]) -> list[str]:
    """The seed report's Set table (Set | Positives | Negatives | Sum, then a **Sum** row)
    of the splits in ``counts``, (positives, negatives) each; a split counted as None is
    n/a (not known) and left out of the sum."""
    rows: list[tuple[object, ...]] = []
    positives = negatives = 0
    for split, name in SET_ROWS.items():
        if split not in counts:
            continue
        pair = counts[split]
        if pair is None:
            rows.append((name, "n/a", "n/a", "n/a"))
            continue
        positives += pair[0]
        negatives += pair[1]
        rows.append((name, pair[0], pair[1], sum(pair)))
    rows.append(("**Sum**", positives, negatives, positives + negatives))
    return markdown_table(("Set", "Positives", "Negatives", "Sum"), rows, min_width=11)


@dataclass(frozen=True)
class DataSplit:
    """The split a run uses and the training positives that keep their masks: what the
    report counts and ``split.csv`` records."""

    splits: dict[str, list[Sample]]
    segmented_ids: frozenset[str]

    def counts(self) -> dict[str, tuple[int, int]]:
        """(positives, negatives) per split, as in the seed report's table."""
        return split_counts(self.splits)

    @property
    def num_segmented(self) -> int:
        """Training positives that keep their masks."""
        return len(self.segmented_ids)

    def weak_train_indices(self) -> list[int]:
        """Positions in the training split of its weak positives (no mask used)."""
        return [
            i
            for i, s in enumerate(self.splits["train"])
            if s.is_positive and s.sample_id not in self.segmented_ids
        ]

    def save(self, path: Path | str) -> None:
        """Write the split (and which positives kept masks) to a CSV that reproduces it."""
        write_split_csv(path, self.splits, self.segmented_ids)

    def identity(self, root: Path | None = None) -> dict[str, Any]:
        """What a checkpoint keeps to know this split again: the sample ids of each split,
        and a digest of their labels and of the positives that keep their masks; with the
        dataset's ``root``, the training images' files too (under it: what an evaluation
        through another layout compares, whose sample ids are other)."""
        rows = sorted(
            f"{name}\t{s.sample_id}\t{int(s.is_positive)}\t{int(s.sample_id in self.segmented_ids)}"
            for name, samples in self.splits.items()
            for s in samples
        )
        ids = {name: sorted(s.sample_id for s in samples) for name, samples in self.splits.items()}
        text = "\n".join(rows).encode("utf-8", "surrogateescape")  # names of any bytes
        identity = {"ids": ids, "digest": hashlib.sha256(text).hexdigest()}
        if root is not None:
            identity[TRAINED_FILES] = sorted(s.image_under(root) for s in self.splits["train"])
        return identity

    def changes_since(self, recorded: dict[str, Any], shown: int = 3) -> list[str]:
        """How this split differs from the one :meth:`identity` recorded, split by split
        (the first ``shown`` sample ids gone and new); empty where it is the same."""
        now = self.identity()
        if now["digest"] == recorded.get("digest"):
            return []
        changes = []
        for name in self.splits:
            before, after = set(recorded.get("ids", {}).get(name, [])), set(now["ids"][name])
            moved = [
                f"{len(ids)} {what} ({_first_names(ids, shown)})"
                for what, ids in (("gone", before - after), ("new", after - before))
                if ids
            ]
            if moved:
                changes.append(f"{name}: {', '.join(moved)}")
        return changes or ["the same images, other labels or masks used"]


def _first_names(ids: set[str], shown: int) -> str:
    names = sorted(ids)
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def write_split_csv(
    path: Path | str, splits: dict[str, list[Sample]], segmented_ids: frozenset[str] | None = None
) -> None:
    """Record a split so a run can be reproduced exactly (and inspected in a spreadsheet,
    where every name is UTF-8).
    A training positive outside ``segmented_ids`` (where given) trains without its mask, and
    is recorded so. File names are written as their bytes, so that a name that is not UTF-8
    reads back as it was (crackseg.atomic.atomic_write_csv)."""

    def row(name: str, s: Sample) -> list[object]:
        weak = (
            segmented_ids is not None
            and name == "train"
            and s.is_positive
            and s.sample_id not in segmented_ids
        )
        mask = None if weak else s.mask_path
        return [
            name,
            s.sample_id,
            int(s.is_positive),
            int(mask is not None),
            str(s.image_path),
            "" if mask is None else str(mask),
        ]

    rows = (row(name, s) for name, samples in splits.items() for s in samples)
    atomic_write_csv(path, CSV_COLUMNS, rows, names_as_bytes=True)


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-empty rows (with their line numbers) of a split file."""
    if path.suffix == ".pyb":
        raise DataError(
            f"split file {path} is a published split (a pickle): convert it to a split file "
            "with crackseg-data import-split"
        )
    try:
        # A name that is not UTF-8 comes back as the file system's name (write_split_csv).
        # utf-8-sig: a byte-order mark (a spreadsheet's CSV) is not part of the first column.
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from exc
    except csv.Error as exc:
        raise DataError(f"split file {path} is not a CSV file: {exc}") from exc
    if not rows:
        raise DataError(f"split file {path} is empty")
    header = [c.strip() for c in rows[0]]
    if "split" not in header or "sample_id" not in header:
        raise DataError(
            f"split file {path} lacks the columns split and sample_id (header: {rows[0]})"
        )
    body = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"split file {path}, line {line_no}: {len(row)} fields, expected {len(header)}"
            )
        body.append((line_no, row))
    return header, body


def read_split_csv(path: Path | str) -> dict[str, list[str]]:
    """Read the ids per split from a file written by :func:`write_split_csv`, as written: a
    file name may begin or end with a space (a file typed by hand with spaces after its
    commas is matched without them, :func:`_splits_from_file`)."""
    path = Path(path)
    header, rows = _read_rows(path)
    col_split, col_id = header.index("split"), header.index("sample_id")
    result: dict[str, list[str]] = {}
    seen: set[str] = set()
    for line_no, row in rows:
        split, sample_id = row[col_split].strip(), row[col_id]
        if split not in SPLITS:
            raise DataError(
                f"split file {path}, line {line_no}: unknown split {split!r} "
                "(expected train, val or test)"
            )
        if not sample_id.strip():
            raise DataError(f"split file {path}, line {line_no}: empty sample_id")
        if sample_id in seen:
            raise DataError(f"split file {path}, line {line_no}: sample {sample_id!r} repeated")
        seen.add(sample_id)
        result.setdefault(split, []).append(sample_id)
    return result


def read_split_images(path: Path | str) -> dict[str, list[str]]:
    """The image files of each split of a file written by :func:`write_split_csv`, as
    written; none without an ``image`` column (a split file typed by hand)."""
    header, rows = _read_rows(Path(path))
    if "image" not in header:
        return {}
    col_split, col_image = header.index("split"), header.index("image")
    result: dict[str, list[str]] = {}
    for _, row in rows:
        result.setdefault(row[col_split].strip(), []).append(row[col_image])
    return result


def read_segmented_flags(path: Path | str) -> dict[str, bool] | None:
    """``sample_id -> segmented`` of the training rows; None without a ``segmented`` column."""
    path = Path(path)
    header, rows = _read_rows(path)
    if "segmented" not in header:
        return None
    col_split, col_id, col_flag = (header.index(c) for c in ("split", "sample_id", "segmented"))
    flags = {}
    for line_no, row in rows:
        if row[col_split].strip() != "train":
            continue
        flag = row[col_flag].strip()
        if flag not in ("0", "1"):
            raise DataError(
                f"split file {path}, line {line_no}: segmented must be 0 or 1, not {flag!r}"
            )
        flags[row[col_id]] = flag == "1"  # as written, and without spaces typed around it
        flags.setdefault(row[col_id].strip(), flag == "1")
    return flags
