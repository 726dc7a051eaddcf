"""``crackseg-predict ckpt_path=... input=PATH``: find and measure cracks in photographs."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main
from crackseg.runs.lifecycle import run_task
from crackseg.runs.ownership import accept_folder_of_its_own
from crackseg.runs.threads import set_job_threads

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict into a folder of its own: never one holding a run or another prediction."""
    # Imported in steps: OpenCV once Hydra accepted the command line, torch (a second to
    # load) once the settings, the model file and the input are.
    from crackseg.deploy.settings import checked_prediction

    accept_folder_of_its_own(cfg.paths.output_dir, "predict")
    settings, images = checked_prediction(cfg)
    set_job_threads(cfg)
    from crackseg.deploy.predict_folder import predict_folder

    counts = predict_folder(settings, images, Path(cfg.paths.output_dir))
    if "dice_mean" in counts and settings.ckpt_path is not None:
        warn_of_images_trained_on(settings.ckpt_path, images)
    return counts


def warn_of_images_trained_on(checkpoint: str, images: list[Path]) -> None:
    """A mean Dice over images the weights trained on (or over the photographs of the
    tiles they trained on), their files or copies of them, overstates them: said, with how
    many. Copies are found by content among the training files of an image's size, each
    file read once; where the training files cannot be listed, nothing is said."""
    from crackseg.errors import CracksegError, describe_files
    from crackseg.runs.trained_settings import trained_image_files

    try:
        trained = trained_image_files(checkpoint)
    except (CracksegError, OSError) as error:  # the predictions are made: they stand
        log.debug("the images %s trained on are not known: %s", checkpoint, error)
        return
    by_size: dict[int, list[Path]] = {}
    for path in trained:
        with contextlib.suppress(OSError):  # not here: it cannot be a copy of an image here
            by_size.setdefault(path.stat().st_size, []).append(path)

    @functools.cache
    def digest(path: Path) -> str:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    def trained_on(image: Path) -> bool:  # the file, or a copy of it
        try:
            if image.resolve() in trained:
                return True
            twins = by_size.get(image.stat().st_size, [])
            return bool(twins) and digest(image) in {digest(twin) for twin in twins}
        except OSError:  # gone since it was predicted
            return False

    if seen := [path for path in images if trained_on(path)]:
        log.warning(
            "%d of the %d images are images the weights trained on, or photographs of tiles "
            "they trained on (%s): the mean Dice over those with reference masks overstates "
            "the weights",
            len(seen),
            len(images),
            describe_files([path.name for path in seen]),
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def hydra_main(cfg: DictConfig) -> float | None:
    output_dir = Path(cfg.paths.output_dir)
    return run_task(predict, cfg, objective="", stopped_message=lambda: _stopped(output_dir))


def _stopped(output_dir: Path) -> str:
    """What a prediction stopped by Ctrl-C or SIGTERM left, and how to go on."""
    from crackseg.deploy.outputs import PREDICTIONS_TABLE
    from crackseg.errors import plural

    table = output_dir / PREDICTIONS_TABLE
    with contextlib.suppress(OSError), table.open(newline="", errors="surrogateescape") as rows:
        if done := sum(1 for _ in csv.reader(rows)) - 1:  # (its header)
            return (
                f"the predictions of {plural(done, 'image')} made so far are in {output_dir}; "
                "predict the rest into another folder"
            )
    return "no image was predicted yet: predict into another folder"


def main() -> None:
    run_hydra_main(hydra_main, "predict")


if __name__ == "__main__":
    main()
