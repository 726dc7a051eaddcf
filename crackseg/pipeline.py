"""What ``crackseg-train`` and ``crackseg-eval`` do, given a composed config."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from crackseg.atomic import AtomicCheckpointIO
from crackseg.callbacks import EvaluationReport, ValidateOnLastEpoch
from crackseg.config_checks import check_config
from crackseg.cpu_share import ShareCoresWithOtherRuns
from crackseg.data.datamodule import CrackDataModule
from crackseg.errors import ConfigError, CracksegError
from crackseg.evaluation.report import (
    dataset_table_from_counts,
    run_parameters_from_config,
    write_report,
)
from crackseg.hardware import check_accelerator, resolve_precision
from crackseg.models.checkpoint import load_module, thresholds
from crackseg.models.lit_segdec import SegDecModule
from crackseg.progress import progress_callbacks
from crackseg.run_folder import (
    checkpoint_step,
    hydra_job,
    is_rank_zero,
    prepare_training_run,
    refuse_used_folder,
    write_run_info,
    write_status,
)
from crackseg.sweep.gpus import in_local_parallel_sweep

log = logging.getLogger(__name__)

#: Where crackseg-eval takes its thresholds from.
THRESHOLD_SOURCES = ("checkpoint", "validation")

#: Hyperparameters shown in TensorBoard's HParams tab, by name -> config key.
HPARAMS = {
    "dilate": "data.dilate",
    "weighted_seg_p": "loss.weighted_seg_p",
    "weighted_seg_max": "loss.weighted_seg_max",
    "delta_cls": "loss.delta_cls",
    "lr": "optim.lr",
    "epochs": "trainer.max_epochs",
    "batch_size": "data.batch_size",
    "num_segmented": "data.num_segmented",
    "dynamic_balance": "loss.dynamic_balance",
    "frequency_sampling": "data.frequency_sampling",
    "gradient_adjustment": "loss.gradient_adjustment",
    "weighted_seg": "loss.weighted_seg",
    "seed": "seed",
}

REPORT_NOTES = (
    "The segmentation threshold is chosen on the validation split (the one maximising mean "
    "Dice over its positives) and applied unchanged to the test split.",
    "Dice and IoU are per test positive, against the undilated ground-truth mask at the input "
    "size (taken at one half where it was resized); an empty prediction on a positive scores 0.",
    "A split with only positives or only negatives has no defined AUC or AP: they are "
    "reported as n/a (null in metrics.json).",
)


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The swept run parameters as TensorBoard accepts them (numbers, booleans, strings)."""
    values = {}
    for name, key in HPARAMS.items():
        value = OmegaConf.select(cfg, key)
        values[name] = "all" if value is None else value
    return values


def report_writer(cfg: DictConfig, title: str):  # noqa: ANN201
    """The report callback's writer, bound to the config whose run it describes."""

    def write(run_dir: Path, metrics: dict[str, Any], trainer: pl.Trainer) -> None:
        datamodule = trainer.datamodule
        write_report(
            run_dir,
            title=title,
            dataset=dataset_table_from_counts(
                cfg, datamodule.split_counts(), datamodule.num_segmented_train
            ),
            split_counts=datamodule.split_counts(),
            run_parameters=run_parameters_from_config(cfg),
            metrics=metrics,
            dice_files=metrics["dice_files"],
            notes=list(REPORT_NOTES),
        )

    return write


def slurm_requeue_environment(enabled: bool) -> SLURMEnvironment:
    """On SLURM, Lightning's requeue: on the job's warning signal it saves
    ``hpc_ckpt_N.ckpt`` in the run folder and requeues the job, which resumes from it.

    The signal is the one the cluster launcher (submitit) asks SLURM to send before the
    time limit (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise). Submitit installs a
    handler of its own for it; Lightning only installs its handler on a free signal.
    """
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    requeue_signal = getattr(signal, f"SIG{name}")
    if enabled and threading.current_thread() is threading.main_thread():
        signal.signal(requeue_signal, signal.SIG_DFL)
    return SLURMEnvironment(auto_requeue=enabled, requeue_signal=requeue_signal)


def build_logger(cfg: DictConfig, resume_step: int | None = None) -> Logger | bool:
    """The run's logger; resuming at ``resume_step``, TensorBoard drops what the stopped run
    logged from that step on (it is logged again), so no step appears twice."""
    if not cfg.get("logger"):
        return False
    extra = {}
    if resume_step is not None and issubclass(get_class(cfg.logger._target_), TensorBoardLogger):
        extra["purge_step"] = resume_step  # passed on to TensorBoard's SummaryWriter
    return instantiate(cfg.logger, **extra)


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], resume_step: int | None = None
) -> pl.Trainer:
    logger = build_logger(cfg, resume_step)
    # Off a terminal (or with sweep jobs sharing one), one log line per epoch, not a bar.
    show_progress = bool(OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True))
    in_sweep = in_local_parallel_sweep()
    callbacks = [*callbacks, *progress_callbacks(show_progress, in_sweep)]
    deterministic = OmegaConf.select(cfg, "trainer.deterministic", default=False)
    pinned = "OMP_NUM_THREADS" in os.environ or deterministic in (True, "warn")
    if cfg.get("share_cpu_cores", True) and not pinned:
        # A pinned thread count is kept, and a deterministic run's (its sums depend on the
        # number of threads); a local sweep's job never takes more than its split.
        workers = int(OmegaConf.select(cfg, "data.num_workers", default=0) or 0)
        callbacks.append(ShareCoresWithOtherRuns(workers))
    overrides: dict[str, Any] = {"plugins": [AtomicCheckpointIO()]}
    if SLURMEnvironment.detect():
        overrides["plugins"].append(slurm_requeue_environment(cfg.get("slurm_requeue", True)))
    if not cfg.get("validate", True):
        # No validation while training; the threshold is still chosen on validation after.
        overrides |= {"check_val_every_n_epoch": 10**9, "num_sanity_val_steps": 0}
        callbacks = [c for c in callbacks if not isinstance(c, ValidateOnLastEpoch)]
    if cfg.trainer.get("benchmark") is None:
        overrides["benchmark"] = not cfg.trainer.get("deterministic")
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **overrides)


