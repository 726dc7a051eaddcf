"""``crackseg-predict``: photographs in; maps, masks, overlays and crack measurements out.

Per image, at its own resolution: ``probabilities/NAME.png`` (crack probability, 0..255),
``masks/NAME.png`` (255 where the probability reaches the segmentation threshold: the
model's, or ``segmentation_threshold``)
and ``overlays/NAME.png`` (the photo with the mask tinted red), ``NAME`` being the input's
file name with its extension (``x.jpg`` -> ``masks/x.jpg.png``), so no two inputs share an
output. ``predictions.csv`` has one row per image, ``cracks.csv`` one per crack.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from crackseg.atomic import atomic_write_csv, atomic_write_png
from crackseg.data.io import (
    is_image_file,
    looks_like_a_photograph,
    read_image,
    read_mask,
    warn_of_masks_like_photographs,
)
from crackseg.data.labels import binarize
from crackseg.data.layouts import files_by_stem
from crackseg.deploy.backends import ModelInfo, open_backend
from crackseg.deploy.measure import Crack, measure_cracks, summarise
from crackseg.deploy.outputs import CRACKS_TABLE, PREDICTIONS_TABLE, overlay, probability_image
from crackseg.deploy.predictor import ImagePrediction, predict_images
from crackseg.deploy.settings import PredictSettings, refuse_tiles_beyond_every_image
from crackseg.errors import DataError, describe_files, plural
from crackseg.evaluation.metrics import score_text

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = [
    "file",
    "width",
    "height",
    "decision_score",
    "decision",
    "crack_fraction",
    "cracks",
    "total_length_px",
    "max_width_px",
    "mean_width_px",
]
#: Added with ``reference_masks``: the predicted mask against the image's ground truth.
REFERENCE_COLUMNS = ["dice", "iou"]
CRACK_COLUMNS = [
    "file",
    "crack",
    "pixels",
    "length_px",
    "mean_width_px",
    "max_width_px",
    "x",
    "y",
    "box_width",
    "box_height",
]
#: Added when ``pixel_size_mm`` is given: the pixel columns above, in millimetres.
PREDICTION_MM_COLUMNS = ["total_length_mm", "max_width_mm", "mean_width_mm"]
CRACK_MM_COLUMNS = ["length_mm", "mean_width_mm", "max_width_mm"]
#: The tables of the images done are written again at least this often while a folder is
#: predicted, so that a process killed outright (out of memory, SIGKILL) leaves them.
TABLES_EVERY_S = 60.0


def reference_masks(folder: str | None) -> dict[str, Path]:
    """Ground-truth masks by file stem (``reference_masks=DIR``), or none; two masks of one
    stem (``x.png``, ``x.bmp``) are refused, as ``x.jpg``'s would be either."""
    if folder is None:
        return {}
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "a file, not a folder of masks" if root.exists() else "no such folder"
        raise DataError(f"reference_masks={root}: {what}")
    return files_by_stem(p for p in sorted(root.iterdir()) if p.is_file() and is_image_file(p))


