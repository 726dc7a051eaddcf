"""One run on 2 CPU processes with Lightning's DDP over gloo."""

from __future__ import annotations

import json

from conftest import run_tiny


def test_two_process_ddp_run_writes_one_report(tmp_path, tiny_data_dir):
    result = run_tiny(
        tmp_path, tiny_data_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Gathered across both ranks, each test image counted once (no sampler padding).
    assert metrics["tp"] + metrics["fn"] + metrics["tn"] + metrics["fp"] == metrics["test_samples"]
    assert (tmp_path / "report.md").is_file()
    rank0 = (tmp_path / "train.log").read_text()
    rank1 = (tmp_path / "train_ddp_process_1.log").read_text()
    assert "evaluation written" in rank0
    assert "evaluation written" not in rank1
