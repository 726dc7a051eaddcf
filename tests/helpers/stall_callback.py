"""A callback for the fault tests: hold a training run still at a chosen batch.

Added to a run with ``+callbacks.stall._target_=stall_callback.StallAt`` (``tests/helpers``
on PYTHONPATH). It acts only when CRACKSEG_TEST_STALL="EPOCH:BATCH:MARKER" is set: after
that batch it writes MARKER and waits (up to two minutes) for the test to send a signal, so
the signal lands in the middle of an epoch, at a known batch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl


class StallAt(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        spec = os.environ.get("CRACKSEG_TEST_STALL")
        if not spec:
            return
        epoch, index, marker = spec.split(":", 2)
        if trainer.current_epoch != int(epoch) or batch_idx != int(index):
            return
        Path(marker).write_text(f"epoch {epoch} batch {index}\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.02)
