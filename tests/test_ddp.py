"""One run on 2 CPU processes with Lightning's DDP over gloo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, one_line_error, run_entry, run_tiny
from helpers.stalled_runs import start_train, wait_for_stall

from crackseg.runs.threads import usable_cores


def test_two_process_ddp_run_writes_one_report(tmp_path, tiny_data_dir):
    """In float32, where ``model.volume_im2col=auto`` times the volume's kernels: the first
    process times them and both take its choice (a broadcast every process must reach). Each
    process starts its loader workers from a fork server of its own."""
    result = run_tiny(
        tmp_path,
        tiny_data_dir,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.num_workers=1",
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
    assert "volume convolution: " in rank0 and "volume convolution: " not in rank1
    adopted = "volume convolution in this process: "
    kernels = [log.split(adopted)[1].splitlines()[0] for log in (rank0, rank1)]
    assert kernels[0] == kernels[1]
    # the two processes share the cores, as Lightning would share them (not one each)
    share = max(1, usable_cores() // 2)
    for log in (rank0, rank1):
        cores = usable_cores()
        assert f"torch threads: {share} ({cores} cores shared by the run's 2 DDP processes; " in log


#: 2 CPU processes over gloo.
TWO_PROCESSES = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")


def test_ddp_processes_forked_from_the_first_start_their_own_loader_workers(
    tmp_path, tiny_data_dir
):
    """``trainer.strategy=ddp_fork``: the processes are forked from the first after its
    trainer is built. A fork server started there would be no child of theirs (its record,
    inherited, failed them with "No child processes"): each starts its own."""
    result = run_tiny(
        tmp_path,
        tiny_data_dir,
        *TWO_PROCESSES,
        "trainer.strategy=ddp_fork",
        "trainer.max_epochs=1",
        "data.num_workers=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"


def test_a_ddp_run_with_loader_workers_runs_from_the_folder_above_a_clone(tmp_path, tiny_data_dir):
    """The installed command, started from a folder that holds one named crackseg (a clone):
    the fork server of each process's loader workers imported that folder as crackseg, and
    every worker failed ("cannot import name 'CONFIG_DIR' from 'crackseg'")."""
    (tmp_path / "crackseg").mkdir()
    command = Path(sys.executable).parent / "crackseg-train"  # as installed (make install)
    run_dir = tmp_path / "run"
    settings = [*TINY, *TWO_PROCESSES, "trainer.max_epochs=1", "data.num_workers=1"]
    args = [*settings, f"paths.data_dir={tiny_data_dir}", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        [str(command), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, ended whole if it hangs
    )
    try:
        _, stderr = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_a_sweep_runs_its_ddp_jobs_one_after_another(tmp_path, tiny_data_dir):
    """Lightning starts rank 1 with the sweep's own command line, so rank 1 runs the sweep
    too, job after job in step with rank 0, and writes no summary of its own (its Hydra
    logs go to the jobs' folders; to a second sweep folder where the folder's name holds the
    time it started). Each job's run folder is rank 0's and whole. In bf16 with
    channels_last, as an AMX machine trains: every gradient has its parameter's layout,
    which DDP's buckets take (a gradient of another it copies, with a warning)."""
    result = run_entry(
        "train",
        "-m",
        *TINY,
        *TWO_PROCESSES,
        "trainer.precision=bf16-mixed",
        "model.channels_last=true",
        "trainer.max_epochs=1",
        "seed=0,1",
        f"paths.data_dir={tiny_data_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in result.stderr
    for seed, job in enumerate(("0_seed=0", "1_seed=1")):
        config = (tmp_path / "sweep" / job / ".hydra" / "config.yaml").read_text()
        assert f"\nseed: {seed}\n" in config
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert (tmp_path / "sweep" / job / "train_ddp_process_1.log").is_file()
        assert (
            metrics["tp"] + metrics["fn"] + metrics["tn"] + metrics["fp"] == metrics["test_samples"]
        )
    assert "2 jobs: 2 finished" in (tmp_path / "sweep" / "summary.md").read_text()


def test_a_local_parallel_sweep_of_ddp_jobs_is_refused_before_any_job(tmp_path):
    result = run_entry(
        "train",
        "-m",
        "hydra/launcher=local_parallel",
        *TWO_PROCESSES,
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert "jobs of a local parallel sweep run side by side" in one_line_error(result)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "to_every_process", [True, False], ids=["Ctrl-C to both", "SIGTERM to the first"]
)
def test_a_stopped_ddp_run_stops_every_process_with_a_checkpoint(
    tmp_path, tiny_data_dir, to_every_process
):
    """A signal that lands while the other process is inside a collective (the gradients'
    all-reduce) must not leave the two waiting on each other: they stop together. Ctrl-C
    reaches their loader workers and fork servers too, which leave it to them."""
    run_dir = tmp_path / "run"
    log = (tmp_path / "stderr.txt").open("w")  # not a pipe, which the run could fill
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crackseg.train",
            *TINY,
            *TWO_PROCESSES,
            "trainer.precision=32-true",
            "trainer.max_epochs=200",
            "data.num_workers=1",
            f"paths.data_dir={tiny_data_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch ended"
            time.sleep(0.05)
        time.sleep(1.0)  # into the next epoch's batches
        if to_every_process:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert 0 < saved["epoch"] < 200


@pytest.mark.parametrize("where", ["test", "test-late"])
def test_a_sigterm_during_the_last_test_batch_stops_every_process(tmp_path, tiny_data_dir, where):
    """While testing, each process only notes a SIGTERM (the other may be inside a gather):
    they agree on it after every test batch and stop together, the last batch too (not
    finished: interrupted, exit 143). ``test-late``: the signal reaches the second process
    as its test loop starts, before the loop's first hook, where a handler of Lightning's
    would broadcast while the first process waits at the agreement."""
    run_dir, marker = tmp_path / "run", tmp_path / "testing"
    process = start_train(
        marker,
        *TINY,
        *TWO_PROCESSES,
        "trainer.max_epochs=1",
        f"paths.data_dir={tiny_data_dir}",
        f"hydra.run.dir={run_dir}",
        "+callbacks.stall._target_=stall_callback.StallAt",
        epoch=0,
        batch=where,
        new_session=True,
    )
    try:
        wait_for_stall(process, marker)
        process.send_signal(signal.SIGTERM)  # to the first process: it tells the other
        assert process.wait(timeout=120) == 143
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "report.md").exists()
    said = [line for line in process.stderr.read().splitlines() if line.startswith("stopped:")]
    assert said == [f"stopped: continue with crackseg-train resume={run_dir}"]  # once, not twice


def test_a_stop_is_said_by_the_first_process_and_an_error_by_each(monkeypatch, capsys):
    """Every process is stopped, and the first says so; an error may be one process's alone
    (its GPU out of memory), and Lightning ends the first without a word: each says its own."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    from crackseg.runs.lifecycle import tell_user

    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    tell_user("stopped: continue with crackseg-train resume=run")
    tell_user("error: out of memory on the GPU")
    assert capsys.readouterr().err == "error: process 1: out of memory on the GPU\n"
