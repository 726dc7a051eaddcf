"""The run machinery's Lightning callbacks: when a run validates, a checkpoint on a stop
(SIGTERM, Ctrl-C, a cluster's requeue) and the epoch's loss sums it carries, a diverged loss
ending the run with one line, and checkpoints that follow a run folder moved elsewhere.
(The run's outputs, its history, pictures, ranking and report, are made by
:mod:`crackseg.callbacks`.)"""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from crackseg.errors import TrainingDiverged
from crackseg.run_files import INTERRUPTED_CHECKPOINT, SLURM_CHECKPOINTS
from crackseg.runs.config_checks import VALIDATION_SCHEDULES

log = logging.getLogger(__name__)

#: A ``check_val_every_n_epoch`` that never comes: no validation after this epoch.
NEVER = 10**9
#: The checkpoint key of the running sums of an epoch stopped in its middle.
EPOCH_LOSS_SUMS = "epoch_running_means"


class ValidationSchedule(pl.Callback):
    """When a run validates: on the ``schedule`` (:data:`VALIDATION_SCHEDULES`: every
    ``check_val_every_n_epoch`` epochs, or ``published``: epochs 1, N+1, 2N+1, ...), and
    after the last epoch whatever the schedule says."""

    def __init__(self, schedule: str = "every_n") -> None:
        if schedule not in VALIDATION_SCHEDULES:
            raise ValueError(f"validation schedule must be one of {VALIDATION_SCHEDULES}")
        self.schedule = schedule
        self.every_n: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.every_n is None:
            self.every_n = trainer.check_val_every_n_epoch

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed in the middle of an epoch starts there without that epoch's start
        # hook: it must validate at its end all the same.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        if self.schedule == "every_n" or self.every_n is None:
            if last:
                trainer.check_val_every_n_epoch = 1
            return
        # Lightning validates after epoch e where (e + 1) % check_val_every_n_epoch == 0.
        due = last or epoch % self.every_n == 0
        trainer.check_val_every_n_epoch = 1 if due else NEVER


