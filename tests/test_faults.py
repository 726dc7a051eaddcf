"""Surviving faults: kill and resume, signals, reproducibility, run folders, bad settings."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import METRIC_KEYS, REPO, TINY, one_line_error, run_entry, run_tiny

from crackseg.atomic import AtomicCheckpointIO, atomic_write_text, remove_partial_writes
from crackseg.data.sampler import BalancedNegativeSampler

HELPERS = REPO / "tests" / "helpers"

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
    marker: Path, *args: str, epoch: int, batch: int, env: dict | None = None
) -> subprocess.Popen:
    """Start ``crackseg-train ARGS`` holding still after ``batch`` of ``epoch``; return then."""
    process = subprocess.Popen(
        [sys.executable, "-m", "crackseg.train", *args, *FAULT_RUN],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(HELPERS),
            "CRACKSEG_TEST_STALL": f"{epoch}:{batch}:{marker}",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall point"
        time.sleep(0.05)
    return process


def stall_run(run_dir: Path, data_dir: Path, epoch: int, batch: int) -> subprocess.Popen:
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


def test_sigkill_mid_epoch_then_resume_ends_as_the_uninterrupted_run(
    reference, tiny_data_dir, tmp_path
):
    run_dir = tmp_path / "killed"
    process = stall_run(run_dir, tiny_data_dir, epoch=1, batch=2)
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_saves_a_checkpoint_and_resume_is_exact(
    signum, reference, tiny_data_dir, tmp_path
):
    run_dir = tmp_path / "stopped"
    process = stall_run(run_dir, tiny_data_dir, epoch=1, batch=2)
    process.send_signal(signum)
    assert process.wait(timeout=120) == 143
    assert "resume=" in process.stderr.read()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert saved["epoch"] == 1
    assert saved["CrackDataModule"]["batches_done"] == 3  # batches 0, 1 and 2 of epoch 1

    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(run_dir) == metrics_of(reference)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_a_sweep_run_again_resumes_its_killed_job(reference, tiny_data_dir, tmp_path):
    sweep = ["-m", f"paths.data_dir={tiny_data_dir}", f"hydra.sweep.dir={tmp_path}/sweep", "seed=0"]
    process = start_and_stall(tmp_path / "stalled", *sweep, epoch=2, batch=1)
    process.kill()
    process.wait()
    job = tmp_path / "sweep" / "0"  # nothing is swept: the job folder is its number alone
    assert not (job / "metrics.json").exists()
    result = run_entry("train", *sweep, *FAULT_RUN, env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(job) == metrics_of(reference)
    assert json.loads((job / "run_info.json").read_text())["resumed"]


#: What SLURM sets in a batch job (one task), enough for Lightning to detect it.
SLURM_JOB = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "crackseg",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_on_slurm_the_warning_signal_saves_a_checkpoint_to_resume_from(
    reference, tiny_data_dir, tmp_path
):
    """USR2 (what the slurm launcher asks SLURM to send before the time limit): Lightning
    saves hpc_ckpt_1.ckpt and calls `scontrol requeue` (absent here); the job resumes."""
    run_dir = tmp_path / "slurm"
    process = start_and_stall(
        tmp_path / "stalled",
        f"paths.data_dir={tiny_data_dir}",
        f"hydra.run.dir={run_dir}",
        epoch=1,
        batch=2,
        env=SLURM_JOB,
    )
    process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not (run_dir / "hpc_ckpt_1.ckpt").exists():
        assert time.monotonic() < deadline, "no checkpoint after the requeue signal"
        time.sleep(0.05)
    # complete once it exists (renamed into place); SLURM kills the job when time is up
    process.kill()
    process.wait()
    result = run_entry("train", f"resume={run_dir}", env={"PYTHONPATH": str(HELPERS)})
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run_dir / "run_info.json").read_text())["resumed"]
    assert resumed[0]["checkpoint"].endswith("hpc_ckpt_1.ckpt")
    assert metrics_of(run_dir) == metrics_of(reference)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_run_folder_is_written_only_to_resume_its_own_run(reference, tiny_data_dir):
    before = _tree_digest(reference)
    line = one_line_error(train(reference, tiny_data_dir))
    assert "already holds a run" in line and f"resume={reference}" in line
    line = one_line_error(run_entry("train", f"resume={reference}"))
    assert "already finished" in line
    line = one_line_error(run_entry("train", f"resume={reference}", "seed=3"))
    assert "drop seed=3" in line
    best = next((reference / "checkpoints").glob("best*.ckpt"))
    line = one_line_error(run_entry("eval", f"ckpt_path={best}", f"hydra.run.dir={reference}"))
    assert "already holds a run" in line
    after = _tree_digest(reference)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed <= {"train.log"}, changed  # only the refusals were logged


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


def test_a_full_disk_ends_the_run_with_one_line_and_no_complete_looking_folder(
    tmp_path, tiny_data_dir
):
    """A file size limit makes the first checkpoint write fail as a full disk would."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run_dir = tmp_path / "full"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crackseg.train",
            *TINY,
            f"paths.data_dir={tiny_data_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=600,
    )
    line = one_line_error(result)
    assert "cannot write" in line and "File too large" in line
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "report.md").exists()
    leftovers = [p.name for p in (run_dir / "checkpoints").glob("*")] if run_dir.exists() else []
    assert leftovers == []  # no truncated checkpoint, no temporary file


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_line_error(run_entry("train", f"hydra.run.dir={blocker}/run"))
    assert "cannot write" in line and str(blocker) in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data=nope", "Could not find 'data/nope'"),
        ("data.dilat=3", "Could not override 'data.dilat'"),
        ("trainer.max_epochs=ten", "trainer.max_epochs must be an integer >= 1, not 'ten'"),
        ("trainer.max_epochs=-2", "trainer.max_epochs must be an integer >= 1, not -2"),
        ("loss.weighted_seg_p=-1", "loss.weighted_seg_p must be a number >= 0"),
        ("data.dilate=0", "data.dilate must be an odd integer >= 1"),
        ("data.dilate=4", "data.dilate must be an odd integer >= 1"),
        ("data.input_width=100", "not divisible by 8"),
    ],
)
def test_a_bad_setting_is_refused_before_any_data_is_read(override, expected, tmp_path):
    data_dir = tmp_path / "data"
    line = one_line_error(
        run_entry("train", override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/r")
    )
    assert expected in line
    assert not data_dir.exists()  # the synthetic set was not even generated
