"""``crackseg-predict ckpt_path=... input=PATH``: find and measure cracks in photographs."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main, run_task
from crackseg.deploy.pipeline import predict_folder


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def hydra_main(cfg: DictConfig) -> float | None:
    return run_task(predict_folder, cfg, objective="")


def main() -> None:
    run_hydra_main(hydra_main)


if __name__ == "__main__":
    main()
