"""Surviving faults: kill and resume, signals, reproducibility, run folders, bad settings."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    METRIC_KEYS,
    REPO,
    TINY,
    one_line_error,
    run_entry,
    run_tiny,
    tensorboard_hparams,
)
from helpers.stalled_runs import HELPERS, start_train, wait_for_stall
from omegaconf import OmegaConf
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crackseg.atomic import atomic_write_text, remove_partial_writes
from crackseg.data.sampler import BalancedNegativeSampler
from crackseg.error_lines import one_line
from crackseg.errors import RunFolderError
from crackseg.run_files import LOCK_FILE
from crackseg.runs.config_changes import config_differences
from crackseg.runs.ownership import claim_run_folder, refuse_used_folder, release_run_folder
from crackseg.runs.status import resume_checkpoint
from crackseg.runs.trainer import AtomicCheckpointIO
from crackseg.runs.training_control import StopCheckpoint

#: A tiny run with augmentation, three epochs (validation after the second and the last),
#: deterministic, with the stall callback of tests/helpers in its config.
FAULT_SETTINGS = [
    "trainer.max_epochs=3",
    "validation_n_epochs=2",
    "data.augment.enabled=true",
    "trainer.deterministic=true",
    "+callbacks.stall._target_=stall_callback.StallAt",
]
FAULT_RUN = [*TINY, *FAULT_SETTINGS]


def train(run_dir: Path, data_dir: Path, *extra: str):
    env = {"PYTHONPATH": str(HELPERS)}
    return run_tiny(run_dir, data_dir, *FAULT_SETTINGS, *extra, env=env)


def metrics_of(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in METRIC_KEYS}


def start_and_stall(
    marker: Path, *args: str, epoch: int, batch: int | str, env: dict | None = None
) -> subprocess.Popen:
    """Start the fault run with ``ARGS`` holding still at ``batch`` of ``epoch``; return once
    it holds still there."""
    process = start_train(marker, *args, *FAULT_RUN, epoch=epoch, batch=batch, env=env)
    wait_for_stall(process, marker)
    return process


def stall_run(run_dir: Path, data_dir: Path, epoch: int, batch: int | str) -> subprocess.Popen:
    return start_and_stall(
        run_dir.parent / f"{run_dir.name}.stalled",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        epoch=epoch,
        batch=batch,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data_dir) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    result = train(run_dir, tiny_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_two_seeded_deterministic_runs_have_identical_metrics(reference, tiny_data_dir, tmp_path):
    result = train(tmp_path / "again", tiny_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(tmp_path / "again") == metrics_of(reference)
    info = json.loads((reference / "run_info.json").read_text())
    assert info["crackseg_version"] and "git_commit" in info and info["command"]
    assert (reference / ".hydra" / "config.yaml").is_file()


def logged_steps(run_dir: Path) -> dict[str, list[int]]:
    """The steps each scalar and image tag was logged at, as TensorBoard reads the events."""
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return steps | {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_sigkill_after_a_validation_then_resume_ends_as_the_uninterrupted_run(
    reference, tiny_data_dir, tmp_path
):
    """Killed after epoch 1 was validated and logged, before any checkpoint of it: the run
    trains epoch 1 again from epoch 0's last.ckpt, and TensorBoard shows each step once."""
    run_dir = tmp_path / "killed"
    process = stall_run(run_dir, tiny_data_dir, epoch=1, batch="val")
    # while it runs the folder is its own: other commands are refused and write nothing
    before = _tree_digest(run_dir)
    holder = f"in use by another process (pid {process.pid} on host {platform.node()})"
    assert holder in one_line_error(run_entry("train", f"resume={run_dir}"))
    predict = run_entry("predict", "ckpt_path=a.ckpt", "input=a.png", f"hydra.run.dir={run_dir}")
    assert holder in one_line_error(predict)
    assert _tree_digest(run_dir) == before
    process.kill()  # SIGKILL: nothing runs after it; epoch 0's last.ckpt is what is left
    process.wait()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    assert not (run_dir / "metrics.json").exists()

    # a resumption with other settings is refused and changes nothing
    changed = one_line_error(train(run_dir, tiny_data_dir, "resume=auto", "seed=1"))
    assert "seed: 0 -> 1" in changed

    # the same command with resume=auto continues the run from its last checkpoint
    result = train(run_dir, tiny_data_dir, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(run_dir) == metrics_of(reference)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed"][0]["checkpoint"].endswith("last.ckpt")
    # 28 training images in batches of 8: 4 steps an epoch; validation after epochs 1 and 2
    # (steps 7 and 11), epoch 1's twice before the resume, and the tested weights' after
    # training (12), apart from the curve of the epochs
    steps = logged_steps(run_dir)
    assert steps["val/image_ap"] == steps["val/predictions"] == [7, 11]
    assert steps["val_tested/image_ap"] == steps["val_tested/predictions"] == [12]
    # the HParams tab's test metrics at the last step too: a run killed as it wrote its
    # report logs them again after the checkpoint's step, which its resumption purges
    assert steps["hparams/image_ap"] == steps["hparams/dice_mean"] == [12]
    assert steps == logged_steps(reference)


def test_a_resumed_run_keeps_the_csv_rows_logged_before_its_checkpoint(tmp_path) -> None:
    """Lightning's CSV writer deletes the metrics.csv it finds: the epochs logged before a
    kill were lost from a resumed run's file, those after it logged again."""
    from crackseg.runs.trainer import build_logger

    cfg = OmegaConf.create(
        {
            "logger": {
                "_target_": "pytorch_lightning.loggers.CSVLogger",
                "save_dir": str(tmp_path),
                "name": "csv",
                "version": "",
            }
        }
    )
    (tmp_path / "csv").mkdir()
    before = "epoch,step,train/loss,val/image_ap\n0,3,0.5,\n1,7,0.25,0.75\n2,11,0.125,\n"
    (tmp_path / "csv" / "metrics.csv").write_text(before)
    logger = build_logger(cfg, resume_step=8)  # the checkpoint after step 7
    logger.log_metrics({"train/loss": 0.2, "epoch": 2}, step=11)
    logger.save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert rows == ["epoch,step,train/loss,val/image_ap", "0,3,0.5,", "1,7,0.25,0.75", "2,11,0.2,"]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["metrics.csv"]
    # killed after the file was set aside, before it was written again: the next resume
    # reads it from where it was set
    (tmp_path / "csv" / "metrics.csv").rename(tmp_path / "csv" / "metrics.csv.before-resume")
    logger = build_logger(cfg, resume_step=8)
    logger.save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert rows == ["epoch,step,train/loss,val/image_ap", "0,3,0.5,", "1,7,0.25,0.75"]


def test_a_run_killed_before_its_first_checkpoint_frees_its_folder_and_keeps_its_settings(
    tiny_data_dir, tmp_path
):
    """The folder's lock dies with the process, although its data loader workers (forked
    while it held the lock) may outlive it for seconds; resuming it with another seed is
    refused by the settings in .hydra/ as there is no checkpoint to compare with."""
    run_dir = tmp_path / "early"
    workers = "data.num_workers=2"
    marker = tmp_path / "stalled"
    args = [f"paths.data_dir={tiny_data_dir}", f"hydra.run.dir={run_dir}", "seed=3", workers]
    process = start_train(marker, *FAULT_RUN, *args, epoch=0, batch=0)
    wait_for_stall(process, marker)
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == process.pid
    process.kill()
    process.wait()
    claim_run_folder(run_dir)  # at once: refused while anything still held the lock
    release_run_folder(run_dir)
    started_with = (run_dir / ".hydra" / "config.yaml").read_bytes()
    line = one_line_error(train(run_dir, tiny_data_dir, workers, "resume=auto", "seed=4"))
    assert "(data.seed: 3 -> 4; seed: 3 -> 4)" in line  # trainer.precision=auto is no change
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == started_with
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"


def test_of_two_runs_started_in_one_folder_one_is_refused_and_writes_nothing(
    tiny_data_dir, tmp_path
):
    """Both start at once; the one that locks the folder first holds it to its end (here
    holding still at its first batch until the other has given up)."""
    run_dir = tmp_path / "contested"
    racers = {}
    for name in ("racer_a", "racer_b"):
        marker = tmp_path / f"{name}.stalled"
        args = [*TINY, "trainer.max_epochs=1", "+callbacks.stall._target_=stall_callback.StallAt"]
        args += [f"paths.data_dir={tiny_data_dir}", f"hydra.run.dir={run_dir}", f"run_name={name}"]
        racers[name] = (marker, start_train(marker, *args, epoch=0, batch=0))
    try:
        deadline = time.monotonic() + 300
        while all(process.poll() is None for _, process in racers.values()):
            assert not all(marker.exists() for marker, _ in racers.values()), "both run"
            assert time.monotonic() < deadline, "neither run reached its first batch"
            time.sleep(0.05)
        (loser,) = [name for name, (_, process) in racers.items() if process.poll() is not None]
        (winner,) = set(racers) - {loser}
        refused = racers[loser][1]
        stderr = refused.stderr.read()
        line = one_line_error(subprocess.CompletedProcess([], refused.returncode, "", stderr))
        winner_marker, holder = racers[winner]
        assert f"pid {holder.pid} on host {platform.node()}" in line
        wait_for_stall(holder, winner_marker)
        winner_marker.unlink()  # let it go on
        assert holder.wait(timeout=300) == 0, holder.stderr.read()[-3000:]
    finally:
        for _, process in racers.values():
            process.kill()
            process.wait()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["pid"], info["host"]) == (holder.pid, platform.node())
    assert f"run_name={winner}" in info["command"]
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").run_name == winner
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert f"run_name: {winner}" in saved["hyper_parameters"]["run_config"]
    assert set(json.loads((run_dir / "metrics.json").read_text())) >= METRIC_KEYS
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if loser.encode() in p.read_bytes()]


