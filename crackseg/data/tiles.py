"""Tiling large annotated photographs into fixed-size training tiles in the
crack_segmentation layout (crack-free tiles named ``noncrack_*``): ``crackseg-data tile``,
and ``data.tile`` of a run, whose tiles are made once and reused (:func:`prepare_tiles`).

A tile is a crack when it holds at least ``min_crack_pixels`` crack pixels and crack-free
when it holds none; one in between is neither and left out. With fractions, whole
photographs go to train, validation or test, so no photograph feeds two splits.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from crackseg.atomic import (
    atomic_write_csv,
    encode_png,
    folder_built_beside,
    folder_destination,
    remove_abandoned_builds,
)
from crackseg.data.data_settings import BINARIZE_THRESHOLD
from crackseg.data.io import (
    image_size,
    looks_like_a_photograph,
    map_threads,
    read_mask,
    read_native,
    warn_of_masks_like_photographs,
)
from crackseg.data.labels import binarize
from crackseg.data.layouts import check_data_found, index_layout
from crackseg.data.samples import TILE_GROUPS_FILE, Sample
from crackseg.data.splits import (
    read_split_images,
    set_table,
    split_by_source,
    write_split_csv,
)
from crackseg.errors import ConfigError, DataError, describe_files, plural

log = logging.getLogger(__name__)

SOURCE_SPLIT_FILE = "source_split.csv"
#: How the tiles are named that the crack_segmentation layout reads as crack-free.
NEGATIVE_TILE_PREFIX = "noncrack"


def _tile_starts(length: int, size: int, stride: int, pad: bool) -> tuple[list[int], int]:
    """Tile offsets along one axis and the padding needed after the end."""
    if pad:
        count = math.ceil(max(length - size, 0) / stride) + 1
        return [i * stride for i in range(count)], (count - 1) * stride + size - length
    if length < size:
        return [], 0
    return list(range(0, length - size + 1, stride)), 0


def _write_png(path: Path, array: np.ndarray) -> None:
    # Not atomic file by file: a dataset is built in a hidden folder renamed into place whole.
    path.write_bytes(encode_png(array))


def tile_names(samples: list[Sample]) -> list[str]:
    """The name each photograph gives its tiles: its file's stem, or its sample id where two
    photographs tiled into one folder share a stem (``Part0.jpg`` in every KolektorSDD
    folder), whose tiles would overwrite each other."""
    stems = [Path(sample.image_path).stem for sample in samples]
    return stems if len(set(stems)) == len(stems) else [s.sample_id for s in samples]


class TiledPhoto(NamedTuple):
    """What became of one photograph's tiles."""

    #: each tile's label: crack, crack-free, or None for a tile left out (nothing written)
    labels: list[bool | None]
    #: a crack photograph whose mask marks no crack: not tiled, as no tile of it can be told
    #: crack or crack-free (a run trains it as a weak positive, on its image label)
    unmarked_crack: bool = False
    #: a crack-free photograph whose mask marks cracks: its tiles are crack-free, as a run
    #: keeps such an image a negative
    marked_negative: bool = False
    #: its mask has the grey levels of a photograph (crackseg.data.io.looks_like_a_photograph)
    mask_like_photograph: bool = False


