"""Training progress that reads well in a log file: one line per epoch instead of a bar.

A tqdm bar redraws itself with carriage returns; on a terminal that is one live line, but in
a file (CI, nohup, a SLURM job's log) every redraw stays, and a short run leaves hundreds of
kilobytes of bar fragments. Where the output is not a terminal, or several jobs of a local
sweep share it, :class:`EpochLog` takes the place of Lightning's bar and logs one line per
epoch instead (through ``logging``, so it lands in the run's ``train.log`` as well).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.data import extract_batch_size

log = logging.getLogger(__name__)

#: (metric, label) of the training part of the line, then of the validation part.
TRAIN_FIELDS = (
    ("train/loss", "loss"),
    ("train/loss_seg", "seg"),
    ("train/loss_dec", "dec"),
    ("train/lambda_seg", "lambda_seg"),
    ("train/lambda_dec", "lambda_dec"),
)
VAL_FIELDS = (("val/image_ap", "AP"), ("val/image_auc", "AUC"), ("val/dice", "Dice"))


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(
    epoch: int,
    max_epochs: int | None,
    metrics: dict[str, float],
    validated: bool,
    images_per_s: float | None,
    seconds_left: float | None,
) -> str:
    """One epoch as a log line, e.g.
    ``epoch 5/25: loss 0.4123 seg 0.3012 dec 0.1111 lambda_seg 0.9600 lambda_dec 0.0400 |
    val AP 0.9876 AUC 0.9912 Dice 0.5123 | 142.3 images/s, 1m12s left``
    (``epoch`` counts from 1; missing metrics are left out).
    """
    head = f"epoch {epoch}/{max_epochs}" if max_epochs else f"epoch {epoch}"
    parts = [_fields(metrics, TRAIN_FIELDS)]
    if validated:
        parts.append("val " + _fields(metrics, VAL_FIELDS))
    speed = [f"{images_per_s:.1f} images/s"] if images_per_s is not None else []
    if seconds_left is not None:
        speed.append(f"{format_duration(seconds_left)} left")
    parts.append(", ".join(speed))
    return f"{head}: " + " | ".join(p for p in parts if p.strip())


def _fields(metrics: dict[str, float], fields: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{label} {metrics[key]:.4f}" for key, label in fields if key in metrics)


class EpochLog(ProgressBar):
    """Lightning's progress bar replaced by one log line at the end of every training epoch.

    The line holds the epoch's training losses and lambdas, the validation metrics when the
    epoch validated, the training images per second and the time left (the mean time of the
    epochs run so far in this process, times the epochs to go). Being a ``ProgressBar``,
    it stands in for the tqdm bar, only on rank 0, and ``trainer.enable_progress_bar=false``
    turns it off with the bar.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start: float | None = None
        self._epochs_done = 0
        self._epoch_start = 0.0
        self._last_batch_end = 0.0
        self._images = 0
        self._validated = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed in the middle of an epoch starts there without that epoch's start
        # hook: its images per second and time left are counted from here.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.monotonic()
        if self._start is None:
            self._start = self._epoch_start
        self._images = 0
        self._validated = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += extract_batch_size(batch) * trainer.world_size
        self._last_batch_end = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates before this hook, so the epoch's validation metrics are here.
        if not self._enabled:
            return
        now = time.monotonic()
        self._epochs_done += 1
        train_s = self._last_batch_end - self._epoch_start
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        seconds_left = None
        if max_epochs is not None and self._start is not None:
            per_epoch = (now - self._start) / self._epochs_done
            seconds_left = per_epoch * (max_epochs - trainer.current_epoch - 1)
        logged = trainer.callback_metrics
        shown = [key for key, _ in TRAIN_FIELDS + VAL_FIELDS if key in logged]
        metrics = {key: float(logged[key]) for key in shown if math.isfinite(float(logged[key]))}
        line = epoch_line(
            trainer.current_epoch + 1,
            max_epochs,
            metrics,
            self._validated,
            self._images / train_s if train_s > 0 and self._images else None,
            seconds_left,
        )
        log.info(line)


def output_is_terminal() -> bool:
    """Whether Lightning's bar would be drawn on a terminal (it writes to stdout)."""
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except ValueError:  # a closed stream
        return False


def progress_callbacks(enabled: bool, shared_output: bool = False) -> list[pl.Callback]:
    """What shows the progress of a run: tqdm's bar on a terminal that only this job writes
    to, ``EpochLog`` elsewhere (a file, a pipe, or the jobs of a local parallel sweep);
    nothing at all when ``enabled`` is false."""
    if not enabled:
        return []
    if output_is_terminal() and not shared_output:
        return [TQDMProgressBar()]  # not the rich bar Lightning prefers where rich is installed
    return [EpochLog()]
