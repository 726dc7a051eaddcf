"""Train/validation/test splits: stratified, reproducible, and recorded in a CSV.

A split depends only on the sample ids, their labels, the fractions and the seed (never
on the order the file system lists files in), so the same command on another machine
gives the same split; ``split.csv`` pins it exactly when the data change.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from crackseg.atomic import atomic_path
from crackseg.data.samples import Sample
from crackseg.errors import ConfigError, DataError, describe_files

log = logging.getLogger(__name__)

CSV_COLUMNS = ("split", "sample_id", "label", "segmented", "image", "mask")


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
) -> dict[str, list[Sample]]:
    """Turn what the layout found on disk into train/val/test.

    - a split file: exactly the split it records (a run can be repeated after the data
      folder changed, or compared with another run on the same split);
    - only "all": a three-way stratified split;
    - train and test: validation carved from train (``val_fraction`` of train), so the
      test split the dataset defines is never touched;
    - train, val and test: used as they are.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if split_file is not None:
        return _splits_from_file(indexed, Path(split_file))
    keys = set(indexed)
    if keys == {"all"} or keys == {"train"}:
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}"
            )
        samples = next(iter(indexed.values()))
        fractions = {
            "train": 1.0 - val_fraction - test_fraction,
            "val": val_fraction,
            "test": test_fraction,
        }
        return stratified_split(samples, fractions, seed)
    if keys == {"train", "test"}:
        carved = stratified_split(
            indexed["train"], {"train": 1.0 - val_fraction, "val": val_fraction}, seed
        )
        return {"train": carved["train"], "val": carved["val"], "test": list(indexed["test"])}
    if keys == {"train", "val"}:
        carved = stratified_split(
            indexed["train"], {"train": 1.0 - test_fraction, "test": test_fraction}, seed
        )
        return {"train": carved["train"], "val": list(indexed["val"]), "test": carved["test"]}
    if keys == {"train", "val", "test"}:
        return {name: list(indexed[name]) for name in ("train", "val", "test")}
    raise DataError(
        f"cannot make train/val/test from the splits found on disk: {', '.join(sorted(keys))}"
    )


def _splits_from_file(indexed: dict[str, list[Sample]], path: Path) -> dict[str, list[Sample]]:
    by_id = {s.sample_id: s for samples in indexed.values() for s in samples}
    recorded = read_split_csv(path)
    missing = [i for ids in recorded.values() for i in ids if i not in by_id]
    if missing:
        raise DataError(
            f"split file {path} names samples not in the dataset: {describe_files(missing)}"
        )
    result = {name: [by_id[i] for i in recorded.get(name, [])] for name in ("train", "val", "test")}
    used = sum(len(v) for v in result.values())
    if used < len(by_id):
        log.warning(
            "split file %s uses %d of the %d samples found; the other %d are left out",
            path,
            used,
            len(by_id),
            len(by_id) - used,
        )
    return result


def write_split_csv(path: Path | str, splits: dict[str, list[Sample]]) -> None:
    """Record a split so a run can be reproduced exactly (and inspected in a spreadsheet)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for name, samples in splits.items():
            for s in samples:
                writer.writerow(
                    [
                        name,
                        s.sample_id,
                        int(s.is_positive),
                        int(s.mask_path is not None),
                        str(s.image_path),
                        "" if s.mask_path is None else str(s.mask_path),
                    ]
                )


def read_split_csv(path: Path | str) -> dict[str, list[str]]:
    """Read the ids per split from a file written by :func:`write_split_csv`."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"split file {path} is not a CSV file: {exc}") from exc
    if not rows:
        raise DataError(f"split file {path} is empty")
    header = [c.strip() for c in rows[0]]
    if "split" not in header or "sample_id" not in header:
        raise DataError(
            f"split file {path} lacks the columns split and sample_id (header: {rows[0]})"
        )
    col_split, col_id = header.index("split"), header.index("sample_id")
    result: dict[str, list[str]] = {}
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"split file {path}, line {line_no}: {len(row)} fields, expected {len(header)}"
            )
        split, sample_id = row[col_split].strip(), row[col_id].strip()
        if split not in ("train", "val", "test"):
            raise DataError(
                f"split file {path}, line {line_no}: unknown split {split!r} "
                "(expected train, val or test)"
            )
        if not sample_id:
            raise DataError(f"split file {path}, line {line_no}: empty sample_id")
        if sample_id in seen:
            raise DataError(f"split file {path}, line {line_no}: sample {sample_id!r} repeated")
        seen.add(sample_id)
        result.setdefault(split, []).append(sample_id)
    return result
