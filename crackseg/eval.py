"""``crackseg-eval ckpt_path=...``: evaluate saved weights into a new run folder."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main, run_task
from crackseg.pipeline import evaluate_checkpoint


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> float | None:
    return run_task(evaluate_checkpoint, cfg)


def main() -> None:
    run_hydra_main(hydra_main)


if __name__ == "__main__":
    main()