def dice_iou(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty is a perfect answer (1, 1)."""
    intersection = np.count_nonzero(predicted & reference)
    total = np.count_nonzero(predicted) + np.count_nonzero(reference)
    if total == 0:
        return 1.0, 1.0
    return 2 * intersection / total, intersection / (total - intersection)


class ImageResult(NamedTuple):
    """One image's rows: of ``predictions.csv``, of ``cracks.csv`` (one per crack), and its
    Dice against its reference mask where that marks a crack pixel (an empty one scores 1
    or 0 whatever the image holds, so the mean leaves it out, as evaluation does)."""

    path: Path
    row: list[Any]
    crack_rows: list[list[Any]]
    dice: float | None


class ResultWriter:
    """Writes each image's files as soon as it is predicted and keeps its table rows."""

    def __init__(self, output_dir: Path, settings: PredictSettings, info: ModelInfo) -> None:
        self.output_dir = output_dir
        self.settings = settings
        self.image_threshold = settings.image_threshold(info)
        self.seg_threshold = settings.pixel_threshold(info)
        self.references = reference_masks(settings.reference_masks)
        #: Images without a usable reference mask, by why: their Dice and IoU cells are empty.
        self.unusable: Counter[str] = Counter()
        #: Reference masks with the grey levels of a photograph, said once at the end.
        self.photograph_references: list[str] = []
        self.results: list[ImageResult] = []

    @property
    def image_rows(self) -> list[list[Any]]:
        return [result.row for result in self.results]

    @property
    def crack_rows(self) -> list[list[Any]]:
        return [row for result in self.results for row in result.crack_rows]

    @property
    def dices(self) -> list[float]:
        return [result.dice for result in self.results if result.dice is not None]

    @property
    def scored(self) -> list[Path]:
        """The images of the mean Dice."""
        return [result.path for result in self.results if result.dice is not None]

    def add(self, path: Path, image: np.ndarray, prediction: ImagePrediction) -> None:
        """The image's files, then its rows, as one: stopped on the way (Ctrl-C, SIGTERM, a
        full disk), it takes back the files it wrote, so every image whose files a stopped
        prediction keeps has its rows in the tables written then."""
        name = f"{path.name}.png"
        mask = prediction.probabilities >= self.seg_threshold
        result = self._result(path, mask, prediction.score)
        outputs = {"probabilities": probability_image(prediction.probabilities)}
        outputs["masks"] = mask.astype(np.uint8) * 255
        if self.settings.overlays:
            outputs["overlays"] = overlay(image, mask)
        written: list[Path] = []
        try:
            for folder, pixels in outputs.items():
                written.append(self.output_dir / folder / name)
                atomic_write_png(written[-1], pixels)
            self.results.append(result)
        except BaseException:
            if not (self.results and self.results[-1] is result):
                for target in written:
                    target.unlink(missing_ok=True)
            raise

    def _result(self, path: Path, mask: np.ndarray, score: float) -> ImageResult:
        cracks = measure_cracks(mask, self.settings.min_crack_pixels)
        row, crack_rows = self._rows(path.name, mask, score, cracks)
        dice = None
        if self.settings.reference_masks is not None:
            cells, dice = self._against_reference(path, mask)
            row += cells
        return ImageResult(path, row, crack_rows, dice)

    def _against_reference(self, path: Path, mask: np.ndarray) -> tuple[list[str], float | None]:
        """The image's Dice and IoU cells, and its Dice for the mean: None without a usable
        reference, or where the reference marks no crack."""
        reference = self.references.get(path.stem)
        if reference is None:
            log.warning("no reference mask for %s in %s", path.name, self.settings.reference_masks)
            self.unusable["without one"] += 1
            return ["", ""], None
        try:
            reference_mask = read_mask(reference)
        except DataError as error:  # one unreadable reference costs its cells, not the run
            log.warning("reference mask %s is unreadable: %s", reference, error)
            self.unusable["whose mask is unreadable"] += 1
            return ["", ""], None
        if looks_like_a_photograph(reference_mask):  # named once, at the end
            self.photograph_references.append(str(reference))
        truth = binarize(reference_mask)
        if truth.shape != mask.shape:
            log.warning(
                "reference mask %s is not its image's size (%dx%d, image %dx%d)",
                reference,
                *truth.shape,
                *mask.shape,
            )
            self.unusable["whose mask is not its size"] += 1
            return ["", ""], None
        dice, iou = dice_iou(mask, truth)
        return [f"{dice:.6f}", f"{iou:.6f}"], dice if truth.any() else None

    def _mm(self, values: list[float]) -> list[str]:
        """In millimetres, to the pixel columns' hundredth of a pixel (3 decimals at least):
        6 at 0.0004 mm a pixel, where 3 would print a one-pixel crack's width as 0.000."""
        size = self.settings.pixel_size_mm
        if size is None:
            return []
        decimals = max(3, 2 - math.floor(math.log10(size)))
        return [f"{v * size:.{decimals}f}" for v in values]

    def _rows(
        self, name: str, mask: np.ndarray, score: float, cracks: list[Crack]
    ) -> tuple[list[Any], list[list[Any]]]:
        """The image's row of ``predictions.csv`` and its cracks' rows of ``cracks.csv``."""
        height, width = mask.shape
        summary = summarise(cracks)
        sizes = [summary.total_length, summary.max_width, summary.mean_width]
        row = [
            name,
            width,
            height,
            score_text(score),
            int(score >= self.image_threshold),
            f"{np.count_nonzero(mask) / mask.size:.6f}",
            summary.count,
            *(f"{v:.2f}" for v in sizes),
            *self._mm(sizes),
        ]
        crack_rows = []
        for number, crack in enumerate(cracks, start=1):
            sizes = [crack.length, crack.mean_width, crack.max_width]
            crack_rows.append(
                [
                    name,
                    number,
                    crack.pixels,
                    *(f"{v:.2f}" for v in sizes),
                    crack.x,
                    crack.y,
                    crack.box_width,
                    crack.box_height,
                    *self._mm(sizes),
                ]
            )
        return row, crack_rows

    def write_tables(self) -> None:
        millimetres = self.settings.pixel_size_mm is not None
        references = REFERENCE_COLUMNS if self.settings.reference_masks is not None else []
        atomic_write_csv(
            self.output_dir / PREDICTIONS_TABLE,
            PREDICTION_COLUMNS + (PREDICTION_MM_COLUMNS if millimetres else []) + references,
            self.image_rows,
        )
        atomic_write_csv(
            self.output_dir / CRACKS_TABLE,
            CRACK_COLUMNS + (CRACK_MM_COLUMNS if millimetres else []),
            self.crack_rows,
        )


def _read_for_prediction(
    paths: list[Path], channels: int, skipped: dict[Path, str], progress: tqdm
) -> Iterator[tuple[tuple[Path, np.ndarray], np.ndarray]]:
    """Read each image for :func:`predict_images`, keyed by ``(path, image)`` so that each
    prediction comes back with its image; an unreadable file is logged, kept in ``skipped``
    with the reason, for a run that reads none to say why, and counted on the progress bar."""
    for path in paths:
        try:
            image = read_image(path, channels)
        except DataError as error:
            if len(paths) > 1:  # the only one: its error line says it
                log.warning("skipping an unreadable image: %s", error)
            skipped[path] = str(error)
            progress.update()
            continue
        yield (path, image), image


#: Per threshold a validation could not choose: why, and the setting that gives one.
_STAND_IN = {
    "image": (
        "its validation split held images of one class only or a score that is not a "
        "number, or its checkpoint was saved without it",
        "decision_threshold",
    ),
    "segmentation": (
        "no validation positive had a mask pixel, or its checkpoint was saved without it",
        "segmentation_threshold",
    ),
}


def warn_of_stand_in_thresholds(settings: PredictSettings, info: ModelInfo) -> None:
    """The model's thresholds that no validation chose (0.5 standing in), unless set."""
    given = {"image": settings.decision_threshold, "segmentation": settings.segmentation_threshold}
    for name in info.stand_in_thresholds:
        if name in _STAND_IN and given[name] is None:
            why, setting = _STAND_IN[name]
            log.warning(
                "the model's %s threshold, 0.5, was chosen by nobody: %s (%s= sets one)",
                name,
                why,
                setting,
            )


class FolderPrediction(NamedTuple):
    """A prediction's counts (images, unreadable, cracks, and the mean Dice where reference
    masks gave one), and the images that mean is over."""

    counts: dict[str, Any]
    scored: list[Path]


def predict_folder(
    settings: PredictSettings, paths: list[Path], output_dir: Path
) -> FolderPrediction:
    """Predict the images ``paths`` of ``settings.input`` into ``output_dir`` (both checked
    by :func:`~crackseg.deploy.settings.checked_prediction`)."""
    source = Path(settings.input).expanduser()
    backend = open_backend(settings)
    info = backend.info
    plan = settings.plan(info, settings.ckpt_path or settings.onnx_path or "the model")
    refuse_tiles_beyond_every_image(plan, info, paths)
    log.info(
        "%s, %s mode at %dx%d, image threshold %.4f, segmentation threshold %.4f",
        plural(len(paths), "image"),
        plan.mode,
        plan.tile_height,
        plan.tile_width,
        settings.image_threshold(info),
        settings.pixel_threshold(info),
    )
    warn_of_stand_in_thresholds(settings, info)
    if settings.segmentation_threshold is None and info.seg_threshold == 0:
        log.warning(
            "the model's segmentation threshold, chosen on its validation split, is 0: every "
            "pixel reaches it and each mask marks the whole image (its segmentation head had "
            "not learned yet; segmentation_threshold= sets another)"
        )
    writer = ResultWriter(output_dir, settings, info)
    skipped: dict[Path, str] = {}
    with tqdm(total=len(paths), desc="predicting", unit="image") as progress:
        images = _read_for_prediction(paths, info.input_channels, skipped, progress)
        written = time.monotonic()
        try:
            for (path, image), prediction in predict_images(images, backend, plan):
                writer.add(path, image, prediction)
                progress.update()
                if time.monotonic() - written >= TABLES_EVERY_S:
                    writer.write_tables()
                    written = time.monotonic()
        except BaseException:  # Ctrl-C, SIGTERM (run_task turns it into Ctrl-C), a failure
            if writer.results:  # the tables of the images done, as a finished run's
                try:
                    writer.write_tables()
                except Exception as error:  # the first failure is the one to report
                    log.warning("the tables of the images done were not written: %s", error)
            raise
    if not writer.results:
        reason = next(iter(skipped.values()))  # it names its file
        if len(paths) == 1:
            raise DataError(reason)
        raise DataError(
            f"none of the {len(paths)} images in {source} could be read (the first: {reason}): "
            f"{describe_files(list(skipped))}"
        )
    writer.write_tables()
    predicted = len(writer.results)
    if skipped:
        unreadable = plural(len(skipped), "unreadable image")
        log.warning("skipped %s: %s", unreadable, describe_files(list(skipped)))
    log.info(
        "predicted %s into %s (%d unreadable, skipped)",
        plural(predicted, "image"),
        output_dir,
        len(skipped),
    )
    warn_of_masks_like_photographs(writer.photograph_references)
    counts = {"images": predicted, "unreadable": len(skipped), "cracks": len(writer.crack_rows)}
    if writer.dices:
        counts["dice_mean"] = float(np.mean(writer.dices))
        log.info(
            "mean Dice against the reference masks: %.4f over the %s whose mask marks a crack",
            counts["dice_mean"],
            plural(len(writer.dices), "image"),
        )
    elif settings.reference_masks is not None and sum(writer.unusable.values()) == predicted:
        log.warning(  # each image was named in a warning of its own, many lines above
            "the dice and iou columns of predictions.csv are empty: no image has a usable mask "
            "in reference_masks=%s (%s)",
            settings.reference_masks,
            ", ".join(f"{plural(n, 'image')} {why}" for why, n in writer.unusable.items()),
        )
    return FolderPrediction(counts, writer.scored)
