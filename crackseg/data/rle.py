"""Run-length coded masks, as Severstal's ``train.csv`` stores them (docs/datasets.md).

``EncodedPixels`` holds pairs "start length ...": 1-based pixel numbers counted down the
columns (column-major) of the 256x1600 image. Every code is checked when the CSV is read, so a
malformed one fails before training with its file and line; a mask is decoded only when its
sample is loaded, so memory holds the codes (a few numbers an image), never the masks.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackseg.errors import DataError

#: Severstal's columns; every defect class counts as defect.
CSV_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")


def parse_runs(text: str, height: int, width: int, where: str) -> np.ndarray:
    """``"start length ..."`` -> int32 array of (0-based start, length) rows, checked.

    ``where`` names the file and line in the error of a malformed code.
    """
    fields = text.split()
    try:
        values = np.array([int(v) for v in fields], dtype=np.int64)
    except ValueError:
        bad = next(v for v in fields if not _is_int(v))
        raise DataError(f"{where}: EncodedPixels holds {bad!r}, not an integer") from None
    if values.size % 2:
        raise DataError(
            f"{where}: EncodedPixels holds {values.size} numbers, not start-length pairs"
        )
    runs = values.reshape(-1, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    pixels = height * width
    bad_start = (starts < 1) | (starts > pixels)
    bad_length = (lengths < 1) | (starts + lengths - 1 > pixels)
    if bad_start.any() or bad_length.any():
        i = int(np.flatnonzero(bad_start | bad_length)[0])
        raise DataError(
            f"{where}: run {int(starts[i])} {int(lengths[i])} lies outside the "
            f"{height}x{width} image (pixels 1..{pixels})"
        )
    return np.stack([starts - 1, lengths], axis=1).astype(np.int32)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def decode_runs(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(start, length) rows -> HxW uint8 mask, 255 on the runs (column-major numbering)."""
    flat = np.zeros(height * width, np.uint8)
    for start, length in runs:
        flat[start : start + length] = 255
    return np.ascontiguousarray(flat.reshape(width, height).T)


@dataclass(frozen=True, eq=False)
class RunLengthMask:
    """A mask kept as its checked codes, decoded on reading (``crackseg.data.io.read_mask``).

    Stands where other layouts have a mask file; printed, it names the CSV and its lines.
    """

    source: Path
    lines: tuple[int, ...]
    runs: np.ndarray = field(repr=False)
    height: int
    width: int

    def decode(self) -> np.ndarray:
        return decode_runs(self.runs, self.height, self.width)

    def __str__(self) -> str:
        lines = ",".join(str(n) for n in self.lines)
        return f"{self.source} line{'s' if len(self.lines) > 1 else ''} {lines}"


def read_run_length_csv(path: Path, height: int, width: int) -> dict[str, RunLengthMask]:
    """``ImageId -> RunLengthMask`` of every image with a defect in a Severstal CSV.

    Rows of one image (one per defect class) are joined; a row with empty EncodedPixels
    marks nothing. A malformed row raises DataError naming the file and its line.
    """
    try:
        # utf-8-sig: a byte-order mark (a CSV saved by a spreadsheet) is not part of a name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path} lacks {' and '.join(missing)} (expected the columns "
                    f"{', '.join(CSV_COLUMNS)}; header: {', '.join(header) or 'none'})"
                )
            col_id, col_runs = header.index("ImageId"), header.index("EncodedPixels")
            found: dict[str, tuple[list[int], list[np.ndarray]]] = {}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path}, line {line}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
                image_id = row[col_id].strip()
                if not image_id:
                    raise DataError(f"{where}: empty ImageId")
                runs = parse_runs(row[col_runs], height, width, f"{where} ({image_id})")
                if len(runs):
                    lines, parts = found.setdefault(image_id, ([], []))
                    lines.append(line)
                    parts.append(runs)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a CSV file: {exc}") from exc
    return {
        image_id: RunLengthMask(path, tuple(lines), np.concatenate(parts), height, width)
        for image_id, (lines, parts) in found.items()
    }
