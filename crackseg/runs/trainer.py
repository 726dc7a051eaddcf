"""The Lightning Trainer of a run: its callbacks, logger, checkpoint writer and SLURM requeue.

The run's start (its folder, status and provenance) is crackseg.runs.resume, which imports
no Lightning, so a refused command line never waits for Lightning's import."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.exceptions import SIGTERMException

from crackseg.atomic import atomic_write_bytes
from crackseg.models.checkpoint import checkpoint_step
from crackseg.models.lit_segdec import THRESHOLDS_STEP
from crackseg.runs.allocator import keep_freed_memory
from crackseg.runs.cpu_share import ShareCoresWithOtherRuns
from crackseg.runs.gpus import in_local_parallel_sweep
from crackseg.runs.ownership import is_rank_zero
from crackseg.runs.progress import progress_callbacks
from crackseg.runs.training_control import (
    NEVER,
    CheckpointsFollowTheRunFolder,
    EpochLossesAcrossStops,
    ValidationSchedule,
)

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, renaming a complete file into place (crackseg.atomic).

    The checkpoint is serialised in memory first, so a failing write (a full disk) raises
    an ``OSError`` naming the file instead of torch's generic writer error.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer())


def requeue_signal() -> signal.Signals:
    """The signal SLURM sends a job before its time limit, on which it checkpoints and
    requeues itself: in a job of the cluster launcher (``hydra/launcher=slurm``: submitit,
    which exports SUBMITIT_EXECUTOR), the one it asked for, USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise; in a job of a plain sbatch script, Lightning's
    USR1 (``#SBATCH --signal=USR1@120``)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return signal.SIGUSR1
    return getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}")


def slurm_requeue_environment(enabled: bool) -> SLURMEnvironment:
    """On SLURM, Lightning's requeue: on the job's warning signal it saves
    ``hpc_ckpt_N.ckpt`` in the run folder and requeues the job, which resumes from it."""
    return SLURMEnvironment(auto_requeue=enabled, requeue_signal=requeue_signal())


