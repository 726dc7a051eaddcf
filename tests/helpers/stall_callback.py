"""A callback for the fault tests: hold a training run still at a chosen point.

Added to a run with ``+callbacks.stall._target_=stall_callback.StallAt`` (``tests/helpers``
on PYTHONPATH). It acts only when CRACKSEG_TEST_STALL="EPOCH:BATCH:MARKER" is set: as that
training batch starts (so the batch finishes before the run stops); BATCH=vN: after batch N
of that epoch's validation while training; BATCH=val: after that epoch's validation was
logged, before any checkpoint of it is saved; BATCH=setup: while the training is set up,
before Lightning's loops and their SIGTERM handler; BATCH=chosen: at the end of the
validation after training that chooses the thresholds, where Lightning only notes a
SIGTERM; BATCH=test: as the test's last batch starts, which Lightning finishes with a
SIGTERM only noted (EPOCH ignored by these three); BATCH=test-late: as ``test``, where
the second process of a DDP run starts its test loop five seconds late, so a signal reaches
it before the loop's first hook of crackseg's. There it writes MARKER and waits (up to two
minutes) for the test to send a signal, so the signal lands at a known point of the run,
or to delete MARKER, which lets it go on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn


def _stall_point() -> tuple[int, str, str] | None:
    spec = os.environ.get("CRACKSEG_TEST_STALL")
    if not spec:
        return None
    epoch, where, marker = spec.split(":", 2)
    return int(epoch), where, marker


def _signalled(trainer: pl.Trainer) -> bool:
    """A SIGTERM came: noted by Lightning, or (while training) by crackseg's StopCheckpoint."""
    noted = any(getattr(callback, "signalled", False) for callback in trainer.callbacks)
    return trainer.received_sigterm or noted


def _stall(trainer: pl.Trainer, marker: str, what: str) -> None:
    Path(marker).write_text(f"{what}\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _signalled(trainer):
        if not Path(marker).exists():
            return
        time.sleep(0.02)


class StallAt(pl.Callback):
    def setup(self, trainer, pl_module, stage) -> None:
        point = _stall_point()
        if point is not None and point[1] == "setup" and stage == "fit":
            _stall(trainer, point[2], "setting up")
        if point is not None and point[1] == "test-late" and stage == "test":
            # first, so its on_test_start comes before that of crackseg's StopCheckpoint
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(0, self)

    def on_test_start(self, trainer, pl_module) -> None:
        # The second process five seconds late into its test loop: after Lightning took
        # over SIGTERM, before the loop's first hook of crackseg's.
        point = _stall_point()
        if point is not None and point[1] == "test-late" and trainer.global_rank == 1:
            time.sleep(5)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Held as the batch starts, so a signal lands while it trains, as one mostly does.
        point = _stall_point()
        if point is None:
            return
        epoch, where, marker = point
        if trainer.current_epoch == epoch and where == str(batch_idx):
            _stall(trainer, marker, f"epoch {epoch} batch {batch_idx}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        point = _stall_point()
        if point is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch, where, marker = point
        if trainer.current_epoch == epoch and where == f"v{batch_idx}":
            _stall(trainer, marker, f"epoch {epoch} validation batch {batch_idx}")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        point = _stall_point()
        last = batch_idx == trainer.num_test_batches[0] - 1
        if point is not None and point[1] in ("test", "test-late") and last:
            _stall(trainer, point[2], "testing its last batch")

    def on_validation_end(self, trainer, pl_module) -> None:
        point = _stall_point()
        if point is not None and point[1] == "chosen" and trainer.state.fn == TrainerFn.VALIDATING:
            _stall(trainer, point[2], "thresholds chosen")
            return
        # Lightning calls checkpoint callbacks after the others: none has saved this epoch yet.
        if point is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch, where, marker = point
        if trainer.current_epoch == epoch and where == "val":
            _stall(trainer, marker, f"epoch {epoch} validated")