def tile_sample(
    sample: Sample,
    name: str,
    out_dir: Path,
    size: int,
    stride: int,
    min_crack_pixels: int,
    pad: bool = False,
    binarize_threshold: int = BINARIZE_THRESHOLD,
) -> TiledPhoto:
    """Write one photograph's tiles to ``out_dir/{images,masks}`` as ``NAME_rR_cC.png``.

    A tile with at least ``min_crack_pixels`` crack pixels is a positive, one without any is
    a negative. A tile in between (a stray end of a crack) is neither: labelled negative it
    would teach that a visible crack is clean, so it is left out (label None, nothing written).
    The photograph's label wins over its mask, as in a run (crackseg.data.layouts.
    check_samples): a crack photograph whose mask is empty gives no tile, a crack-free one
    only crack-free tiles.
    """
    image = read_native(sample.image_path)
    height, width = image.shape[:2]
    if sample.mask_path is None:
        mask = np.zeros((height, width), np.uint8)
    else:
        mask = read_mask(sample.mask_path)
        if mask.shape != (height, width):
            raise DataError(
                f"mask size {mask.shape[0]}x{mask.shape[1]} differs from image "
                f"{height}x{width}: {sample.mask_path}"
            )
    photograph = looks_like_a_photograph(mask)
    mask = np.where(binarize(mask, binarize_threshold), 255, 0).astype(np.uint8)
    marked = bool(mask.any())
    if sample.is_positive and not marked:
        return TiledPhoto([], unmarked_crack=True, mask_like_photograph=photograph)
    if not sample.is_positive and marked:
        mask[:] = 0
    rows, pad_h = _tile_starts(height, size, stride, pad)
    cols, pad_w = _tile_starts(width, size, stride, pad)
    if pad_h or pad_w:  # mirror, so no artificial black border appears in the tiles
        widths = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2)
        image = np.pad(image, widths, mode="symmetric")
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), mode="symmetric")
    labels: list[bool | None] = []
    for r, top in enumerate(rows):
        for c, left in enumerate(cols):
            tile_mask = mask[top : top + size, left : left + size]
            crack_pixels = int(np.count_nonzero(tile_mask))
            if 0 < crack_pixels < min_crack_pixels:
                labels.append(None)
                continue
            positive = crack_pixels > 0
            if positive and name.startswith(NEGATIVE_TILE_PREFIX):
                # read back as crack-free, and named as the clean tiles of photograph NAME
                raise DataError(
                    f"{sample.image_path} has cracks but its name starts with "
                    f"'{NEGATIVE_TILE_PREFIX}', which names the tiles without one: rename it"
                )
            tile_name = f"{name}_r{r}_c{c}.png"
            if not positive:
                tile_name = f"{NEGATIVE_TILE_PREFIX}_{tile_name}"
            _write_png(out_dir / "images" / tile_name, image[top : top + size, left : left + size])
            _write_png(out_dir / "masks" / tile_name, tile_mask)
            labels.append(positive)
    return TiledPhoto(
        labels, marked_negative=not sample.is_positive and marked, mask_like_photograph=photograph
    )


