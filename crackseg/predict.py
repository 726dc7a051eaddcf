"""``crackseg-predict ckpt_path=... input=PATH``: find and measure cracks in photographs."""

from __future__ import annotations

import contextlib
import csv
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

    counts, scored = predict_folder(settings, images, Path(cfg.paths.output_dir))
    if scored and settings.ckpt_path is not None:  # those of the mean Dice
        from crackseg.runs.trained_settings import warn_of_images_trained_on

        warn_of_images_trained_on(settings.ckpt_path, scored)
    elif scored:
        log.info("an exported model records no training images: none of these is known as one")
    return counts


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