class StopCheckpoint(pl.Callback):
    """SIGTERM or Ctrl-C: finish the batch or validation under way, save
    ``interrupted.ckpt``, stop.

    The first Ctrl-C is turned into a SIGTERM so it stops the same clean way, and a second
    one aborts at once. While training, the signal is only noted, and the run stops after
    the training batch under way, or after the validation under way: the checkpoint then
    holds a consistent state, the batches done so far this epoch (which the data module
    skips when the run is resumed; with gradient accumulation, up to the end of the window
    under way) or the whole epoch with its validation. Lightning alone
    would stop a validation half done, and the resumed run would never validate that epoch.
    A second SIGTERM to a single process (a grace period shorter than the validation) stops
    it after the validation batch under way, as Lightning would.
    """

    def __init__(self, dirpath: str, filename: str = INTERRUPTED_CHECKPOINT) -> None:
        self.path = Path(dirpath) / filename
        self._previous_sigint: Any = None
        #: A SIGTERM came to this process while training, not yet acted on.
        self.signalled = False
        self._trainer: pl.Trainer | None = None

    # Lightning's own SIGTERM handler has its loops stop after the batch under way, a
    # validation batch too. Under DDP it also broadcasts from inside the handler: where the
    # signal lands while another process is inside a collective (DDP's gradient all-reduce,
    # a metric's gather), the two wait on each other for ever. While training, each process
    # only notes the signal instead, and the processes agree on it after every training
    # batch and every validation, stopping together (crackseg.runs.trainer.stop_if_signalled
    # agrees after a Lightning call), and after every test batch. A validation after
    # training, which saves no checkpoint, stops as Lightning has it on a single process.
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Under DDP from the moment Lightning registers its handler (after this hook, before
        # its loops and their first hook): a process slower to reach them (its loaders still
        # being made) would otherwise broadcast inside the handler while the first one,
        # holding the signal already, waits at the agreement after its batch.
        if trainer.world_size > 1:
            self._trainer = trainer
            trainer._signal_connector._sigterm_notifier_fn = self._note_sigterm

    def _hold_sigterm(self, trainer: pl.Trainer) -> None:
        held = trainer.world_size > 1 or trainer.state.fn == TrainerFn.FITTING
        if held and threading.current_thread() is threading.main_thread():
            self._trainer = trainer
            if signal.getsignal(signal.SIGTERM) != self._note_sigterm:
                signal.signal(signal.SIGTERM, self._note_sigterm)

    def _note_sigterm(self, signum: int, frame: Any) -> None:
        if self.signalled:
            # Under DDP every process must stop at the same point: only after agreeing.
            if self._trainer is not None and self._trainer.world_size == 1:
                self._trainer._signal_connector.received_sigterm = True
            return
        self.signalled = True
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if launcher is not None:  # the first process started the others: they stop too
            launcher.kill(signum)
        if self._trainer is not None and self._trainer.state.fn == TrainerFn.TESTING:
            log.warning("stop requested: the test stops after the batch under way")
        else:
            log.warning(
                "stop requested: training stops after the batch under way (a validation "
                "under way ends first)"
            )

    def _stop_if_agreed(self, trainer: pl.Trainer) -> None:
        """Every process at once: Lightning stops them all at its next check."""
        signalled = self.signalled or trainer.received_sigterm
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled:
            trainer._signal_connector.received_sigterm = True

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hold_sigterm(trainer)
        self._catch_first_ctrl_c()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hold_sigterm(trainer)
        self._catch_first_ctrl_c()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hold_sigterm(trainer)
        if trainer.state.fn == TrainerFn.FITTING and trainer.received_sigterm:
            # Stopping after the training batch that precedes this validation: the
            # validation ends first, then the run stops (on_validation_end).
            trainer._signal_connector.received_sigterm = False
            self.signalled = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._stop_if_agreed(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hold_sigterm(trainer)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._stop_if_agreed(trainer)  # Lightning stops the test after this batch, unless last

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning finishes its last batch with the signal only noted: the run would end
        # finished, and a sweep go on to its next job. It stops here instead, before the
        # test's metrics and report, as after any other batch.
        self._stop_if_agreed(trainer)
        if trainer.received_sigterm:
            raise SIGTERMException

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        # With gradient accumulation, only once the window's optimiser step is taken: the
        # checkpoint holds no gradients, so a run stopped inside a window would resume with
        # that window's first batches skipped and their gradients lost. Every process is at
        # the same batch, so they all skip the agreement together.
        if not trainer.fit_loop.epoch_loop._should_accumulate():
            self._stop_if_agreed(trainer)

    def _catch_first_ctrl_c(self) -> None:
        """Once Lightning has recorded the handlers it restores when its call ends (after
        on_fit_start), so that it never restores this one after a failed fit. A command
        started with SIGINT ignored (a shell's background job: ``crackseg-train ... &``)
        keeps ignoring it, as it does while it tests."""
        main = threading.current_thread() is threading.main_thread()
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if main and not ignored and self._previous_sigint is None:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        log.warning(
            "Ctrl-C: stopping after the batch or validation under way, with a checkpoint "
            "(Ctrl-C again aborts)"
        )
        signal.raise_signal(signal.SIGTERM)

    def _restore_sigint(self) -> None:
        if (
            self._previous_sigint is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigint()
        # Training went past the stop: the folder holds what the uninterrupted run's holds.
        # Lightning's SLURM requeue checkpoints go too: on SLURM, Lightning would load one
        # into the weights chosen for the test.
        if trainer.is_global_zero:
            self.path.unlink(missing_ok=True)
            for requeued in Path(trainer.default_root_dir).glob(SLURM_CHECKPOINTS):
                requeued.unlink(missing_ok=True)
        trainer.strategy.barrier("stop_checkpoint_removed")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(self.path)
            log.warning("stopped by a signal; checkpoint saved to %s", self.path)


class EpochLossesAcrossStops(pl.Callback):
    """A checkpoint taken mid-epoch (a stop) carries the running sums of the epoch's training
    losses (:attr:`SegDecModule.train_means`), so the resumed epoch logs the mean of all its
    batches, not only of those after the stop. Under DDP, at a stop the processes agreed on
    (:class:`StopCheckpoint`), the sums of every process (each saves, the first writes the
    file). Lightning's SLURM requeue saves in each process's signal handler, wherever each
    is: a collective there could pair with another, so that checkpoint keeps the first
    process's sums alone."""

    def __init__(self) -> None:
        self._resumed: dict[str, list[float]] | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        means = getattr(pl_module, "train_means", None)  # (SegDecModule's)
        if means is None or not 0 < done < trainer.num_training_batches:
            return
        sums = {}
        for name, metric in means.items():
            with metric.sync_context(should_sync=trainer.received_sigterm):  # as at the end
                sums[name] = [float(metric.total), float(metric.weight)]
        checkpoint[EPOCH_LOSS_SUMS] = sums

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._resumed = checkpoint.get(EPOCH_LOSS_SUMS)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The sums of every process at the stop (or of the first alone), summed across
        # processes at the epoch's end: under DDP only the first takes them back.
        if self._resumed and trainer.global_rank == 0:
            for name, (total, weight) in self._resumed.items():
                pl_module.train_means[name].total.fill_(total)
                pl_module.train_means[name].weight.fill_(weight)
        self._resumed = None


class FailOnDivergedLoss(pl.Callback):
    """A training whose loss is no longer a number (nan or inf) ends at that epoch's end
    with one line, its status failed: every later epoch, validation and test would compute
    on NaN weights, and its scores would mean nothing. last.ckpt keeps the epoch before, as
    Lightning calls checkpoint callbacks after the others (last_checkpoint saves at the
    training epoch's end)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or math.isfinite(float(loss)):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        float32 = str(trainer.precision).startswith("32")
        raise TrainingDiverged(
            f"the training diverged: its loss in epoch {trainer.current_epoch + 1} is "
            f"{float(loss)} at learning rate {lr:g}; lower optim.lr"
            + ("" if float32 else ", or train in float32 (trainer.precision=32-true)")
        )


class CheckpointsFollowTheRunFolder(pl.Callback):
    """A run folder moved or copied, then resumed: the checkpoint callbacks' saved state
    names files of the old place (the best checkpoint, the k best, the last). Rebased onto
    the new place before they load it; Lightning would otherwise drop the best score, so the
    next validation would count as the best and the run could be tested on other weights."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks") or {}
        for callback in trainer.checkpoint_callbacks:
            state = states.get(callback.state_key)
            dirpath = getattr(callback, "dirpath", None)
            if isinstance(state, dict) and dirpath and state.get("dirpath") not in (None, dirpath):
                states[callback.state_key] = rebased_checkpoint_state(state, dirpath)


def rebased_checkpoint_state(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint's state with the paths in its old ``dirpath`` moved to ``dirpath``."""
    old = Path(state["dirpath"])

    def rebased(path: Any) -> Any:
        if isinstance(path, str) and path and Path(path).parent == old:
            return str(Path(dirpath) / Path(path).name)
        return path

    moved = {key: rebased(value) for key, value in state.items()}
    moved["dirpath"] = dirpath
    moved["best_k_models"] = {rebased(k): v for k, v in state.get("best_k_models", {}).items()}
    return moved