def tile_dataset(
    src: Path | str,
    dst: Path | str,
    size: int = 160,
    stride: int | None = None,
    layout: str = "crack_segmentation",
    min_crack_pixels: int = 20,
    pad: bool = False,
    test_fraction: float | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    **layout_options,
) -> dict[str, tuple[int, int]]:
    """Tile a dataset; return (positive, negative) tile counts per output split.

    With ``test_fraction`` (and ``val_fraction``) whole photographs go to train, val or
    test (stratified by the photograph's label), because tiles of one photograph are
    near-duplicates: splitting tiles at random would leak test content into training.
    """
    stride = size if stride is None else stride
    by_photo = {"val": val_fraction, "test": test_fraction}
    by_photo = {k: v for k, v in by_photo.items() if v is not None}
    _check_tiling(size, stride, min_crack_pixels, by_photo)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DataError(f"destination is not empty, refusing to write into it: {dst}")
    indexed = index_layout(layout, src, **layout_options)
    if by_photo:
        if set(indexed) != {"all"}:
            raise ConfigError(
                f"{src} already has splits ({', '.join(sorted(indexed))}); "
                "drop --test-fraction/--val-fraction to keep them"
            )
        fractions = {"train": 1.0 - sum(by_photo.values()), **by_photo}
        indexed = split_by_source(indexed["all"], fractions, seed)
    jobs: list[tuple[Sample, str, Path]] = []
    for split, samples in indexed.items():
        out_dir = dst if split == "all" else dst / split
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        jobs += [(s, name, out_dir) for s, name in zip(samples, tile_names(samples), strict=True)]
    if by_photo:
        write_split_csv(dst / SOURCE_SPLIT_FILE, indexed)
    if groups := [(name, s.group) for s, name, _ in jobs if s.group is not None]:
        atomic_write_csv(dst / TILE_GROUPS_FILE, ["photo", "group"], groups, names_as_bytes=True)

    threshold = layout_options.get("binarize_threshold", BINARIZE_THRESHOLD)

    def job(item: tuple[Sample, str, Path]) -> TiledPhoto:
        return tile_sample(*item, size, stride, min_crack_pixels, pad, threshold)

    tiled = map_threads(job, jobs, "tiling", unit="image", leave=True)
    _warn_label_and_mask_disagree([s for s, _, _ in jobs], tiled, threshold)
    results = [photo.labels for photo in tiled]
    counts: dict[str, list[int]] = {split: [0, 0] for split in indexed}
    for (_, _, out_dir), labels in zip(jobs, results, strict=True):
        split = "all" if out_dir == dst else out_dir.name
        counts[split][0] += labels.count(True)
        counts[split][1] += labels.count(False)
    ambiguous = sum(labels.count(None) for labels in results)
    skipped = sum(not photo.labels and not photo.unmarked_crack for photo in tiled)
    if jobs and all(photo.unmarked_crack for photo in tiled):
        raise DataError(
            f"no tile cut: every photograph is a crack photograph whose mask marks no crack "
            f"(no pixel > {threshold}): {describe_files([s.sample_id for s, _, _ in jobs])}"
        )
    if jobs and not any(photo.labels for photo in tiled):
        raise _no_tile(size, [sample for sample, _, _ in jobs])
    if skipped:
        log.warning("%s smaller than %d px, no tile (use --pad)", plural(skipped, "image"), size)
    if ambiguous:
        log.warning(
            "left out %s with 1 to %d crack pixels: neither crack nor clean "
            "(--min-crack-pixels 1 keeps them as cracks)",
            plural(ambiguous, "tile"),
            min_crack_pixels - 1,
        )
    return {split: (pos, neg) for split, (pos, neg) in counts.items()}


def _warn_label_and_mask_disagree(
    samples: list[Sample], tiled: list[TiledPhoto], binarize_threshold: int
) -> None:
    """Name the photographs whose label and mask disagree, and the masks that look like
    photographs, as a run's check does."""
    photographs = [
        str(s.mask_path)
        for s, photo in zip(samples, tiled, strict=True)
        if photo.mask_like_photograph
    ]
    warn_of_masks_like_photographs(photographs)
    unmarked = [
        s.sample_id for s, photo in zip(samples, tiled, strict=True) if photo.unmarked_crack
    ]
    if unmarked:
        log.warning(
            "%s with an empty mask (no pixel > %d), not tiled, as no tile of such a "
            "photograph can be told crack or crack-free: %s",
            plural(len(unmarked), "crack photograph"),
            binarize_threshold,
            describe_files(unmarked),
        )
    marked = [s.sample_id for s, photo in zip(samples, tiled, strict=True) if photo.marked_negative]
    if marked:
        log.warning(
            "%s with crack pixels in the mask, tiled as crack-free: %s",
            plural(len(marked), "crack-free photograph"),
            describe_files(marked),
        )


def _check_tiling(
    size: int, stride: int, min_crack_pixels: int, by_photo: dict[str, float]
) -> None:
    """Refuse tiling settings that cannot work, in the words of crackseg-data's options."""
    if size <= 0 or stride <= 0:
        raise ConfigError(f"tile size and stride must be positive, got {size} and {stride}")
    if min_crack_pixels < 1:
        raise ConfigError(f"--min-crack-pixels must be at least 1, got {min_crack_pixels}")
    for key, value in by_photo.items():
        if not 0.0 < value < 1.0:
            raise ConfigError(f"--{key}-fraction must be between 0 and 1, got {value}")
    if sum(by_photo.values()) >= 1.0:
        raise ConfigError("--val-fraction plus --test-fraction must be below 1")


