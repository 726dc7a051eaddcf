"""Independent trainings on one machine share the CPU cores (crackseg.runs.cpu_share)."""

import math
import multiprocessing
import os
import signal

import pytest
import torch

from crackseg.runs.cpu_share import RunRegistry, ShareCoresWithOtherRuns


def _hold_an_entry(folder, ready, stop):
    registry = RunRegistry(folder)
    ready.set()
    stop.wait(30)
    registry.close()


def _start_holder(folder):
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    holder = context.Process(target=_hold_an_entry, args=(folder, ready, stop))
    holder.start()
    assert ready.wait(10)
    return holder, stop


def test_live_runs_counts_live_holders_and_removes_the_dead(tmp_path):
    mine = RunRegistry(tmp_path)
    assert mine.live_runs() == 1
    holder, stop = _start_holder(tmp_path)
    killed, _ = _start_holder(tmp_path)
    assert mine.live_runs() == 3
    os.kill(killed.pid, signal.SIGKILL)  # dies without closing its entry
    killed.join()
    assert mine.live_runs() == 2
    assert len(list(tmp_path.glob("*.lock"))) == 2  # the dead run's entry is gone
    stop.set()
    holder.join()
    assert mine.live_runs() == 1
    mine.close()
    assert not list(tmp_path.glob("*"))


def test_a_run_takes_its_share_when_another_starts_and_all_cores_when_alone(tmp_path):
    own = torch.get_num_threads()
    share = ShareCoresWithOtherRuns(workers=0, registry_folder=tmp_path)
    share.cores = 4  # as on a 4-core machine
    torch.set_num_threads(4)
    share.setup(None, None, "fit")
    try:
        share.share()
        assert torch.get_num_threads() == 4
        holder, stop = _start_holder(tmp_path)
        share._next_check = math.inf  # as within CHECK_EVERY_S of the last look: unchanged
        share.share()
        assert torch.get_num_threads() == 4
        share._next_check = 0.0
        share.share()
        assert torch.get_num_threads() == 2
        stop.set()
        holder.join()
        share._next_check = 0.0
        share.share()
        assert torch.get_num_threads() == 4
        share.workers = 1
        assert share.threads_for(2) == 1 and share.threads_for(1) == 4
    finally:
        share.teardown(None, None, "fit")
        torch.set_num_threads(own)
    assert not list(tmp_path.glob("*.lock"))


def test_a_sweep_job_never_takes_more_than_its_split_of_the_cores():
    share = ShareCoresWithOtherRuns(workers=0)
    share.cores = 8
    share.own_threads = 2  # what crackseg.runs.threads gave a job of 4 side by side
    assert share.threads_for(1) == 2  # no other training: its split
    assert share.threads_for(4) == 2  # its own sweep's jobs: the same split
    assert share.threads_for(6) == 1  # two more trainings started beside the sweep


def test_runs_on_disjoint_cores_use_separate_registries():
    from crackseg.runs.cpu_share import default_registry

    cores = os.sched_getaffinity(0)
    here = default_registry()
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert default_registry() != here or len(cores) == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert default_registry() == here


@pytest.mark.parametrize(
    ("share_cpu_cores", "omp_num_threads", "shares"),
    [
        (True, None, True),
        (False, None, False),
        (True, "1", False),
        ("deterministic", None, False),
        ("local parallel sweep job", None, True),
    ],
)
def test_a_run_shares_the_cores_unless_its_threads_are_pinned(
    tmp_path, monkeypatch, share_cpu_cores, omp_num_threads, shares
):
    deterministic = share_cpu_cores == "deterministic"
    sweep_job = share_cpu_cores == "local parallel sweep job"
    share_cpu_cores = share_cpu_cores is not False
    from omegaconf import OmegaConf

    import crackseg.runs.trainer
    from crackseg.runs.trainer import build_trainer

    monkeypatch.setattr(crackseg.runs.trainer, "in_local_parallel_sweep", lambda: sweep_job)

    if omp_num_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_num_threads)
    cfg = OmegaConf.create(
        {
            "share_cpu_cores": share_cpu_cores,
            "data": {"num_workers": 2},
            "trainer": {
                "_target_": "pytorch_lightning.Trainer",
                "accelerator": "cpu",
                "deterministic": deterministic,
                "enable_model_summary": False,
                "default_root_dir": str(tmp_path),
            },
        }
    )
    found = [c for c in build_trainer(cfg, []).callbacks if isinstance(c, ShareCoresWithOtherRuns)]
    assert len(found) == int(shares)
    assert all(c.workers == 2 for c in found)


def test_a_run_that_raises_gives_back_its_entry_and_its_threads(tmp_path):
    own = torch.get_num_threads()
    share = ShareCoresWithOtherRuns(workers=0, registry_folder=tmp_path)
    share.cores = 4  # as on a 4-core machine, whatever this one (or its test worker) has
    torch.set_num_threads(4)
    share.setup(None, None, "fit")
    holder, stop = _start_holder(tmp_path)
    try:
        share.share()
        assert torch.get_num_threads() == 2
        share.on_exception(None, None, RuntimeError("a failed job"))
        assert torch.get_num_threads() == 4
        assert len(list(tmp_path.glob("*.lock"))) == 1  # only the holder's
    finally:
        stop.set()
        holder.join()
        torch.set_num_threads(own)


def test_a_registry_folder_others_can_write_is_refused_and_the_run_goes_on_alone(tmp_path):
    folder = tmp_path / "registry"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(PermissionError, match="not a private folder"):
        RunRegistry(folder)
    share = ShareCoresWithOtherRuns(workers=0, registry_folder=folder)
    share.setup(None, None, "fit")  # warns, no entry
    assert share.registry is None
    share.share()
    share.teardown(None, None, "fit")


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("200000 100000", 2), ("150000 100000", 2), ("max 100000", None)]
)
def test_the_usable_cores_are_capped_by_a_container_cpu_quota(tmp_path, monkeypatch, cpu_max, cap):
    from crackseg.runs import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert threads.usable_cores() == 64  # no cgroup v2 file: the affinity
    (tmp_path / "cpu.max").write_text(f"{cpu_max}\n")
    assert threads.usable_cores() == (cap or 64)
