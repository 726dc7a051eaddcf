"""``crackseg-export ckpt_path=...``: the trained network as ONNX, checked against PyTorch."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main
from crackseg.runs.config_checks import check_config
from crackseg.runs.lifecycle import run_task
from crackseg.runs.ownership import accept_folder_of_its_own
from crackseg.runs.threads import set_job_threads
from crackseg.setting_rules import check_required


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export into a folder of its own: never one holding a run."""
    from crackseg.deploy.settings import checked_export  # loads OpenCV: not sooner

    accept_folder_of_its_own(cfg.paths.output_dir, "export")
    check_required(cfg)  # here, not before the sweep: a swept ckpt_path is ??? there
    check_config(cfg)
    check_images = checked_export(cfg)
    set_job_threads(cfg)
    # Imported once the command is accepted: torch takes a second to load, which a command
    # refused for its settings or its files never waits for.
    from crackseg.deploy.onnx_export import export_checkpoint

    return export_checkpoint(cfg, check_images)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> float | None:
    stopped_message = "nothing to resume: export again into another folder"
    return run_task(export, cfg, objective="", stopped_message=stopped_message)


def main() -> None:
    run_hydra_main(hydra_main, "export")


if __name__ == "__main__":
    main()