def test_a_folder_of_the_users_is_refused_where_a_run_would_overwrite_its_files(
    tiny_data_dir, tmp_path
):
    """``hydra.run.dir`` at a folder crackseg did not write (no status), holding files by the
    names a run writes: refused before the run writes into it; they are left as they were.
    The same holds for an evaluation, prediction or export (refuse_used_folder)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.md", "metrics.json", "notes.txt"):
        (mine / name).write_text(f"my {name}\n")
    line = one_line_error(run_tiny(mine, tiny_data_dir))
    assert line == (
        f"error: {mine} holds files that are not a run's, which it would overwrite "
        "(report.md, metrics.json); choose another hydra.run.dir"
    )
    assert [(mine / n).read_text() for n in ("report.md", "metrics.json", "notes.txt")] == [
        "my report.md\n",
        "my metrics.json\n",
        "my notes.txt\n",
    ]
    with pytest.raises(RunFolderError, match="holds files that are not a run's"):
        refuse_used_folder(mine, "predict")
    (mine / "report.md").unlink(), (mine / "metrics.json").unlink()
    refuse_used_folder(mine, "predict")  # a folder of other files is the user's choice


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_empty_folder_override_is_refused_before_anything_is_written(key, tmp_path):
    """``hydra.run.dir=$UNSET`` would make the folder the command runs in the run's."""
    result = subprocess.run(
        [sys.executable, "-m", "crackseg.train", f"{key}="],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert (
        one_line_error(result)
        == f"error: {key} is empty: give the folder (an unset shell variable?)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_resume_folder_is_refused_and_left_untouched(tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "images" / "a.png").write_bytes(b"an image")
    before = (sorted(dataset.rglob("*")), _tree_digest(dataset))
    line = one_line_error(run_entry("train", f"resume={dataset}"))
    assert line == f"error: resume={dataset} is not a run folder (no .hydra/config.yaml)"
    assert (sorted(dataset.rglob("*")), _tree_digest(dataset)) == before
    missing = tmp_path / "no_such_run"
    line = one_line_error(run_entry("train", f"resume={missing}"))
    assert line == f"error: resume={missing}: no such folder"
    assert not missing.exists()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    line = one_line_error(run_entry("train", f"resume={checkpoint}"))
    advice = f"resume= takes its run's folder (resume={tmp_path / 'run'})"
    assert line == f"error: resume={checkpoint} is a checkpoint: {advice}"
    assert checkpoint.read_bytes() == b"weights"
    slurm = tmp_path / "run" / "hpc_ckpt_1.ckpt"  # Lightning's, in the run folder itself
    slurm.write_bytes(b"weights")
    line = one_line_error(run_entry("train", f"resume={slurm}"))
    assert line == f"error: resume={slurm} is a checkpoint: {advice}"


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(reference, tiny_data_dir, tmp_path):
    """Ctrl-C is turned into a SIGTERM (which test_faults_new_user.py stops and resumes at
    every point of a run)."""
    run_dir = tmp_path / "stopped"
    process = stall_run(run_dir, tiny_data_dir, epoch=1, batch=2)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 143
    assert "resume=" in process.stderr.read()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert saved["epoch"] == 1
    assert saved["CrackDataModule"]["batches_done"] == 3  # batches 0, 1 and 2 of epoch 1

    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is not empty" not in result.stderr  # Lightning's warning: its own checkpoints
    assert metrics_of(run_dir) == metrics_of(reference)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    # The interrupted epoch logs the mean of all its batches, those before the stop included:
    # the checkpoint carried the epoch's running sums.
    history = json.loads((run_dir / "history.json").read_text())
    assert history == json.loads((reference / "history.json").read_text())
    # the settings it was started with, not the resume= it was continued with
    assert tensorboard_hparams(run_dir) == tensorboard_hparams(reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_to_the_process_group_stops_the_run_not_its_loader_workers(
    signum, tiny_data_dir, tmp_path
):
    """Ctrl-C, ``timeout``, ``kill -- -PGID`` and SLURM signal the whole process group, the
    data loader's workers included: the run stops as one (143, interrupted.ckpt after the
    batch under way), and does not fail on a worker killed by the signal; it resumes."""
    run_dir = tmp_path / "stopped"
    marker = tmp_path / "stalled"
    with_workers = [*FAULT_RUN, "data.num_workers=2"]  # the last of two values counts
    args = [f"paths.data_dir={tiny_data_dir}", f"hydra.run.dir={run_dir}", *with_workers]
    process = start_train(marker, *args, epoch=1, batch=2, new_session=True)
    wait_for_stall(process, marker)
    os.killpg(process.pid, signum)
    assert process.wait(timeout=120) == 143, process.stderr.read()[-3000:]
    assert process.stderr.read().strip().splitlines()[-1].startswith("stopped:")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert (saved["epoch"], saved["CrackDataModule"]["batches_done"]) == (1, 3)
    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_a_sigterm_before_lightnings_loops_stops_the_run_as_one(reference, tiny_data_dir, tmp_path):
    """SIGTERM while the training is set up, before Lightning handles SIGTERM itself: the run
    stops as Ctrl-C stops it (143, one stopped line, status interrupted), not killed with its
    status left running; resumed, it trains from the start to the uninterrupted run's end."""
    run_dir = tmp_path / "stopped"
    process = stall_run(run_dir, tiny_data_dir, epoch=0, batch="setup")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    lines = process.stderr.read().strip().splitlines()
    assert lines[-1].startswith("stopped:") and f"resume={run_dir}" in lines[-1]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(run_dir) == metrics_of(reference)


def test_a_sigterm_while_the_thresholds_are_chosen_stops_the_run(
    reference, tiny_data_dir, tmp_path
):
    """At the end of the validation after training, where Lightning only notes a SIGTERM
    (it stops a loop before its last batch): the run stops there, not after its test."""
    run_dir = tmp_path / "stopped"
    process = stall_run(run_dir, tiny_data_dir, epoch=0, batch="chosen")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert process.stderr.read().strip().splitlines()[-1].startswith("stopped:")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()
    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(run_dir) == metrics_of(reference)


def test_a_sigterm_during_the_last_test_batch_stops_a_sweep_before_its_next_job(
    tiny_data_dir, tmp_path
):
    """Lightning finishes its test's last batch with a SIGTERM only noted: the job ended
    finished and the sweep went on to its next job, as if no signal had come. It stops
    after that batch, as after any other."""
    sweep = tmp_path / "sweep"
    command = ["-m", "seed=0,1", f"paths.data_dir={tiny_data_dir}", f"hydra.sweep.dir={sweep}"]
    process = start_and_stall(tmp_path / "testing", *command, epoch=0, batch="test")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert process.stderr.read().strip().splitlines()[-1] == (
        f"stopped: continue with the same command and hydra.sweep.dir={sweep}"
    )
    (job,) = [p for p in sweep.iterdir() if p.is_dir()]  # the second never started
    assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
    assert not (job / "report.md").exists()
    assert "1 job: 0 finished, 0 failed, 1 unfinished" in (sweep / "summary.md").read_text()


def test_a_sigterm_between_a_sweeps_jobs_stops_it_as_ctrl_c():
    """Between jobs (Hydra setting up the next) SIGTERM had its default action: the sweep's
    process died at once, without its summary or a line."""
    from crackseg.runs.multirun import restore_signal_handlers, stop_between_jobs_as_ctrl_c

    before = signal.getsignal(signal.SIGTERM)
    stop_between_jobs_as_ctrl_c()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        restore_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_moved_run_folder_resumes(reference, tiny_data_dir, tmp_path):
    """Run folders may be moved or copied (which does not keep the files' times): the new
    place is not a changed setting, and the checkpoint is chosen by its step."""
    stopped = tmp_path / "stopped"
    process = stall_run(stopped, tiny_data_dir, epoch=1, batch=2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    last = stopped / "checkpoints" / "last.ckpt"
    os.utime(last, ns=(time.time_ns() + 10**10,) * 2)  # newer than interrupted.ckpt, earlier step
    copied = tmp_path / "copied"
    shutil.copytree(stopped, copied)
    moved = tmp_path / "moved"
    stopped.rename(moved)

    result = run_entry("train", f"resume={moved}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(moved) == metrics_of(reference)
    result = train(copied, tiny_data_dir, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(copied) == metrics_of(reference)
    resumed = json.loads((copied / "run_info.json").read_text())["resumed"]
    assert resumed[0]["checkpoint"].endswith("interrupted.ckpt")


def test_a_run_folder_moved_after_a_validation_keeps_its_best_checkpoint(
    reference, tiny_data_dir, tmp_path
):
    """The checkpoint callback's state names the old folder: resumed in the new one, it
    keeps its best score and best checkpoint, so the run ends with the uninterrupted run's
    checkpoints and is tested on the same best weights."""
    stopped = tmp_path / "stopped"
    process = stall_run(stopped, tiny_data_dir, epoch=2, batch=1)  # validated after epoch 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    moved = tmp_path / "moved"
    stopped.rename(moved)
    result = run_entry("train", f"resume={moved}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(moved) == metrics_of(reference)
    names = [sorted(p.name for p in (d / "checkpoints").iterdir()) for d in (moved, reference)]
    assert names[0] == names[1]
    assert "dirpath has changed" not in result.stderr


def test_resume_takes_the_checkpoint_of_the_latest_step(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name, step, mtime in [("last.ckpt", 12, 2), ("interrupted.ckpt", 15, 1)]:
        torch.save({"global_step": step}, tmp_path / "checkpoints" / name)
        os.utime(tmp_path / "checkpoints" / name, (mtime, mtime))
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "interrupted.ckpt"
    torch.save({"global_step": 15}, tmp_path / "hpc_ckpt_1.ckpt")  # same step, newer file
    assert resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"


def test_resume_compares_the_run_settings_not_its_place_or_its_gpu():
    saved = OmegaConf.create(
        {
            "seed": 0,
            "paths": {"output_dir": "a"},
            "trainer": {"devices": [0]},
            "callbacks": {"last": {"dirpath": "a/checkpoints"}},
        }
    )
    moved = OmegaConf.create(
        {
            "seed": 0,
            "paths": {"output_dir": "b"},
            "trainer": {"devices": [1]},
            "callbacks": {"last": {"dirpath": "b/checkpoints"}},
        }
    )
    assert config_differences(saved, moved) == []
    moved.trainer.devices = 2
    moved.seed = 1
    assert config_differences(saved, moved) == ["seed: 0 -> 1", "trainer.devices: [0] -> 2"]


def test_a_run_refused_for_its_settings_may_be_started_again_in_its_folder(tiny_data_dir, tmp_path):
    """A config or data error leaves a failed run without a checkpoint: nothing to resume,
    so the corrected command may use the same folder."""
    run_dir = tmp_path / "corrected"
    line = one_line_error(run_tiny(run_dir, tiny_data_dir, "data.input_width=100"))
    assert "not divisible by 8" in line
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    # Only a training may use it again: an evaluation leaves the failed run's config be.
    saved = (run_dir / ".hydra" / "config.yaml").read_bytes()
    line = one_line_error(run_entry("eval", "ckpt_path=x.ckpt", f"hydra.run.dir={run_dir}"))
    assert "already holds a command that failed (input width 100" in line
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == saved
    # What an earlier attempt wrote before failing without last.ckpt (a validation inside
    # its first epoch saved a best checkpoint) is not left for the new run's.
    stale = [run_dir / "checkpoints" / "best-epoch009.ckpt", run_dir / "tensorboard" / "e.1"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"earlier attempt")
    result = run_tiny(run_dir, tiny_data_dir, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").data.input_width == 128
    assert not any(path.exists() for path in stale)
    assert [p.name for p in (run_dir / "checkpoints").glob("best-*")] == ["best-epoch000.ckpt"]
    log = (run_dir / "train.log").read_text()
    assert "not divisible by 8" in log  # the earlier attempt's error, in its log
    assert "removed what its earlier attempt wrote (checkpoints, tensorboard)" in log


def test_a_training_is_refused_the_folder_of_another_command_that_failed(tiny_data_dir, tmp_path):
    """A training may start again where a training failed, removing what that wrote; where
    an evaluation failed after writing its outputs, they are not a training's to remove."""
    run_dir = tmp_path / "evaluated"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: eval\n")
    (run_dir / "status.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    (run_dir / "metrics.json").write_text("{}")
    line = one_line_error(run_tiny(run_dir, tiny_data_dir, "trainer.max_epochs=1"))
    assert line == f"error: {run_dir} holds a run of crackseg-eval; choose another hydra.run.dir"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "metrics.json", "status.json"]
    assert (run_dir / ".hydra" / "hydra.yaml").read_text().endswith("name: eval\n")


def test_a_file_system_error_says_cannot_write_only_for_a_write_that_did_not_fit():
    unreadable = OSError(errno.EACCES, os.strerror(errno.EACCES), "run/checkpoints/last.ckpt")
    assert one_line(unreadable) == "run/checkpoints/last.ckpt: Permission denied"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "run/metrics.json")
    assert one_line(full) == "cannot write run/metrics.json: No space left on device"


def test_running_out_of_memory_on_the_cpu_or_a_gpu_says_what_to_lower():
    advice = "lower the batch size or the size of the images (or tiles)"
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert one_line(cpu) == f"out of memory: could not allocate 4.0 GiB; {advice}"
    # raised again from a data loader's worker, with the worker's traceback in its text
    worker = RuntimeError(f"Caught RuntimeError in DataLoader worker process 0.\n{cpu}")
    assert one_line(worker) == f"out of memory: could not allocate 4.0 GiB; {advice}"
    gpu = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 "
        "GiB of which 1.06 GiB is free."
    )
    assert one_line(gpu) == f"out of memory on the GPU: could not allocate 2.00 GiB; {advice}"
    assert one_line(RuntimeError("shapes cannot be multiplied")) == "shapes cannot be multiplied"


def test_a_sweep_run_again_resumes_its_killed_job(reference, tiny_data_dir, tmp_path):
    sweep = ["-m", f"paths.data_dir={tiny_data_dir}", f"hydra.sweep.dir={tmp_path}/sweep", "seed=0"]
    process = start_and_stall(tmp_path / "stalled", *sweep, epoch=2, batch=1)
    process.kill()
    process.wait()
    job = tmp_path / "sweep" / "0"  # nothing is swept: the job folder is its number alone
    assert not (job / "metrics.json").exists()
    # its checkpoint damaged, the job fails, and so does the sweep, naming it
    last = job / "checkpoints" / "last.ckpt"
    kept = last.read_bytes()
    last.write_bytes(kept[:1000])
    result = run_entry("train", *sweep, *FAULT_RUN, env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: 1 of 1 jobs failed" in result.stderr
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith(f"cannot read checkpoint {last}: truncated or damaged")
    # repaired, it goes on from where it stopped
    last.write_bytes(kept)
    result = run_entry("train", *sweep, *FAULT_RUN, env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(job) == metrics_of(reference)
    assert json.loads((job / "run_info.json").read_text())["resumed"]


#: What SLURM sets in a batch job (one task), enough for Lightning to detect it.
#: A job of the cluster launcher (hydra/launcher=slurm), which submitit starts.
SLURM_JOB = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "crackseg",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


@pytest.mark.parametrize(
    ("job", "warning"),
    [
        (SLURM_JOB, signal.SIGUSR2),
        ({k: v for k, v in SLURM_JOB.items() if not k.startswith("SUBMITIT")}, signal.SIGUSR1),
    ],
    ids=["launcher", "sbatch"],
)
def test_on_slurm_the_warning_signal_saves_a_checkpoint_to_resume_from(
    reference, tiny_data_dir, tmp_path, job, warning
):
    """USR2 (what the slurm launcher asks SLURM to send before the time limit), or USR1 in
    a job of a plain sbatch script: Lightning saves hpc_ckpt_1.ckpt and calls `scontrol
    requeue` (absent here); the job resumes, as the requeued job does, on SLURM, and is
    tested on its own chosen weights (Lightning would test a SLURM job on a left-over
    hpc_ckpt instead)."""
    run_dir = tmp_path / "slurm"
    process = start_and_stall(
        tmp_path / "stalled",
        f"paths.data_dir={tiny_data_dir}",
        f"hydra.run.dir={run_dir}",
        epoch=1,
        batch=2,
        env=job,
    )
    process.send_signal(warning)
    deadline = time.monotonic() + 120
    while not (run_dir / "hpc_ckpt_1.ckpt").exists():
        assert time.monotonic() < deadline, "no checkpoint after the requeue signal"
        time.sleep(0.05)
    # complete once it exists (renamed into place); SLURM kills the job when time is up
    process.kill()
    process.wait()
    env = {"PYTHONPATH": str(HELPERS), **job}
    result = run_entry("train", f"resume={run_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run_dir / "run_info.json").read_text())["resumed"]
    assert resumed[0]["checkpoint"].endswith("hpc_ckpt_1.ckpt")
    assert metrics_of(run_dir) == metrics_of(reference)
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # as the uninterrupted run's folder


@pytest.mark.parametrize(("command", "requeued"), [("train", True), ("eval", False)])
def test_on_slurm_a_training_is_requeued_and_an_evaluation_is_not(
    monkeypatch, tmp_path, command, requeued
):
    """An evaluation cannot resume: requeued at its job's warning signal, it would be
    refused by its own folder."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from crackseg.runs.trainer import build_trainer

    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    config = OmegaConf.load(REPO / "conf" / f"{command}.yaml")
    cfg = OmegaConf.create(
        {
            **{key: config[key] for key in ("slurm_requeue",) if key in config},
            "trainer": {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu"},
        }
    )
    cfg.trainer.default_root_dir = str(tmp_path)
    environment = build_trainer(cfg, [])._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue is requeued


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_run_folder_is_written_only_to_resume_its_own_run(reference, tiny_data_dir):
    before = _tree_digest(reference)
    line = one_line_error(train(reference, tiny_data_dir))
    assert line == f"error: {reference} holds a run that finished; choose another hydra.run.dir"
    line = one_line_error(run_entry("train", f"resume={reference}"))
    assert "already finished" in line
    line = one_line_error(run_entry("train", f"resume={reference}", "seed=3"))
    assert "drop seed=3" in line
    best = next((reference / "checkpoints").glob("best*.ckpt"))
    line = one_line_error(run_entry("eval", f"ckpt_path={best}", f"hydra.run.dir={reference}"))
    assert "already holds a run" in line
    assert _tree_digest(reference) == before  # the refusals were not even logged there


def test_sampler_state_round_trips_through_a_checkpoint(tmp_path):
    def make() -> BalancedNegativeSampler:
        return BalancedNegativeSampler(
            list(range(12)), list(range(12, 17)), seed=4, augmentation_seeds=True
        )

    first = make()
    for epoch in range(3):
        first.set_epoch(epoch)
        list(first)
    path = tmp_path / "sampler.pt"
    torch.save(first.state_dict(), path)
    second = make()
    second.load_state_dict(torch.load(path, weights_only=True))
    assert second.epoch == 2
    np.testing.assert_array_equal(second.usage_counts(2), first.usage_counts(2))
    second.set_epoch(2)
    assert list(second) == list(first)  # the same samples with the same augmentation seeds
    # resuming after 8 items of the epoch yields exactly the rest of it
    second.resume_at(2, 8)
    assert list(second) == list(first)[8:]
    assert list(second) == list(first)  # the skip applies once


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_writes_keep_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    report = tmp_path / "report.md"
    atomic_write_text(report, "good")
    checkpoint = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, checkpoint)

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full_disk(self, None))
    with pytest.raises(OSError, match="No space"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, checkpoint)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(report, "half")
    monkeypatch.undo()
    assert report.read_text() == "good"
    assert report.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would make it
    assert torch.load(checkpoint, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "report.md"]
    # what a kill in the middle of a write leaves behind is removed when the run resumes
    (tmp_path / ".last.partial-x1y2.ckpt").write_bytes(b"half")
    assert remove_partial_writes(tmp_path) == [tmp_path / ".last.partial-x1y2.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "report.md"]


@pytest.mark.parametrize("name", ["x" * 236 + ".png", "x." + "y" * 238])
def test_a_file_name_of_240_characters_is_written_atomically(tmp_path, name):
    """The temporary file beside it has a short name of its own."""
    atomic_write_text(tmp_path / name, "whole")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "whole"


def test_a_file_name_too_long_for_the_file_system_is_named_and_nothing_left(tmp_path):
    path = tmp_path / ("x" * 252 + ".png")  # 256 bytes
    with pytest.raises(OSError) as raised:
        atomic_write_text(path, "whole")
    assert raised.value.errno == errno.ENAMETOOLONG and raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_a_name_too_long_is_one_line(tmp_path):
    run_dir = tmp_path / ("n" * 256) / "run"
    line = one_line_error(run_entry("predict", "input=photos", f"hydra.run.dir={run_dir}"))
    assert line == f"error: cannot set up the run folder: {run_dir}: File name too long"


def test_a_full_disk_ends_the_run_with_one_line_and_no_complete_looking_folder(
    tmp_path, tiny_data_dir
):
    """A file size limit makes the first checkpoint write fail as a full disk would. The
    progress bar is on, its output and the error's in one stream, as on a terminal."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run_dir = tmp_path / "full"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crackseg.train",
            *TINY,
            "trainer.enable_progress_bar=true",
            f"paths.data_dir={tiny_data_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limit_file_size,
        timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout[-3000:]
    errors = [line for line in result.stdout.split("\n") if "error:" in line]
    # on a line of its own (not after the bar), naming the file that could not be written
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert errors[0].startswith(f"error: cannot write {run_dir / 'checkpoints'}/"), errors
    assert errors[0].endswith(".ckpt: File too large"), errors
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "report.md").exists()
    leftovers = [p.name for p in (run_dir / "checkpoints").glob("*")] if run_dir.exists() else []
    assert leftovers == []  # no truncated checkpoint, no temporary file


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_line_error(run_entry("train", f"hydra.run.dir={blocker}/run"))
    assert line == f"error: cannot set up the run folder: {blocker}/run: Not a directory"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data=nope", "Could not find 'data/nope'"),
        ("data.dilat=3", "data.dilat is not a setting (did you mean data.dilate?)"),
        ("trainer.max_epochs=ten", "trainer.max_epochs must be an integer >= 1, not 'ten'"),
        ("trainer.max_epochs=-2", "trainer.max_epochs must be an integer >= 1, not -2"),
        ("loss.weighted_seg_p=-1", "loss.weighted_seg_p must be a number >= 0"),
        ("data.dilate=0", "data.dilate must be an odd integer >= 1"),
        ("data.dilate=4", "data.dilate must be an odd integer >= 1"),
        ("data.input_width=100", "not divisible by 8"),
        ("trainer.accelerator=tpu", "trainer.accelerator must be auto, cpu, gpu, cuda, mps"),
        ("trainer.devices=0", "trainer.devices must be an integer >= 1, -1 (all), auto or"),
        ("trainer.precision=17", "trainer.precision must be auto, 32-true"),
        ("trainer.precision=bf16-true", "auto, 32-true, 32, bf16-mixed, bf16, 16-mixed, 16"),
        pytest.param(
            "trainer.accelerator=gpu",
            "trainer.accelerator=gpu, but no CUDA GPU is visible here",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="needs a machine without GPU"
            ),
        ),
    ],
)
def test_a_bad_setting_is_refused_before_any_data_is_read(override, expected, tmp_path):
    data_dir = tmp_path / "data"
    line = one_line_error(
        run_entry("train", override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/r")
    )
    assert expected in line
    assert not data_dir.exists()  # the synthetic set was not even generated


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"SUBMITIT_EXECUTOR": "slurm"}, signal.SIGUSR2),  # hydra/launcher=slurm's default
        ({"SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_PREEMPT_SIGNAL": "USR1"}, signal.SIGUSR1),
        ({}, signal.SIGUSR1),  # a plain sbatch script, as Lightning documents it
        ({"SUBMITIT_PREEMPT_SIGNAL": "USR2"}, signal.SIGUSR1),  # a stray setting, no submitit
    ],
)
def test_the_requeue_signal_is_the_launchers_or_lightnings(monkeypatch, environment, expected):
    from crackseg.runs.trainer import requeue_signal

    for name in ("SUBMITIT_EXECUTOR", "SUBMITIT_PREEMPT_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert requeue_signal() == expected


def test_the_requeue_signal_keeps_the_launchers_handler_until_a_stage_is_set_up():
    """submitit's handler (it requeues too) is kept while the data are prepared; it is
    removed at setup, just before Lightning installs its own on the free signal."""
    from crackseg.runs.trainer import FreeTheRequeueSignal, requeue_signal

    launchers = []
    previous = signal.signal(requeue_signal(), lambda *args: launchers.append(args))
    try:
        callback = FreeTheRequeueSignal()
        assert signal.getsignal(requeue_signal()) not in (signal.SIG_DFL, None)
        callback.setup(None, None, "fit")
        assert signal.getsignal(requeue_signal()) == signal.SIG_DFL
        # Lightning gives the default action back as a stage ends (the end of the job, with
        # no checkpoint and its status left running): between stages the warning is logged
        signal.signal(requeue_signal(), signal.SIG_DFL)
        callback.teardown(None, None, "fit")
        os.kill(os.getpid(), requeue_signal())
        assert launchers == []
        callback.setup(None, None, "test")  # the next stage: Lightning's again
        assert signal.getsignal(requeue_signal()) == signal.SIG_DFL
    finally:
        signal.signal(requeue_signal(), previous)


def test_a_run_started_with_a_numeric_precision_resumes_before_its_first_checkpoint(tmp_path):
    """``trainer.precision=32`` is saved as the number 32 and made the string "32" for the
    run: resuming a run that saved no checkpoint compares them as one setting."""
    from crackseg.runs.resume import decide_fresh_or_resumed, resolve_machine_settings

    def config(precision):
        return OmegaConf.create(
            {
                "paths": {"output_dir": str(tmp_path)},
                "resume": "auto",
                "trainer": {"precision": precision, "accelerator": "cpu", "devices": 1},
            }
        )

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(config(32), tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "status.json").write_text(json.dumps({"status": "running"}))
    live = config(32)
    resolve_machine_settings(live)
    cfg, checkpoint = decide_fresh_or_resumed(live, multirun=False, task_overrides=[])
    assert checkpoint is None and cfg.trainer.precision == "32"


class _SignalAtValidation(BoringModel):
    """Sends itself ``count`` SIGTERMs at batch 1 of epoch 1's validation; notes the batches
    each validation reached."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.reached: list[int] = []

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            if self.current_epoch == 1 and batch_idx == 1:
                for _ in range(self.count):
                    os.kill(os.getpid(), signal.SIGTERM)
            self.reached.append(batch_idx)
        return super().validation_step(batch, batch_idx)


class _FailAtEpochEnd(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise ValueError("a failure")


def _boring_fit(tmp_path, model, *callbacks) -> StopCheckpoint:
    stop = StopCheckpoint(str(tmp_path))
    trainer = pl.Trainer(
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=4,
        callbacks=[stop, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return stop


@pytest.mark.parametrize(("count", "reached"), [(1, 4), (2, 2)], ids=["one", "two"])
def test_a_validation_under_way_ends_before_the_stop_unless_signalled_twice(
    tmp_path, count, reached
):
    """One SIGTERM while training: the validation under way ends whole, then the run stops
    (the resumed run keeps that epoch's validation); a second one (a short grace period)
    stops it after the validation batch under way, as Lightning does."""
    model = _SignalAtValidation(count)
    with pytest.raises(SIGTERMException):
        _boring_fit(tmp_path, model)
    assert model.reached == [0, 1, 2, 3] + list(range(reached))  # epoch 0's, then epoch 1's
    saved = torch.load(tmp_path / "interrupted.ckpt", weights_only=False)
    assert saved["epoch"] == (2 if count == 1 else 1)  # after epoch 1's end, or inside it


class _SignalAtLastTestBatch(BoringModel):
    def test_step(self, batch, batch_idx):
        if batch_idx == self.trainer.num_test_batches[0] - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().test_step(batch, batch_idx)

    def on_test_epoch_end(self):
        self.tested = True


def test_a_sigterm_during_the_last_test_batch_stops_the_test_before_its_end(tmp_path):
    """As crackseg-eval tests: Lightning finished the test with the signal only noted, and
    the evaluation ended finished, its report written, as if no signal had come."""
    model = _SignalAtLastTestBatch()
    trainer = pl.Trainer(
        limit_test_batches=3,
        callbacks=[StopCheckpoint(str(tmp_path))],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(SIGTERMException):
        trainer.test(model, verbose=False)
    assert not hasattr(model, "tested")
    assert not (tmp_path / "interrupted.ckpt").exists()  # nothing trained: nothing to save


def test_a_failed_fit_leaves_ctrl_c_as_it_was(tmp_path):
    """Lightning restores, after its call, the handlers it found at its start: the first
    Ctrl-C's handler is taken after that, so a failed fit does not leave it behind."""
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError, match="a failure"):
        _boring_fit(tmp_path, BoringModel(), _FailAtEpochEnd())
    assert signal.getsignal(signal.SIGINT) is before
