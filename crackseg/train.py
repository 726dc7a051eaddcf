"""``crackseg-train``: compose the config, train, test, report."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import info_said_once_accepted, run_hydra_main
from crackseg.run_files import SPLIT_FILE
from crackseg.runs.config_checks import check_config, refuse_extra_count_without_ranking
from crackseg.runs.hydra_run import typed_overrides
from crackseg.runs.lifecycle import run_task, split_data_now
from crackseg.runs.resume import (
    check_resumed_data,
    record_start,
    recorded_run_config,
    start_training_run,
)
from crackseg.runs.threads import set_job_threads
from crackseg.setting_rules import check_required

if TYPE_CHECKING:
    from crackseg.data.datamodule import CrackDataModule

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, pick the evaluated weights, choose the thresholds on validation, test, report.

    A stopped run continues from its newest checkpoint (``resume=``, crackseg.runs.resume).
    """
    with info_said_once_accepted():  # a refused run says its error alone
        cfg, checkpoint = start_training_run(cfg)  # the run folder: a new run, or one resumed
        check_config(cfg)
        if checkpoint is None:  # (a run started so before the check continues as it began)
            refuse_extra_count_without_ranking(cfg, typed_overrides())
        check_required(cfg, ("data.root",))
        from crackseg.data.layouts import check_config_data_found  # loads OpenCV: not sooner

        check_config_data_found(cfg.data)
    set_job_threads(cfg)
    # Lightning is imported from here on (seconds of CPU): a command line refused before
    # never waits for it.
    from crackseg.data.datamodule import CrackDataModule

    datamodule = CrackDataModule.from_config(cfg.data, cfg.loss)
    if checkpoint is not None:  # refused on data changed since, before the run records more
        check_resumed_data(datamodule, checkpoint)
    else:
        split_data_now(datamodule, "fit")
    record_start(cfg, checkpoint)
    return fit_and_test(cfg, datamodule, checkpoint)


def fit_and_test(
    cfg: DictConfig, datamodule: CrackDataModule, checkpoint: Path | None
) -> dict[str, Any]:
    """The run itself, once its folder, config and data are accepted."""
    import pytorch_lightning as pl

    from crackseg.callbacks import EvaluationReport
    from crackseg.models.lit_segdec import SegDecModule
    from crackseg.runs.trainer import build_trainer, stop_if_signalled, validate_chosen_weights

    pl.seed_everything(cfg.seed, workers=True)

    module = SegDecModule.from_config(cfg, run_config=recorded_run_config(cfg))
    output_dir = Path(cfg.paths.output_dir)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    callbacks.append(EvaluationReport(str(output_dir), cfg.num_dice_panels, cfg, cfg.report_title))
    trainer = build_trainer(cfg, callbacks, resume_from=checkpoint)

    if checkpoint is not None:  # a resumed run finds its own checkpoints in checkpoints/
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    stop_if_signalled(trainer)
    if trainer.is_global_zero:
        datamodule.data_split.save(output_dir / SPLIT_FILE)
    # The best weights by validation AP (or the final ones); validating them sets the thresholds.
    if cfg.use_best_model and not cfg.validate:
        log.warning("use_best_model: no validation chose best weights (validate=false)")
    validate_chosen_weights(
        trainer, module, datamodule, use_best=cfg.use_best_model and cfg.validate
    )
    trainer.test(module, datamodule=datamodule, verbose=False)  # writes metrics and report.md
    return module.test_results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


def main() -> None:
    run_hydra_main(hydra_main, "train")


if __name__ == "__main__":
    main()
