"""``crackseg-eval ckpt_path=...``: evaluate saved weights into a new run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crackseg import CONFIG_DIR
from crackseg.cli import run_hydra_main
from crackseg.models.checkpoint import (
    VALIDATED_CHECKPOINT,
    check_saved_thresholds,
    checkpoint_file,
    load_module,
    thresholds,
)
from crackseg.runs.config_checks import check_config
from crackseg.runs.hardware import check_accelerator
from crackseg.runs.hydra_run import override_key, typed_overrides
from crackseg.runs.lifecycle import run_task, split_data_now
from crackseg.runs.ownership import accept_folder_of_its_own
from crackseg.runs.threads import set_job_threads
from crackseg.runs.trained_settings import (
    freeze_epoch_count,
    refuse_model_settings,
    take_training_run_settings,
)
from crackseg.setting_rules import check_required

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate saved weights on a dataset exactly as a training run's test step does.

    The thresholds are the checkpoint's own (chosen on its training run's validation split);
    ``thresholds=validation`` re-chooses them on the validation split of the data given.
    ``trainer.precision=auto`` evaluates in the precision the weights were trained in.
    """
    output_dir = Path(cfg.paths.output_dir)
    accept_folder_of_its_own(output_dir, "eval")
    check_required(cfg)  # here, not before the sweep: a swept ckpt_path is ??? there
    typed = typed_keys()
    refuse_model_settings(typed)
    freeze_epoch_count(cfg)
    check_config(cfg)
    checkpoint_file(cfg.ckpt_path)  # all of it before torch loads (a second), from here on
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.get("devices", 1))
    set_job_threads(cfg)

    module = load_module(cfg.ckpt_path)  # Lightning is imported from here on, not before
    from crackseg.callbacks import EvaluationReport
    from crackseg.data.datamodule import CrackDataModule
    from crackseg.runs.trainer import build_trainer, stop_if_signalled
    from crackseg.runs.training_control import StopCheckpoint

    if cfg.thresholds == "checkpoint":
        remedy = f"evaluate it with thresholds=validation, or {VALIDATED_CHECKPOINT}"
        check_saved_thresholds(module, cfg.ckpt_path, remedy)
    weights_run = take_training_run_settings(cfg, module, typed)
    data = cfg.data
    datamodule = CrackDataModule.from_config(data)  # no loss: evaluation builds no weight map
    split_data_now(datamodule, "validate" if cfg.thresholds == "validation" else "test")
    report = EvaluationReport(
        str(output_dir),
        cfg.num_dice_panels,
        weights_run.reported,
        cfg.report_title,
        trained_here=False,
        training_split_rebuilt=weights_run.training_split_rebuilt,
        trained_images=weights_run.trained_images,
        evaluated={"evaluated_checkpoint": str(cfg.ckpt_path), "thresholds_from": cfg.thresholds},
    )
    # StopCheckpoint saves nothing here (there is no training): a SIGTERM stops the test
    # after its batch under way, the last one too, every DDP process together.
    trainer = build_trainer(cfg, [report, StopCheckpoint(str(output_dir))])

    if cfg.thresholds == "validation":
        trainer.validate(module, datamodule=datamodule, verbose=False)
        stop_if_signalled(trainer)
        module.best_val_image_ap = module.last_val_image_ap  # these weights' on this data
    image_threshold, seg_threshold = thresholds(module)
    chosen_on = "test" if data.get("validate_on_test", False) else "validation"
    log.info(
        "thresholds (%s): image %.4f, segmentation %.2f",
        f"chosen on this data's {chosen_on} split"
        if cfg.thresholds == "validation"
        else "the checkpoint's",
        image_threshold,
        seg_threshold,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)  # writes metrics and report.md
    return module.test_results


def typed_keys() -> set[str]:
    """The keys typed on the command line (none outside a Hydra run)."""
    return {override_key(o) for o in typed_overrides()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> float | None:
    stopped_message = "nothing to resume: evaluate again into another folder"
    return run_task(evaluate, cfg, stopped_message=stopped_message)


def main() -> None:
    run_hydra_main(hydra_main, "eval")


if __name__ == "__main__":
    main()
