"""``crackseg-predict ckpt_path=... input=PATH``: find and measure cracks in photographs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main
from crackseg.runs.lifecycle import run_task
from crackseg.runs.ownership import accept_folder_of_its_own
from crackseg.runs.threads import set_job_threads


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict into a folder of its own: never one holding a run or another prediction."""
    # Imported in steps: OpenCV once Hydra accepted the command line, torch (a second to
    # load) once the settings, the model file and the input are.
    from crackseg.deploy.settings import checked_prediction

    accept_folder_of_its_own(cfg.paths.output_dir)
    settings, images = checked_prediction(cfg)
    set_job_threads(cfg)
    from crackseg.deploy.predict_folder import predict_folder

    return predict_folder(settings, images, Path(cfg.paths.output_dir))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def hydra_main(cfg: DictConfig) -> float | None:
    output_dir = cfg.paths.output_dir
    stopped_message = (
        f"the predictions made so far are in {output_dir}; predict the rest into another folder"
    )
    return run_task(predict, cfg, objective="", stopped_message=stopped_message)


def main() -> None:
    run_hydra_main(hydra_main)


if __name__ == "__main__":
    main()