class FreeTheRequeueSignal(pl.Callback):
    """Lightning installs its requeue handler only on a signal without one, once a stage is
    set up; submitit has installed a handler of its own (which requeues the job too). That
    one is removed only then, so the signal does not meet its default action (the end of
    the job, without a checkpoint) while the data are prepared, the longest of the gaps.
    When a stage ends Lightning gives the signal its default action back: until the next
    stage (the thresholds chosen, the test, the report) the warning is only logged, and
    what is left of the job runs in its delay; a job stopped then resumes from its
    checkpoints as any other."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(requeue_signal(), signal.SIG_DFL)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(requeue_signal(), _warned_between_stages)


def _warned_between_stages(signum: int, frame: object) -> None:
    log.warning(
        "SLURM warned of the job's end (signal %d) after training: finishing what is left",
        signum,
    )


def build_logger(cfg: DictConfig, resume_step: int | None = None) -> Logger | bool:
    """The run's logger; resuming at ``resume_step``, it drops what the stopped run logged
    from that step on (it is logged again) and keeps what came before, so that every step
    appears once: TensorBoard's by its ``purge_step``, the CSV logger's as
    :func:`keep_csv_rows_before` does."""
    if not cfg.get("logger"):
        return False
    if resume_step is not None and issubclass(get_class(cfg.logger._target_), TensorBoardLogger):
        return instantiate(cfg.logger, purge_step=resume_step)  # for its SummaryWriter
    logger = instantiate(cfg.logger)
    if resume_step is not None and isinstance(logger, CSVLogger) and is_rank_zero():
        keep_csv_rows_before(logger, resume_step)
    return logger


def keep_csv_rows_before(logger: CSVLogger, step: int) -> None:
    """The rows of the CSV logger's ``metrics.csv`` logged before ``step``, kept for the
    resumed run to add to: Lightning's CSV writer deletes the file it finds as it starts.
    The file is set aside while the writer starts, and read from there by the next resume
    where a kill left it so."""
    path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
    aside = path.with_name(f"{path.name}.before-resume")
    if path.is_file():
        path.replace(aside)
    if not aside.is_file():
        return
    with aside.open(newline="") as handle:
        kept = [row for row in csv.DictReader(handle) if int(float(row["step"])) < step]
    with warnings.catch_warnings():  # that it would delete the files it finds: not so
        warnings.filterwarnings("ignore", "Experiment logs directory .* is not empty")
        writer = logger.experiment  # started now: it finds no file to delete
    writer.metrics = [{key: value for key, value in row.items() if value != ""} for row in kept]
    writer.save()
    aside.unlink()


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], resume_from: Path | None = None
) -> pl.Trainer:
    """The run's Trainer: its callbacks and progress lines, core sharing, atomic checkpoints,
    SLURM requeue; ``resume_from`` a checkpoint, the logger continues at its step."""
    keep_freed_memory()  # steps reuse their large blocks instead of faulting in new pages
    resume_step = checkpoint_step(resume_from) if resume_from is not None else None
    if resume_from is not None:
        log.info("resuming from %s (step %d)", resume_from, resume_step)
    logger = build_logger(cfg, resume_step)
    # Off a terminal (or with sweep jobs sharing one), one log line per epoch, not a bar.
    show_progress = bool(OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True))
    in_sweep = in_local_parallel_sweep()
    callbacks = [*callbacks, CheckpointsFollowTheRunFolder(), EpochLossesAcrossStops()]
    callbacks += progress_callbacks(show_progress, in_sweep)
    deterministic = OmegaConf.select(cfg, "trainer.deterministic", default=False)
    pinned = "OMP_NUM_THREADS" in os.environ or deterministic in (True, "warn")
    if cfg.get("share_cpu_cores", True) and not pinned:
        # A pinned thread count is kept, and a deterministic run's (its sums depend on the
        # number of threads); a local sweep's job never takes more than its split.
        workers = int(OmegaConf.select(cfg, "data.num_workers", default=0) or 0)
        callbacks.append(ShareCoresWithOtherRuns(workers))
    overrides: dict[str, Any] = {"plugins": [AtomicCheckpointIO()]}
    if SLURMEnvironment.detect():
        requeue = cfg.get("slurm_requeue", False)  # train.yaml: true; eval.yaml: false
        overrides["plugins"].append(slurm_requeue_environment(requeue))
        if requeue:
            callbacks.append(FreeTheRequeueSignal())
    if not cfg.get("validate", True):
        # No validation while training; the threshold is still chosen on validation after.
        overrides |= {"check_val_every_n_epoch": NEVER, "num_sanity_val_steps": 0}
        callbacks = [c for c in callbacks if not isinstance(c, ValidationSchedule)]
    if cfg.trainer.get("benchmark") is None:
        overrides["benchmark"] = not cfg.trainer.get("deterministic")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **overrides)
    # A distributed run's loader workers come from a fork server, started here, before
    # Lightning's fit, where a Ctrl-C while it starts would fail the run. Only where every
    # process is started as a command of its own (ddp's "popen"): processes forked from this
    # one (ddp_fork) would inherit a server that is not their child, and start their own.
    ranks_own_processes = getattr(trainer.strategy, "_start_method", "popen") == "popen"
    workers = OmegaConf.select(cfg, "data.num_workers", default=0)
    if trainer.world_size > 1 and workers and ranks_own_processes:
        from crackseg.data.loader_workers import start_fork_server

        start_fork_server()
    return trainer


def _save_thresholds_in_last_checkpoint(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """The final weights' thresholds, just chosen, into their checkpoint (``last.ckpt``),
    where no validation had chosen them for these weights (``validate=false``, a last epoch
    not validated), so that crackseg-eval, -predict and -export use the thresholds the run
    was tested with."""
    unmonitored = [c for c in trainer.checkpoint_callbacks if not c.monitor]
    path = Path(unmonitored[0].best_model_path) if unmonitored else None
    if path is None or not path.is_file():
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    if step != module.global_step or checkpoint.get(THRESHOLDS_STEP) == step:
        return  # other weights, or these weights' own thresholds already
    state = checkpoint["state_dict"]
    state["image_threshold"] = module.image_threshold.detach().cpu().clone()
    state["seg_threshold"] = module.seg_threshold.detach().cpu().clone()
    AtomicCheckpointIO().save_checkpoint({**checkpoint, THRESHOLDS_STEP: module.global_step}, path)


def stop_if_signalled(trainer: pl.Trainer) -> None:
    """Lightning stops its loops on SIGTERM only before a loop's last batch; one that came
    later (the last batch, the epoch's end, where the thresholds are chosen) it only notes,
    and under DDP a SIGTERM is only noted outside training batches. Raised here, between
    Lightning's calls, the command stops as it would have earlier. Every process calls it."""
    signalled = trainer.received_sigterm or any(
        getattr(callback, "signalled", False) for callback in trainer.callbacks
    )
    # every process stops, or none (crackseg.runs.training_control.StopCheckpoint)
    if trainer.world_size > 1:
        signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
    if signalled:
        raise SIGTERMException


def validate_chosen_weights(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    use_best: bool,
) -> None:
    """Validate the weights the run is tested with (docs/method.md §7): the best by
    validation AP when ``use_best`` and a checkpoint monitored it, else the final ones
    (``module.tested_final_weights``, and their thresholds saved into ``last.ckpt`` too).
    Validating chooses the thresholds; ``module.best_val_image_ap`` is what a sweeper
    optimises, never a test metric."""
    monitored = [c for c in trainer.checkpoint_callbacks if c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    if use_best and best:
        log.info("testing the best weights by validation AP: %s", best)
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
        )
        stop_if_signalled(trainer)
    else:
        log.info("testing the final weights")
        module.tested_final_weights = True
        trainer.validate(module, datamodule=datamodule, verbose=False)
        stop_if_signalled(trainer)
        if trainer.is_global_zero:
            _save_thresholds_in_last_checkpoint(trainer, module)
    best_score = monitored[0].best_model_score if monitored else None
    if best_score is None:
        module.best_val_image_ap = module.last_val_image_ap
    else:
        # The AP of a split with positives is at least their share, never 0: a best score
        # of 0 is the stand-in logged for an undefined AP (a validation split of one class).
        module.best_val_image_ap = float(best_score) if best_score > 0 else math.nan
