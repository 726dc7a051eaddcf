"""``crackseg-export ckpt_path=...``: the trained network as ONNX, checked against PyTorch."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main
from crackseg.models.checkpoint import checkpoint_file
from crackseg.runs.config_checks import check_config
from crackseg.runs.lifecycle import run_task
from crackseg.runs.ownership import accept_folder_of_its_own
from crackseg.runs.threads import set_job_threads
from crackseg.setting_rules import check_required


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export into a folder of its own: never one holding a run."""
    accept_folder_of_its_own(cfg.paths.output_dir)
    check_required(cfg)  # here, not before the sweep: a swept ckpt_path is ??? there
    checkpoint_file(cfg.ckpt_path)  # before check_config loads torch (a second)
    check_config(cfg)
    set_job_threads(cfg)
    from crackseg.deploy.onnx_export import export_checkpoint  # the network and onnx

    return export_checkpoint(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> float | None:
    stopped_message = "nothing to resume: export again into another folder"
    return run_task(export, cfg, objective="", stopped_message=stopped_message)


def main() -> None:
    run_hydra_main(hydra_main)


if __name__ == "__main__":
    main()
