"""``crackseg-export ckpt_path=...``: the trained network as ONNX, checked against PyTorch."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main, run_task
from crackseg.deploy.export import export_checkpoint


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> float | None:
    return run_task(export_checkpoint, cfg, objective="")


def main() -> None:
    run_hydra_main(hydra_main)


if __name__ == "__main__":
    main()