def _no_tile(size: int, samples: list[Sample]) -> DataError:
    """Every image is smaller than a tile: an empty dataset would only fail later."""
    sizes = [image_size(sample.image_path) for sample in samples]
    high, wide = max(h for h, _ in sizes), max(w for _, w in sizes)
    return DataError(
        f"no tile cut: no image is {size}x{size} px or larger (the images are at most {high} "
        f"px high and {wide} px wide); use a smaller --size, or --pad to mirror-pad the images"
    )


#: Written last into a folder of tiles made for a data config: the tiling's parameters.
TILES_MARKER = "tiles.json"


def prepare_tiles(root: Path | str, source: Path | str, **tiling: Any) -> Path:
    """Tile the photographs in ``source`` into ``root`` once (``tile_dataset`` arguments).

    What a data config with ``tile:`` does before training: the same parameters find the
    tiles made before; other ones are refused rather than mixed in; a ``root`` holding a
    dataset made otherwise (``crackseg-data tile`` by hand) is used as it is. Tiles are cut into a
    hidden sibling folder renamed into place, so an interrupted run never looks complete and
    jobs of a sweep starting together do not tile twice into one folder.
    """
    root = folder_destination(root).absolute()
    source = Path(source).expanduser()
    params = {"source": str(source.resolve()), **tiling}
    marker = root / TILES_MARKER
    if marker.is_file():
        _check_tiles(root, params, source_found=source.is_dir())
        remove_abandoned_builds(root)  # a sweep's job killed cutting them
        return root
    if root.exists() and any(root.iterdir()):
        log.info("%s holds a dataset tiled before (no %s): used as it is", root, TILES_MARKER)
        return root
    check_data_found(root, source)  # the root holds nothing yet: the photographs must be there
    with folder_built_beside(root) as tmp:
        counts = tile_dataset(source, tmp, **tiling)
        (tmp / TILES_MARKER).write_text(json.dumps(params, indent=2) + "\n")
        try:
            tmp.rename(root)  # replaces an empty root in one step (POSIX rename)
        except OSError as error:
            if not marker.is_file():
                raise DataError(f"cannot move the tiles into {root}: {error.strerror}") from error
            _check_tiles(root, params, source_found=True)  # another job made the same tiles
            log.info("%s was tiled by another job meanwhile: used as it is", root)
            return root
    log.info("tiled %s into %s:\n%s", source, root, "\n".join(set_table(counts)))
    return root


def photographs_tiled_into(root: Path | str, split: str) -> list[Path]:
    """The photographs whose tiles make ``split`` of the tiles in ``root``, as its
    ``source_split.csv`` records them (a relative one from the folder the command runs in,
    as the tiling read it); none where the tiles were not split by photograph."""
    record = Path(root) / SOURCE_SPLIT_FILE
    if not record.is_file():
        return []
    return [Path(image) for image in read_split_images(record).get(split, [])]


def _check_tiles(root: Path, params: dict[str, Any], source_found: bool) -> None:
    """Refuse tiles in ``root`` made with other parameters than ``params``. Their source
    folder counts only where the one given now is there: tiles made before are used without
    their photographs (an evaluation where CRACKSEG_CFD_DIR is not set, a source moved)."""
    made = json.loads((root / TILES_MARKER).read_text())
    if not isinstance(made, dict):
        raise DataError(f"{root / TILES_MARKER} holds no tiling settings; cut the tiles again")
    keys = [k for k in {**made, **params} if source_found or k != "source"]
    changed = [
        f"{k}: {made.get(k, '-')} -> {params.get(k, '-')}"
        for k in keys
        if made.get(k) != params.get(k)
    ]
    if changed:
        raise DataError(
            f"{root} holds tiles made with other settings ({'; '.join(changed)}); use another "
            "data.root, or the settings they were made with"
        )
    if made.get("source") != params["source"]:  # a source mistyped, or not on this machine
        log.warning(
            "%s: tiles of %s, used without it (%s is not there)",
            root,
            made.get("source"),
            params["source"],
        )
