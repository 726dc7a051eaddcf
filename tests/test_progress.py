"""Progress off a terminal: one log line per epoch, no bar fragments; the bar on a terminal."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from conftest import run_tiny
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

import crackseg.runs.progress as progress
from crackseg.runs.lifecycle import (
    LIGHTNING_INFO_LOGGER,
    is_no_lightning_tip,
    leave_out_library_notices,
)
from crackseg.runs.progress import EpochLog, epoch_line, format_duration, progress_callbacks
from crackseg.runs.trainer import build_trainer

METRICS = {
    "train/loss": 0.41234,
    "train/loss_seg": 0.3,
    "train/loss_dec": 0.1111,
    "train/lambda_seg": 0.96,
    "train/lambda_dec": 0.04,
    "val/image_ap": 0.9876,
    "val/image_auc": 0.9912,
    "val/dice": 0.5,
}


def test_epoch_line() -> None:
    assert epoch_line(5, 25, METRICS, True, 142.34, 72) == (
        "epoch 5/25: loss 0.4123 seg 0.3000 dec 0.1111 lambda_seg 0.9600 lambda_dec 0.0400"
        " | val AP 0.9876 AUC 0.9912 Dice 0.5000 | 142.3 images/s, 1m12s left"
    )
    # An epoch without validation shows no (stale) validation metrics; no limit, no time left.
    assert epoch_line(3, None, {"train/loss": 1.0}, False, None, None) == "epoch 3: loss 1.0000"
    assert [format_duration(s) for s in (0, 59.4, 72, 2 * 3600 + 7 * 60 + 30)] == [
        "0s",
        "59s",
        "1m12s",
        "2h07m",
    ]


def _trainer(tmp_path: Path, enabled: bool) -> pl.Trainer:
    cfg = OmegaConf.create(
        {
            "trainer": {
                "_target_": "pytorch_lightning.Trainer",
                "accelerator": "cpu",
                "enable_progress_bar": enabled,
                "enable_model_summary": False,
                "default_root_dir": str(tmp_path),
            }
        }
    )
    return build_trainer(cfg, [])


def test_the_bar_stays_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "output_is_terminal", lambda: True)
    assert type(_trainer(tmp_path, True).progress_bar_callback) is TQDMProgressBar
    assert _trainer(tmp_path, False).progress_bar_callback is None
    # jobs of a local parallel sweep would draw their bars over each other
    assert [type(c) for c in progress_callbacks(True, shared_output=True)] == [EpochLog]
    monkeypatch.setattr(progress, "output_is_terminal", lambda: False)
    assert type(_trainer(tmp_path, True).progress_bar_callback) is EpochLog
    assert _trainer(tmp_path, False).progress_bar_callback is None  # off means off


def test_a_run_off_a_terminal_logs_one_line_per_epoch(tmp_path: Path, tiny_data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_tiny(
        run_dir, tiny_data_dir, "trainer.enable_progress_bar=true", "validation_n_epochs=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "\r" not in output and "it/s]" not in output  # no bar fragments
    assert "Tip:" not in output  # Lightning's advertisements of its cloud services
    lines = [line for line in output.splitlines() if "[crackseg.runs.progress]" in line]
    assert len(lines) == 2, output[-3000:]
    assert "epoch 1/2: loss " in lines[0] and "lambda_dec" in lines[0]
    assert "val AP" not in lines[0]  # epoch 1 does not validate (every 2 epochs)
    assert "epoch 2/2: loss " in lines[1] and "| val AP " in lines[1] and "Dice" in lines[1]
    assert all("images/s" in line and " left" in line for line in lines)
    log = (run_dir / "train.log").read_text()
    assert all(line in log for line in lines)
    assert "torch threads: " in log and "no other job beside this one" in log


def test_a_run_resumed_mid_epoch_counts_its_speed_from_where_it_resumed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning calls no epoch-start hook for the epoch it resumes in the middle of."""
    clock = iter([1000.0, 1002.0])  # training starts, then one batch ends 2 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock, 1002.0))
    trainer = SimpleNamespace(
        world_size=1, max_epochs=10, current_epoch=3, callback_metrics={}, sanity_checking=False
    )
    bar = EpochLog()
    bar.on_train_start(trainer, None)
    bar.on_train_batch_end(trainer, None, None, {"image": torch.zeros(8, 1, 4, 4)}, 0)
    with caplog.at_level("INFO", logger=progress.log.name):
        bar.on_train_epoch_end(trainer, None)
    assert "epoch 4/10: 4.0 images/s, 12s left" in caplog.text, caplog.text


def test_what_lightning_says_in_every_bf16_run_that_says_nothing_of_it_is_left_out(caplog):
    """Its advertisements, and its model summary's warning that it sizes bf16-mixed
    parameters as float32 (which they are); other warnings and lines are kept."""
    from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

    lightning = logging.getLogger(LIGHTNING_INFO_LOGGER)
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
            warnings.simplefilter("always")
            leave_out_library_notices()
            rank_zero_warn(
                "Precision bf16-mixed is not supported by the model summary.  Estimated model "
                "size in MB will not be accurate. Using 32 bits instead."
            )
            rank_zero_warn("Precision 64-mixed is something else")
            rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, ...")
            rank_zero_info("GPU available: False, used: False")
    finally:
        lightning.removeFilter(is_no_lightning_tip)
    assert [str(w.message) for w in caught] == ["Precision 64-mixed is something else"]
    assert "Tip:" not in caplog.text and "GPU available: False, used: False" in caplog.text