def resolve_machine_settings(cfg: DictConfig) -> None:
    """Settings that depend on the machine (``trainer.precision: auto``), made concrete
    before anything compares, records or reports the config."""
    if "trainer" in cfg:
        check_accelerator(cfg.trainer.accelerator, cfg.trainer.get("devices", 1))
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, pick the evaluated weights, choose the threshold on validation, test, report.

    A stopped run continues from its newest checkpoint (``resume=``, see run_folder).
    """
    multirun, overrides = hydra_job()
    resolve_machine_settings(cfg)
    cfg, checkpoint = prepare_training_run(cfg, multirun, overrides)  # reads no data
    resolve_machine_settings(cfg)  # a resumed run's own config
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if is_rank_zero():
        write_status(output_dir, "running")
        write_run_info(output_dir, resumed_from=checkpoint)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: CrackDataModule = instantiate(cfg.data, _convert_="all")
    module: SegDecModule = instantiate(
        cfg.model, _convert_="all", run_config=OmegaConf.to_yaml(cfg, resolve=True)
    )
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    callbacks.append(
        EvaluationReport(
            str(output_dir),
            cfg.num_dice_panels,
            report_writer(cfg, cfg.report_title),
            hparams_of(cfg),
        )
    )
    resume_step = checkpoint_step(checkpoint) if checkpoint is not None else None
    trainer = build_trainer(cfg, callbacks, resume_step)
    if checkpoint is not None:
        log.info("resuming from %s (step %d)", checkpoint, resume_step)
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    if trainer.is_global_zero:
        datamodule.save_split(output_dir / "split.csv")

    monitored = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    if cfg.use_best_model and cfg.validate and best:
        log.info("testing the best weights by validation AP: %s", best)
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
        )
    else:
        log.info("testing the final weights")
        trainer.validate(module, datamodule=datamodule, verbose=False)
    best_score = monitored[0].best_model_score if monitored else None
    # What a sweeper optimises: never a test metric.
    module.best_val_image_ap = (
        float(best_score) if best_score is not None else module.last_val_image_ap
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_results


def load_checkpoint(path: str) -> SegDecModule:
    """Load a trained module, turning a missing or unreadable file into one clear line."""
    return load_module(path)


def check_checkpoint_matches(module: SegDecModule, cfg: DictConfig) -> None:
    hp = module.hparams
    trained = (hp.input_channels, hp.input_height, hp.input_width)
    asked = (cfg.data.input_channels, cfg.data.input_height, cfg.data.input_width)
    if trained != asked:
        raise CracksegError(
            "checkpoint was trained on {}x{}x{} inputs but the data config gives {}x{}x{} "
            "(set data.input_channels/input_height/input_width to match)".format(*trained, *asked)
        )


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate saved weights on a dataset exactly as a training run's test step does.

    The thresholds are the checkpoint's own (chosen on its training run's validation split);
    ``thresholds=validation`` re-chooses them on the validation split of the data given.
    ``trainer.precision=auto`` evaluates in the precision the weights were trained in.
    """
    check_config(cfg)
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.get("devices", 1))
    if cfg.thresholds not in THRESHOLD_SOURCES:
        raise ConfigError(
            f"thresholds must be one of {', '.join(THRESHOLD_SOURCES)}, not {cfg.thresholds!r}"
        )
    if cfg.thresholds == "validation" and cfg.data.get("all_as_test"):
        raise ConfigError(
            "thresholds=validation needs a validation split, but data.all_as_test=true "
            "puts every sample in the test split"
        )
    output_dir = Path(cfg.paths.output_dir)
    refuse_used_folder(output_dir)
    module = load_checkpoint(cfg.ckpt_path)
    check_checkpoint_matches(module, cfg)
    run_config = OmegaConf.create(module.hparams.get("run_config") or "{}")
    trained_precision = OmegaConf.select(run_config, "trainer.precision", default=None)
    if str(cfg.trainer.precision) == "auto" and trained_precision not in (None, "auto"):
        cfg.trainer.precision = str(trained_precision)
        log.info("precision: %s, as the checkpoint was trained", trained_precision)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    # Report the parameters the weights were trained with, and the data evaluated here.
    report_cfg = OmegaConf.merge(
        run_config, {"data": OmegaConf.to_container(cfg.data, resolve=True)}
    )
    datamodule: CrackDataModule = instantiate(cfg.data, _convert_="all")
    report = EvaluationReport(
        str(output_dir),
        cfg.num_dice_panels,
        report_writer(report_cfg, cfg.report_title),
        hparams_of(report_cfg),
    )
    trainer = build_trainer(cfg, [report])
    if cfg.thresholds == "validation":
        trainer.validate(module, datamodule=datamodule, verbose=False)
    image_threshold, seg_threshold = thresholds(module)
    log.info(
        "thresholds (%s): image %.4f, segmentation %.2f",
        "chosen on this data's validation split"
        if cfg.thresholds == "validation"
        else "the checkpoint's",
        image_threshold,
        seg_threshold,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_results
