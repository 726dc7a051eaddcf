"""Ablation sweeps: configs, local parallel launching, one GPU per job, the summary table."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import one_line_error, run_entry
from helpers.paper_replicas import make_dagm
from helpers.stalled_runs import HELPERS, start_train, wait_for_stall
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import crackseg.cli as cli
import crackseg.runs.gpus as gpus
import crackseg.runs.multirun as multirun
import crackseg.runs.threads as threads
import crackseg.sweep.summary as summary
from crackseg.errors import ConfigError
from crackseg.run_files import LOCK_FILE
from crackseg.runs.config_checks import check_config
from crackseg.runs.gpus import claim_gpu, job_device_context, visible_gpus
from crackseg.runs.job_folders import job_dirname, job_folder
from crackseg.runs.job_names import (
    JobNamesCallback,
    common_keys,
    exclude_override,
    job_identity,
    job_overrides,
    keys_telling_jobs_apart,
    shared_settings,
    swept_keys,
)
from crackseg.runs.ownership import lock_file
from crackseg.runs.threads import jobs_side_by_side, set_job_threads, threads_per_job, usable_cores
from crackseg.sweep.summary import collect_runs, main

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
BIN = Path(sys.executable).parent

#: The ablations of the paper and the values each one must sweep (written out by hand).
SWEEPS = {
    "dilate": {"data.dilate": [1, 3, 5, 7]},
    "weighted_loss": {"loss.weighted_seg_p": [1, 2], "loss.weighted_seg_max": [1, 3]},
    "delta": {"loss.delta_cls": [0.01, 0.1, 1]},
    "dynamic_balance": {"loss.dynamic_balance": [True, False]},
    "frequency_sampling": {"data.frequency_sampling": [True, False]},
    "gradient_adjustment": {"loss.gradient_adjustment": [True, False]},
    "num_segmented": {"data.num_segmented": [0, 20, 50, None]},
    "cfd_num_segmented": {"data.num_segmented": [0, 5, 10, 20, 50, 100, None]},
}
SEEDS = [0, 1, 2]

#: A tiny CPU run, as an experiment in an extra config folder so job names stay short.
TINY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: segdec_small
trainer:
  max_epochs: 2
  enable_progress_bar: false
  enable_model_summary: false
validation_n_epochs: 1
data:
  synthetic:
    num_positives: 24
    num_negatives: 24
  input_height: 64
  input_width: 128
  num_workers: 1   # loader workers must start inside joblib's worker processes too
  batch_size: 8
num_dice_panels: 2
callbacks:
  validation_images:
    num_images: 1
paths:
  data_dir: {data_dir}
"""


def _job_overrides(params: dict) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(parsed, None)[0]


# --- configs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_composes_for_every_job(name: str) -> None:
    expected = SWEEPS[name]
    grid = {(*combo, seed) for combo in itertools.product(*expected.values()) for seed in SEEDS}
    keys = [*expected, "seed"]
    seen = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("train", overrides=[f"+sweep={name}"], return_hydra_config=True)
        assert base.run_name == f"sweep_{name}"
        jobs = _job_overrides(dict(base.hydra.sweeper.params))
        assert len(jobs) == len(grid)
        for job in jobs:
            cfg = compose("train", overrides=[f"+sweep={name}", *job], return_hydra_config=True)
            seen.add(tuple(OmegaConf.select(cfg, key) for key in keys))
            # The job folder is named by its swept values only: readable, no "+sweep=".
            assert cfg.hydra.job.override_dirname == ",".join(sorted(job))
            assert cfg.run_name == f"sweep_{name}"
            check_config(cfg)  # every job's values pass the checks a run makes first
            if name == "weighted_loss":
                assert cfg.loss.weighted_seg is True
    assert seen == grid


def test_job_dirname_only_shortens_names_too_long_for_the_file_system() -> None:
    assert job_dirname("data.dilate=5,seed=0") == "data.dilate=5,seed=0"
    long = ",".join(f"key{i}=value{i}" for i in range(40))  # 509 characters
    short = job_dirname(long)
    assert len(short.encode()) == 200
    assert short.startswith("key0=value0,key1=value1")
    assert short != job_dirname(long.replace("value39", "other"))  # the hash tells them apart


def test_job_names_leave_out_what_every_job_shares() -> None:
    task = ["+sweep=dilate", "seed=0,1", "trainer.max_epochs=2", "data.dilate=3", "lr=range(2)"]
    params = {"data.dilate": "1,3,5,7", "seed": "0,1,2"}
    assert swept_keys(task, params) == {"seed", "lr", "data.dilate"}
    assert common_keys(task, params) == ["sweep", "trainer.max_epochs"]
    assert common_keys(["model=a,b", "+x.y=1"], {}) == ["x.y"]
    assert exclude_override(["sweep", "trainer.max_epochs"]) == (
        "hydra.job.config.override_dirname.exclude_keys=['sweep','trainer.max_epochs']"
    )
    # Hydra reads the override back as the list it names.
    (parsed,) = OverridesParser.create().parse_overrides([exclude_override(["a", "b.c"])])
    assert parsed.value() == ["a", "b.c"]


def test_a_swept_key_the_config_leaves_out_of_the_names_still_names_the_jobs(
    tmp_path: Path,
) -> None:
    """``experiment=weakly_supervised,mixed_supervision``: the experiment tells the jobs
    apart (in their folders and TensorBoard), though the config leaves it out of names."""
    config = OmegaConf.create(
        {
            "hydra": {
                "overrides": {
                    "hydra": [],
                    "task": ["experiment=a,b", "seed=0,1", "trainer=cpu", "paths.log_dir=x"],
                },
                "sweep": {"dir": str(tmp_path / "sweep")},
                "job": {
                    "config": {"override_dirname": {"exclude_keys": ["experiment", "trainer"]}}
                },
            }
        }
    )
    JobNamesCallback().on_multirun_start(config)
    assert list(config.hydra.overrides.hydra) == [exclude_override(["trainer", "paths.log_dir"])]


def test_a_rerun_may_change_only_what_a_finished_job_lets_differ() -> None:
    overrides = ["share_cpu_cores=false", "data.num_workers=8", "hydra.sweep.dir=x", "seed=0,1"]
    overrides.append("data.batch_size=8")  # what the jobs learn from: not free
    assert shared_settings(overrides, {"seed"}) == {"data.batch_size": "8"}


def test_a_job_held_again_gets_this_command_line_with_its_own_swept_values() -> None:
    """What a sweep run again gives a job whose folder holds a run: the shared settings as
    typed now, the swept ones as the job ran (from the command line or the sweeper's own)."""
    task = ["+sweep=dilate", "seed=0,1", "trainer.max_epochs=3"]
    saved = ["+sweep=dilate", "seed=1", "trainer.max_epochs=2", "data.dilate=5"]
    swept = {"seed", "data.dilate"}
    assert job_overrides(task, saved, swept) == [
        "+sweep=dilate",
        "seed=1",
        "trainer.max_epochs=3",
        "data.dilate=5",
    ]


def test_the_keys_an_earlier_run_swept_are_read_from_its_job_folders(tmp_path: Path) -> None:
    """Keys the jobs in the folder were given different values of, or that some lack; not
    those every job shares, nor those a rerun may change (data.num_workers)."""
    jobs = {
        "0_data.dilate=1,seed=0": ["data.dilate=1", "seed=0", "data.num_workers=0", "+x=1"],
        "1_data.dilate=3,seed=0": ["data.dilate=3", "seed=0", "data.num_workers=4"],
        # typed with an interpolation: read as typed, not resolved where it cannot be
        "2_data.dilate=3,seed=0": ["data.dilate=3", "seed=0", "data.split_file=${x}/s.csv"],
    }
    for name, overrides in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # unreadable: left to its own job
    (tmp_path / "3" / ".hydra" / "overrides.yaml").write_text("[unclosed")
    assert keys_telling_jobs_apart(tmp_path) == {"data.dilate", "x", "data.split_file"}
    assert keys_telling_jobs_apart(tmp_path / "not_yet") == set()


def test_a_job_that_cannot_be_composed_ahead_leaves_the_others_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two held jobs of an earlier run: the first cannot be composed here (its job compares
    # its own config when it starts), the second ran with another batch size than now
    for number, dilate in enumerate((1, 3)):
        job = tmp_path / f"{number}_data.dilate={dilate}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- data.dilate={dilate}\n")
        (job / ".hydra" / "config.yaml").write_text("data: {dilate: 0, batch_size: 8}\n")
        (job / "status.json").write_text('{"status": "running"}')

    def compose(config_name: str, overrides: list[str]):
        if "data.dilate=1" in overrides:
            raise multirun.HydraException("Could not load 'model/gone'")
        return OmegaConf.create({"data": {"dilate": 0, "batch_size": 4}})

    monkeypatch.setattr(multirun, "compose", compose)
    config = OmegaConf.create(
        {
            "hydra": {
                "overrides": {"hydra": [], "task": ["data.dilate=1,3"]},
                "job": {"config_name": "train"},
                "sweep": {"dir": str(tmp_path)},
            }
        }
    )
    with pytest.raises(multirun.SweepSettingsError, match=r"3 ran with other settings"):
        multirun.refuse_held_runs_with_other_settings(config, ["data.dilate=1,3"], {"data.dilate"})


def test_job_folder_names() -> None:
    assert job_folder(3, "data.dilate=5,seed=0") == "3_data.dilate=5,seed=0"
    assert job_folder(0, "") == "0"  # nothing is swept: the number alone


def test_a_job_takes_the_folder_an_earlier_run_of_its_sweep_gave_its_overrides(tmp_path) -> None:
    def earlier(folder: str, overrides: list[str]) -> None:
        (tmp_path / folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / folder / ".hydra/overrides.yaml")

    earlier("3_data.dilate=5,seed=0", ["experiment=a", "data.dilate=5", "seed=0"])
    earlier("4_seed=0", ["experiment=b", "seed=0"])  # experiment is not in folder names
    job = ["seed=0", "data.dilate=5", "experiment=a"]
    name = "data.dilate=5,seed=0"
    assert job_folder(5, name, str(tmp_path), job) == "3_data.dilate=5,seed=0"
    other = ["data.dilate=5", "seed=0", "experiment=c"]  # same name, other overrides
    assert job_folder(5, name, str(tmp_path), other) == "5_data.dilate=5,seed=0"
    assert job_folder(7, "seed=0", str(tmp_path), ["experiment=a", "seed=0"]) == "7_seed=0"
    seed_1 = ["seed=1", "data.dilate=5", "experiment=a"]
    assert job_folder(6, "data.dilate=5,seed=1", str(tmp_path), seed_1) == "6_data.dilate=5,seed=1"
    assert job_folder(2, "", str(tmp_path), []) == "2"
    # a setting a rerun may change (the speed options), or one spelled otherwise, is the same job
    earlier("1_seed=2", ["experiment=a", "seed=2", "model.channels_last=true", "x.flag=False"])
    again = ["experiment=a", "seed=2", "model.channels_last=false", "x.flag=false"]
    assert job_folder(8, "seed=2", str(tmp_path), again) == "1_seed=2"
    # named otherwise by an earlier version (a swept experiment was left out of names), or by
    # a value spelled otherwise (1.0 for 1): found by its overrides all the same
    assert job_folder(9, "experiment=b,seed=0", str(tmp_path), ["experiment=b", "seed=0"]) == (
        "4_seed=0"
    )
    earlier("0_loss.delta_cls=1.0", ["loss.delta_cls=1.0"])
    assert job_folder(3, "loss.delta_cls=1", str(tmp_path), ["loss.delta_cls=1"]) == (
        "0_loss.delta_cls=1.0"
    )
    # a sweep over a setting a rerun may change (the loader's workers): each value its job
    earlier("5_data.num_workers=0", ["data.num_workers=0", "+sweep=x"])
    workers = ["data.num_workers=4", "+sweep=x"]
    assert job_folder(6, "data.num_workers=4", str(tmp_path), workers) == "6_data.num_workers=4"


def test_launcher_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        monkeypatch.setattr(gpus, "visible_gpus", lambda: [])
        cfg = compose("train", ["hydra/launcher=local_parallel"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
        assert cfg.hydra.launcher.n_jobs == 2  # no GPU: two jobs
        monkeypatch.setattr(gpus, "visible_gpus", lambda: [str(i) for i in range(8)])
        cfg = compose("train", ["hydra/launcher=local_parallel"], return_hydra_config=True)
        assert cfg.hydra.launcher.n_jobs == 8  # one job per GPU
        cfg = compose(
            "train",
            ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3"],
            return_hydra_config=True,
        )
        assert cfg.hydra.launcher.n_jobs == 3

        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert launcher.partition == "gpu"
        assert (launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1)
        assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0 and launcher.mem_gb > 0
        assert launcher.array_parallelism > 0
        # without SLURM on this machine, the sweep is refused before its folder is made
        monkeypatch.setattr(multirun.shutil, "which", lambda name: None)
        with pytest.raises(ConfigError, match="hydra/launcher=slurm needs SLURM"):
            multirun.check_slurm_found(cfg)
        monkeypatch.setattr(multirun.shutil, "which", lambda name: f"/usr/bin/{name}")
        multirun.check_slurm_found(cfg)


# --- one GPU per job -------------------------------------------------------------------


def _hold_gpu(lock_dir: str, gpu_ids: list[str], hold_s: float, out: str) -> None:
    with claim_gpu(lock_dir, gpu_ids, poll_s=0.01) as gpu:
        start = time.monotonic()
        time.sleep(hold_s)
        end = time.monotonic()
    Path(out).write_text(json.dumps({"gpu": gpu, "t": [start, end]}))


def test_claim_gpu_never_puts_two_concurrent_jobs_on_one_gpu(tmp_path: Path) -> None:
    fake_gpus = ["0", "1", "2", "3"]
    context = multiprocessing.get_context("fork")
    jobs = [
        context.Process(
            target=_hold_gpu, args=(str(tmp_path / "locks"), fake_gpus, 0.4, str(tmp_path / f"{i}"))
        )
        for i in range(8)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=30)
    assert [job.exitcode for job in jobs] == [0] * 8  # all eight finished
    results = [json.loads((tmp_path / f"{i}").read_text()) for i in range(8)]
    assert {r["gpu"] for r in results} == set(fake_gpus)  # four ran at once, one per GPU
    for a, b in itertools.combinations(results, 2):
        if a["gpu"] == b["gpu"]:
            assert a["t"][1] <= b["t"][0] or b["t"][1] <= a["t"][0], (a, b)


def _claim_and_hang(lock_dir: str, gpu: str = "0") -> None:
    with claim_gpu(lock_dir, [gpu]):
        if os.fork() == 0:  # a data loader worker: it inherits the open lock file
            time.sleep(5)
            os._exit(0)
        time.sleep(60)


def _start_holder(lock_dir: Path, gpu: str) -> multiprocessing.Process:
    """A job in another process holding ``gpu`` (with a forked worker of its own)."""
    process = multiprocessing.get_context("fork").Process(
        target=_claim_and_hang, args=(str(lock_dir), gpu)
    )
    process.start()
    lock = lock_dir / f"gpu{gpu}.lock"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.01)  # the holder writes its pid once it has the lock
    assert lock.read_text().strip() == str(process.pid)
    return process


def _free_for_another_process(lock: Path) -> bool:
    pid = os.fork()
    if pid == 0:
        os._exit(0 if lock_file(lock) is not None else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_killed_job_frees_its_gpu(tmp_path: Path) -> None:
    """At once, although the worker it forked while holding the GPU still runs."""
    process = _start_holder(tmp_path, "0")
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    start = time.monotonic()
    with claim_gpu(tmp_path, ["0"], poll_s=0.01) as gpu:
        assert gpu == "0"
    assert time.monotonic() - start < 1


def test_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpus.parse_visible_devices(None) is None
    assert gpus.parse_visible_devices("") == []
    assert gpus.parse_visible_devices("2, 5,7") == ["2", "5", "7"]
    assert gpus.parse_visible_devices("3,-1,4") == ["3"]  # CUDA stops at an invalid id
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == []  # no CUDA: nothing to claim
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_gpus() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]


def _hydra_cfg(sweep_dir: Path, target: str, n_jobs: int = 2):
    return OmegaConf.create(
        {
            "mode": "MULTIRUN",
            "sweep": {"dir": str(sweep_dir)},
            "launcher": {"_target_": target, "n_jobs": n_jobs},
        }
    )


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_job_device_context_pins_a_free_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gpus, "visible_gpus", lambda: ["4", "6"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("CRACKSEG_GPU_LOCK_DIR", str(tmp_path))
    busy = _start_holder(tmp_path, "4")  # a job of another sweep holds GPU 4
    cfg = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1}})
    other_sweep = _hydra_cfg(tmp_path / "another_sweep", JOBLIB)
    with job_device_context(cfg, other_sweep, poll_s=0.01) as gpu:
        assert gpu == "6"
        assert list(cfg.trainer.devices) == [1]  # index of GPU 6 among the visible ones
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"  # never narrowed in a worker
        assert not _free_for_another_process(tmp_path / "gpu6.lock")
    assert _free_for_another_process(tmp_path / "gpu6.lock")
    busy.kill()
    busy.join()

    # Not parallel on this machine, or not one GPU per job: nothing happens.
    for hydra_cfg, trainer in [
        (_hydra_cfg(tmp_path, "hydra._internal.core_plugins.basic_launcher.BasicLauncher"), {}),
        (_hydra_cfg(tmp_path, JOBLIB, n_jobs=1), {}),
        (_hydra_cfg(tmp_path, JOBLIB), {"accelerator": "cpu"}),
        (_hydra_cfg(tmp_path, JOBLIB), {"devices": 2}),
        (_hydra_cfg(tmp_path, JOBLIB), {"devices": [1]}),  # the user's choice of GPU
        (None, {}),
    ]:
        cfg = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1, **trainer}})
        before = OmegaConf.to_yaml(cfg)
        with job_device_context(cfg, hydra_cfg) as gpu:
            assert gpu is None
        assert OmegaConf.to_yaml(cfg) == before
    assert "trainer.devices=[1] chooses the jobs' GPU: each job runs on it" in caplog.text
    assert "trainer.devices=2: a job using several devices" in caplog.text
    monkeypatch.setattr(gpus, "visible_gpus", lambda: [])  # a CPU-only machine
    cfg = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1}})
    with job_device_context(cfg, _hydra_cfg(tmp_path, JOBLIB)) as gpu:
        assert gpu is None and cfg.trainer.devices == 1


# --- a share of the cores per job ------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "jobs", "workers", "expected"),
    [
        (2, 2, 0, 1),  # this machine: two jobs, one core each
        (2, 2, 2, 1),  # never fewer than one thread
        (16, 4, 0, 4),
        (16, 4, 2, 2),  # the loader workers take their cores from the job's share
        (16, 3, 1, 4),  # 16 // 3 = 5 cores a job, one of them for the worker
        (4, 8, 0, 1),  # more jobs than cores
    ],
)
def test_threads_per_job(cores: int, jobs: int, workers: int, expected: int) -> None:
    assert threads_per_job(cores, jobs, workers) == expected


def test_jobs_side_by_side(tmp_path: Path) -> None:
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert jobs_side_by_side(_hydra_cfg(tmp_path, JOBLIB, n_jobs=3), cores=8) == 3
    assert jobs_side_by_side(_hydra_cfg(tmp_path, JOBLIB, n_jobs=-1), cores=8) == 8
    assert jobs_side_by_side(_hydra_cfg(tmp_path, JOBLIB, n_jobs=-2), cores=8) == 7
    assert jobs_side_by_side(_hydra_cfg(tmp_path, JOBLIB, n_jobs=1), cores=8) == 1
    assert jobs_side_by_side(_hydra_cfg(tmp_path, basic, n_jobs=4), cores=8) == 1
    assert jobs_side_by_side(None, cores=8) == 1  # a single run


def test_set_job_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # as a user starts it
    before = torch.get_num_threads()
    cfg = OmegaConf.create({"data": {"num_workers": 1}})
    try:
        assert set_job_threads(cfg, _hydra_cfg(tmp_path, JOBLIB, n_jobs=2)) == 3
        assert torch.get_num_threads() == 3
        torch.set_num_threads(before)
        assert set_job_threads(cfg, None) == before  # a single run keeps torch's default
        assert torch.get_num_threads() == before
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's count: a cap, never raised
        assert set_job_threads(cfg, _hydra_cfg(tmp_path, JOBLIB, n_jobs=2)) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
    finally:
        torch.set_num_threads(before)


# --- tiny sweeps, end to end ----------------------------------------------------------


def run_train(config_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``crackseg-train -m`` as a user types it, with the tiny experiment."""
    return subprocess.run(
        [
            str(BIN / "crackseg-train"),
            "-m",
            "--config-dir",
            str(config_dir),
            "experiment=tiny",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def tiny_config_dir(base: Path) -> Path:
    config_dir = base / "tiny_conf"
    (config_dir / "experiment").mkdir(parents=True, exist_ok=True)
    (config_dir / "experiment" / "tiny.yaml").write_text(
        TINY_EXPERIMENT.format(data_dir=base / "data")
    )
    return config_dir


def tiny_sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-job dilate sweep (seeds 0 and 1) run by the joblib launcher.

    Made once per test session (test_notebook.py reuses it); callers must not change it.
    """
    base = tmp_path_factory.getbasetemp() / "tiny_sweep"
    sweep_dir = base / "sweep"
    if (sweep_dir / "summary.csv").is_file():
        return sweep_dir
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    result = run_train(
        tiny_config_dir(base),
        "+sweep=dilate",
        "data.dilate=3",
        "seed=0,1",
        "validation_n_epochs=1",  # the same in both jobs: not part of their names
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sweep_dir(tmp_path_factory)


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def test_parallel_sweep_writes_runs_and_summary(tiny_sweep: Path) -> None:
    jobs = sorted(p.name for p in tiny_sweep.iterdir() if p.is_dir())
    assert jobs == ["0_data.dilate=3,seed=0", "1_data.dilate=3,seed=1"]
    # Two jobs side by side, one loader worker each: half the cores less one (at least one).
    cores = usable_cores()
    share = max(1, cores // 2 - 1)
    threads = f"torch threads: {share} ({cores} cores shared by 2 jobs side by side"
    for job in jobs:
        status = json.loads((tiny_sweep / job / "status.json").read_text())
        assert status["status"] == "finished"
        assert (tiny_sweep / job / "history.json").is_file()
        log = (tiny_sweep / job / "train.log").read_text()
        assert threads in log
        # the library notices every command leaves out, in the launcher's workers too
        assert "Tip:" not in log
    lines = (tiny_sweep / "summary.csv").read_text().splitlines()
    assert lines[0].split(",")[:5] == ["job", "status", "error", "seed", "data.dilate"]
    assert len(lines) == 3
    assert lines[1].startswith('"0_data.dilate=3,seed=0",finished,,0,3,')
    assert lines[2].startswith('"1_data.dilate=3,seed=1",finished,,1,3,')
    # the grouped row: dilate 3, n=2, no failures, then AUC and AP as mean ± std over seeds
    aps = [_metrics(tiny_sweep / job)["image_ap"] for job in jobs]
    md = (tiny_sweep / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 3 | 2 | 0 |"))
    assert row.split(" | ")[4] == f"{statistics.mean(aps):.4f} ± {statistics.stdev(aps):.4f}"


def test_summary_command_rebuilds_from_a_folder_of_runs(
    tiny_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(tiny_sweep, root, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    for name in ("summary.csv", "summary.md", "multirun.yaml"):
        (root / name).unlink()
    # a job that never finished: it must be listed, not dropped
    unfinished = root / "2_data.dilate=5,seed=0"
    shutil.copytree(root / "0_data.dilate=3,seed=0" / ".hydra", unfinished / ".hydra")
    overrides = unfinished / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text().replace("data.dilate=3", "data.dilate=5"))

    assert main([str(root)]) == 0
    rows = collect_runs(root)
    assert [(r["job"], r["status"], r["seed"], r["data.dilate"]) for r in rows] == [
        ("0_data.dilate=3,seed=0", "finished", "0", "3"),
        ("1_data.dilate=3,seed=1", "finished", "1", "3"),
        ("2_data.dilate=5,seed=0", "unfinished", "0", "5"),
    ]
    first = _metrics(root / "0_data.dilate=3,seed=0")
    assert rows[0]["image_ap"] == first["image_ap"]
    assert rows[0]["image_ap_trapezoid"] == first["image_ap_trapezoid"]  # the paper's AP
    assert rows[2]["image_ap"] is None
    assert len((root / "summary.csv").read_text().splitlines()) == 4
    md = (root / "summary.md").read_text()
    assert "| 5 | 0 | 1 | n/a | n/a | n/a | n/a |" in md
    assert "`2_data.dilate=5,seed=0` (without a status)" in md
    # an evaluation beside the trainings: its config says its own settings, not the
    # weights', so its row would compare what it never ran
    evaluated = root / "eval_of_0"
    shutil.copytree(root / "0_data.dilate=3,seed=0", evaluated)
    hydra_yaml = evaluated / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(hydra_yaml.read_text().replace("name: train", "name: eval"))
    assert [r["job"] for r in collect_runs(root)] == [r["job"] for r in rows]

    capsys.readouterr()
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing is not a folder" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err
    job = root / "0_data.dilate=3,seed=0"  # one run: nothing to compare, its folder its own
    assert main([str(job)]) == 2
    assert capsys.readouterr().err == (
        f"error: {job} is one run's folder, not a folder of runs: name the folder that holds "
        f"it ({root.resolve()})\n"
    )
    assert not (job / "summary.csv").exists()
    (root / "summary.csv").unlink()
    (root / "summary.csv").mkdir()  # a file it cannot write: named, as the others say it
    assert main([str(root)]) == 2
    assert capsys.readouterr().err == f"error: {root / 'summary.csv'}: Is a directory\n"
    (root / "summary.csv").rmdir()
    # the console script is installed and says the same
    result = subprocess.run(
        [str(BIN / "crackseg-summary"), str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_the_summary_counts_every_job_that_did_not_finish(tmp_path: Path) -> None:
    statuses = ["finished", "failed", "running", "interrupted", None]
    for num, status in enumerate(statuses):
        job = tmp_path / f"{num}_seed={num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        if status is not None:
            metrics = {"image_ap": 0.5} if status == "finished" else {}
            (job / "status.json").write_text(json.dumps({"status": status, "metrics": metrics}))
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    header = (
        "5 jobs: 1 finished, 1 failed, 3 unfinished (1 interrupted, 1 running, 1 without a status)."
    )
    assert header in md
    for num, status in enumerate(statuses[1:], start=1):
        assert f"`{num}_seed={num}` ({status or 'without a status'})" in md
    (group,) = summary.group_rows(summary.collect_runs(tmp_path))  # seeds are one setting
    assert (group["n"], group["not_finished"]) == (1, 4)


def test_the_summary_of_a_sweep_of_predictions_shows_what_they_counted(tmp_path: Path) -> None:
    """crackseg-predict -m over its overlap: images, cracks and Dice, not a training's AUC
    and AP (always n/a), and no seeds it never had."""
    for num, (overlap, cracks) in enumerate([(0.25, 3), (0.5, 4)]):
        job = tmp_path / f"{num}_overlap={overlap}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- overlap={overlap}\n")
        (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: predict\n")
        metrics = {"images": 2, "unreadable": 0, "cracks": cracks}
        (job / "status.json").write_text(json.dumps({"status": "finished", "metrics": metrics}))
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "2 jobs: 2 finished, 0 failed, 0 unfinished. Swept: `overlap`.\n" in md
    assert "| overlap | n | not_finished | cracks | dice_mean |" in md
    assert "| 1_overlap=0.5 | finished | 0.5 | 2 | 0 | 4 | – |" in md
    assert "image_auc" not in md and "## Figures" not in md
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header == "job,status,error,seed,overlap,images,unreadable,cracks,dice_mean"


def test_a_setting_respelled_or_free_to_change_in_a_rerun_is_one_setting(tmp_path: Path) -> None:
    """A sweep run again may change data.num_workers or resume, and may spell 0.01 as 1e-2,
    or 1 as 1.0: its jobs still have the earlier jobs' setting, one group of their seeds. An
    overrides file holding no list is no job's settings, not the summary's traceback."""
    jobs = {
        "0_seed=0": ["seed=0", "loss.delta_cls=1e-2", "loss.weighted_seg_max=1"],
        "1_seed=1": ["seed=1", "loss.delta_cls=0.01", "loss.weighted_seg_max=1.0", "resume=auto"],
        "2_seed=2": [
            "seed=2",
            "loss.delta_cls=0.01",
            "loss.weighted_seg_max=1",
            "data.num_workers=0",
        ],
    }

    def write_job(name: str, overrides: object) -> None:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        status = {"status": "finished", "metrics": {"image_ap": 0.5}}
        (tmp_path / name / "status.json").write_text(json.dumps(status))

    for name, overrides in jobs.items():
        write_job(name, overrides)
    rows = summary.collect_runs(tmp_path)
    assert summary.swept_columns(rows) == []
    (group,) = summary.group_rows(rows)
    assert group["n"] == 3
    write_job("3_seed=3", 7)
    assert [row["job"] for row in summary.collect_runs(tmp_path)][-1] == "3_seed=3"
    assert job_identity(["loss.delta_cls=1.0"]) == job_identity(["loss.delta_cls=1"])
    assert job_identity(["loss.delta_cls=0.1"]) == ["loss.delta_cls=0.1"]
    # Lightning reads 1 as one batch and 1.0 as all of them
    limit = "+trainer.limit_train_batches"
    assert job_identity([f"{limit}=1.0"]) != job_identity([f"{limit}=1"])


def test_a_value_read_from_a_jobs_config_is_spelt_as_an_override_spells_it(tmp_path: Path) -> None:
    """A sweep run again with a default now typed (``loss.weighted_seg=true,false``): the
    earlier job's value comes from its config (``true``, or a rule's ``${...}``) and was a
    second setting, beside ``True``, with no repeat named."""
    rule = "${crackseg.any_segmented:${data.num_segmented},${data.extra_segmented.ranking}}"
    config = {
        "seed": 0,
        "data": {"num_segmented": None, "extra_segmented": {"ranking": None}},
        "loss": {"weighted_seg": True, "dynamic_balance": rule},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
    }
    jobs = {
        "0_seed=0": ["seed=0"],
        "1_loss.weighted_seg=true,seed=0": ["loss.weighted_seg=true", "seed=0"],
        "2_loss.dynamic_balance=true,seed=0": ["loss.dynamic_balance=true", "seed=0"],
    }
    for name, overrides in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (tmp_path / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        status = {"status": "finished", "metrics": {"image_ap": 0.5}}
        (tmp_path / name / "status.json").write_text(json.dumps(status))
    rows = summary.collect_runs(tmp_path)
    assert [(r["loss.weighted_seg"], r["loss.dynamic_balance"]) for r in rows] == [
        ("True", "True"),
        ("True", "True"),
        ("True", "True"),
    ]
    assert summary.repeated_jobs(rows) == {
        "1_loss.weighted_seg=true,seed=0": "0_seed=0",
        "2_loss.dynamic_balance=true,seed=0": "0_seed=0",
    }
    assert summary._config_value(tmp_path / "0_seed=0", "paths.output_dir") == (
        "${hydra:runtime.output_dir}"
    )
    assert summary._config_value(tmp_path / "0_seed=0", "loss.missing") == ""


def test_the_summary_of_a_sweep_killed_early_names_its_swept_keys_and_jobs_not_started(
    tmp_path: Path,
) -> None:
    """One job folder of ``data.dilate=1,3 seed=0,1`` (the sweep killed in it): its keys are
    the swept ones typed, the three other jobs of the grid are named as not started."""
    hydra = {
        "sweeper": {"_target_": summary.BASIC_SWEEPER, "params": {"seed": "0,1"}},
        "overrides": {"task": ["+sweep=x", "data.dilate=1,3", "trainer.max_epochs=2"]},
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    job = tmp_path / "0_data.dilate=1,seed=0"
    (job / ".hydra").mkdir(parents=True)
    overrides = ["+sweep=x", "data.dilate=1", "seed=0", "trainer.max_epochs=2"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = collect_runs(tmp_path)
    assert summary.swept_columns(rows) == ["data.dilate"]
    assert summary.grid_not_started(tmp_path, rows) == [  # in the grid's order
        "data.dilate=3,seed=0",
        "data.dilate=1,seed=1",
        "data.dilate=3,seed=1",
    ]
    summary.write_summary(tmp_path, rows)
    assert "Not started: 3 jobs" in (tmp_path / "summary.md").read_text()
    # a grid that cannot be made here (a glob of the config's groups): none named
    hydra["overrides"]["task"].append("model=glob(*)")
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    assert summary.grid_not_started(tmp_path, rows) == []


def test_a_status_or_metrics_that_is_no_json_object_is_a_failed_job(tmp_path: Path) -> None:
    """Valid JSON of the wrong shape (a list, a string) in a job's files is that job's
    failure in the summary, not the summary's."""
    files = {
        "status.json": ["[1, 2]", '"finished"', '{"status": "finished", "metrics": [1]}'],
        "metrics.json": ["[1]"],
    }
    jobs = [(name, text) for name, texts in files.items() for text in texts]
    for num, (name, text) in enumerate(jobs):
        job = tmp_path / f"{num}_seed={num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        (job / "status.json").write_text(json.dumps({"status": "finished", "metrics": {}}))
        (job / name).write_text(text)
    assert main([str(tmp_path)]) == 0
    rows = {row["job"]: row for row in summary.collect_runs(tmp_path)}
    assert [rows[f"{num}_seed={num}"]["status"] for num in range(len(jobs))] == ["failed"] * 4
    assert "holds a JSON list, not an object" in rows["0_seed=0"]["error"]
    assert "holds a JSON str, not an object" in rows["1_seed=1"]["error"]
    assert rows["2_seed=2"]["error"] == "unreadable metrics in status.json"
    assert rows["3_seed=3"]["error"].startswith("unreadable metrics.json: ")


def test_a_sweep_whose_job_status_cannot_be_read_ends_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreadable(root: Path) -> list[dict]:
        raise PermissionError(13, "Permission denied", str(root / "0_seed=0" / "status.json"))

    monkeypatch.setattr(summary, "collect_runs", unreadable)
    monkeypatch.setattr(summary, "ended_sweeps", [])
    monkeypatch.setattr(cli, "ended_sweeps", summary.ended_sweeps)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary.SummaryCallback().on_multirun_end(config)
    assert summary.ended_sweeps == [(tmp_path, None, None, None)]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_hydra_main(lambda: None, "train")
    assert exit_info.value.code == cli.EXIT_JOBS_FAILED
    assert f"error: could not read the status of the jobs in {tmp_path}" in capsys.readouterr().err


def test_a_cluster_job_that_ended_without_a_result_ends_the_sweep_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """submitit raises for a job SLURM killed (FAILED, OUT_OF_MEMORY): a traceback ended the
    command, the other jobs' results never collected, no summary written."""
    from submitit.core.utils import UncompletedJobError

    for num, status in enumerate(("finished", None)):
        job = tmp_path / f"{num}_seed={num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        if status:
            metrics = {"image_ap": 0.5}
            (job / "status.json").write_text(json.dumps({"status": status, "metrics": metrics}))
    monkeypatch.setattr(summary, "ended_sweeps", [])
    monkeypatch.setattr(cli, "ended_sweeps", summary.ended_sweeps)
    monkeypatch.setattr(cli, "started_sweeps", {tmp_path: 0.0})

    def launch() -> None:
        raise UncompletedJobError(
            "Job 4242_1 (task: 0) has not produced any output (state: FAILED)"
        )

    with pytest.raises(SystemExit) as exit_info:
        cli.run_hydra_main(launch, "train")
    assert exit_info.value.code == cli.EXIT_JOBS_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "a cluster job ended without a result: Job 4242_1 (task: 0) has not produced any output "
        "(state: FAILED)",
        f"error: 1 of 2 jobs failed or did not finish; see {tmp_path / 'summary.md'}",
    ]
    assert (tmp_path / "summary.md").is_file()
    with pytest.raises(RuntimeError, match="another"):  # any other error is not this one
        cli.run_hydra_main(lambda: (_ for _ in ()).throw(RuntimeError("another")), "train")


@pytest.mark.parametrize(
    ("hydra", "expected"),
    [
        ({"launcher": {"n_jobs": 0}}, "hydra.launcher.n_jobs must be an integer other than 0"),
        ({"sweeper": {"n_jobs": 0}}, "hydra.sweeper.n_jobs must be an integer >= 1, not 0"),
        ({"sweeper": {"direction": "up"}}, "direction must be maximize or minimize, not 'up'"),
        (
            {"sweeper": {"storage": "sqlite:////nonexistent/dir/x.db"}},
            "hydra.sweeper.storage=sqlite:////nonexistent/dir/x.db: no folder /nonexistent/dir",
        ),
    ],
)
def test_a_sweeper_or_launcher_setting_that_cannot_work_is_refused_up_front(hydra, expected):
    """Each was a traceback of joblib or Optuna (a ZeroDivisionError, SQLAlchemy's hundred
    lines), after the sweep folder was made."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        multirun.check_search_and_launcher(OmegaConf.create({"hydra": hydra}))
    fine = {"launcher": {"n_jobs": -1}, "sweeper": {"direction": ["maximize", "minimize"]}}
    multirun.check_search_and_launcher(OmegaConf.create({"hydra": fine}))
    # the sweeper's default direction, its enum; a database in the sweep folder, made for it
    from hydra_plugins.hydra_optuna_sweeper.config import Direction

    sweep = "/nonexistent/sweep"
    own = {"sweeper": {"storage": f"sqlite:///{sweep}/optuna.db"}, "sweep": {"dir": sweep}}
    multirun.check_search_and_launcher(OmegaConf.create({"hydra": own}))
    enum = OmegaConf.create({"hydra": {"sweeper": {"direction": Direction.minimize}}})
    multirun.check_search_and_launcher(enum)


def test_ctrl_c_outside_any_job_stops_the_sweep_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command of a cluster sweep waits in submitit for its jobs: Ctrl-C there was a
    KeyboardInterrupt traceback."""
    (tmp_path / "0_seed=0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0_seed=0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    monkeypatch.setattr(summary, "ended_sweeps", [])
    monkeypatch.setattr(cli, "ended_sweeps", summary.ended_sweeps)
    monkeypatch.setattr(cli, "started_sweeps", {tmp_path: 0.0})

    def waiting() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.run_hydra_main(waiting, "train")
    assert exit_info.value.code == 143
    err = capsys.readouterr().err
    assert err == f"stopped: continue with the same command and hydra.sweep.dir={tmp_path}\n"
    assert (tmp_path / "summary.md").is_file()


def _mtimes(job: Path) -> dict[str, int]:
    """Files a job writes itself (Hydra rewrites .hydra/ and appends to the log every time;
    every process that opens the folder locks .lock and writes its pid there)."""
    return {
        str(p.relative_to(job)): p.stat().st_mtime_ns
        for p in job.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != LOCK_FILE
    }


def test_a_failing_job_is_summarised_and_a_rerun_skips_the_finished_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("failing")
    sweep_dir = base / "sweep"
    args = (
        "+sweep=dilate",
        "data.dilate=1",
        "seed=0",
        "data.input_height=60,64",
        "loss.gradient_adjustment=true",
        "loss.delta_cls=1e-2",
        "trainer.max_epochs=1",  # the same in both jobs: not part of their names
        f"hydra.sweep.dir={sweep_dir}",
    )
    # the same settings spelled as Hydra saves them: the same sweep
    respelled = tuple(
        {"loss.gradient_adjustment=true": "loss.gradient_adjustment=True"}.get(a, a) for a in args
    )
    respelled = tuple(a.replace("=1e-2", "=0.01") for a in respelled)
    config_dir = tiny_config_dir(base)
    result = run_train(config_dir, *args)
    summary_line = f"error: 1 of 2 jobs failed; see {sweep_dir / 'summary.md'}"
    assert result.returncode == 1 and summary_line in result.stderr, result.stderr[-3000:]
    failed = sweep_dir / "0_data.dilate=1,data.input_height=60,seed=0"
    done = sweep_dir / "1_data.dilate=1,data.input_height=64,seed=0"
    error = json.loads((failed / "status.json").read_text())
    assert error["status"] == "failed" and error["error"]
    assert json.loads((done / "status.json").read_text())["status"] == "finished"
    rows = {r["data.input_height"]: r for r in collect_runs(sweep_dir)}
    assert (rows["60"]["status"], rows["60"]["error"]) == ("failed", error["error"])
    assert rows["64"]["status"] == "finished"
    md = (sweep_dir / "summary.md").read_text()
    assert f"`{failed.name}` (failed): {error['error']}" in md
    assert "| 1 | 60 | 0 | 1 | n/a |" in md

    before = _mtimes(done)
    assert "metrics.json" in before and "status.json" in before
    (sweep_dir / "summary.md").unlink()
    result = run_train(config_dir, *respelled)
    # the failed job (no checkpoint) is started again, and fails again
    assert result.returncode == 1 and summary_line in result.stderr, result.stderr[-3000:]
    assert _mtimes(done) == before  # skipped: nothing it wrote was touched
    # said on the console; the finished job's own log is left as it was
    assert "finished in an earlier sweep" in result.stdout
    assert "finished in an earlier sweep" not in (done / "train.log").read_text()
    assert (sweep_dir / "summary.md").is_file()  # and the summary is written again

    # a setting the finished job did not have would reuse its results: refused, named,
    # before any job runs (the failed one is not started again either)
    failed_status = (failed / "status.json").read_bytes()
    result = run_train(config_dir, *args[:-2], "trainer.max_epochs=2", args[-1])
    line = one_line_error(result)
    assert line == (
        f"error: the finished job in {done} ran with other settings "
        "(trainer.max_epochs: 1 -> 2); use another hydra.sweep.dir"
    )
    assert result.returncode == 2 and result.stderr.strip() == line
    assert _mtimes(done) == before
    assert (failed / "status.json").read_bytes() == failed_status
    # the same config typed otherwise (a value the experiment gives, typed out): the jobs
    # are found by the overrides typed, so it is refused too, and said to be the same
    result = run_train(config_dir, *args[:-1], "data.batch_size=8", args[-1])
    assert one_line_error(result) == (
        f"error: the finished job in {done} was started with other overrides "
        "(data.batch_size: - -> 8), to the same effect: a sweep run again finds its jobs by "
        "the overrides typed; type them as before, or use another hydra.sweep.dir"
    ), result.stderr[-3000:]
    assert result.returncode == 2 and _mtimes(done) == before
    # and so are settings that cannot be read back
    saved = done / ".hydra" / "config.yaml"
    readable = saved.read_bytes()
    saved.write_text("trainer: [unclosed\n")
    result = run_train(config_dir, *args)
    assert one_line_error(result) == (
        f"error: the finished job in {done} has an unreadable .hydra/config.yaml, its "
        "settings unknown; use another hydra.sweep.dir"
    ), result.stderr[-3000:]
    assert result.returncode == 2
    saved.write_bytes(readable)
    # and a finished job is never run again in its folder: skip_finished=false is refused
    # there (its job would be refused, and the summary count the old result as new)
    result = run_train(config_dir, *args, "skip_finished=false")
    assert one_line_error(result) == (
        f"error: skip_finished=false, but {done} holds a finished job, which is never run "
        "again in its folder: choose another hydra.sweep.dir"
    )
    assert result.returncode == 2 and _mtimes(done) == before

    # the grid in another order numbers the jobs otherwise: each finds its earlier folder by
    # its swept values (the finished one is skipped there, the failed one runs there again)
    reordered = [a.replace("60,64", "64,60") for a in args]
    result = run_train(config_dir, *reordered)
    assert result.returncode == 1 and summary_line in result.stderr, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert jobs == sorted([failed.name, done.name])
    assert _mtimes(done) == before

    # a config file edited since (the same command line): refused before any job runs, where
    # before the failed job ran again with the edited file, and the finished one was refused
    # only when its turn came
    experiment = config_dir / "experiment" / "tiny.yaml"
    unedited = experiment.read_text()
    experiment.write_text(unedited.replace("batch_size: 8", "batch_size: 4"))
    failed_status = (failed / "status.json").read_bytes()
    result = run_train(config_dir, *args)
    assert one_line_error(result) == (
        f"error: the job in {done} ran with other settings than this sweep gives it "
        "(data.batch_size: 8 -> 4): a config file or a setting changed since; undo the "
        "change, or use another hydra.sweep.dir"
    ), result.stderr[-3000:]
    assert result.returncode == 2 and _mtimes(done) == before
    assert (failed / "status.json").read_bytes() == failed_status
    experiment.write_text(unedited)

    # the failing value taken out of the grid: every job of this run finishes, so the run
    # ends 0; the earlier run's failed job is still in the summary, as the folder holds it.
    # The key swept before still names the job (given one value now): it is found finished
    # in its folder and skipped, run after run, not trained again in a new folder "0".
    time.sleep(2)  # its status is from before this run, whose file times count in seconds
    fixed = [a.replace("data.input_height=60,64", "data.input_height=64") for a in args]
    for _ in range(2):
        result = run_train(config_dir, *fixed)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "finished in an earlier sweep" in result.stdout
        jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
        assert jobs == sorted([failed.name, done.name])
        assert _mtimes(done) == before
        assert f"`{failed.name}` (failed)" in (sweep_dir / "summary.md").read_text()
    # a key swept before and left out now is a setting the finished job had: refused, not
    # a job of the default trained beside it (the default is 64 too, so said to be the same)
    dropped = [a for a in args if not a.startswith("data.input_height=")]
    assert one_line_error(run_train(config_dir, *dropped)) == (
        f"error: the finished job in {done} was started with other overrides "
        "(data.input_height: 64 -> -), to the same effect: a sweep run again finds its jobs by "
        "the overrides typed; type them as before, or use another hydra.sweep.dir"
    )


def test_a_sweep_with_a_bad_shared_setting_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    config_dir = tiny_config_dir(tmp_path)
    common = ("+sweep=dilate", f"hydra.sweep.dir={sweep_dir}")
    line = one_line_error(run_train(config_dir, *common, "trainer.max_epochs=ten"))
    assert line == "error: trainer.max_epochs must be an integer >= 1, not 'ten'"
    line = one_line_error(run_train(config_dir, *common, f"resume={tmp_path}"))
    assert "resume=RUN_DIR continues one run" in line
    # a bad value among those swept: its job failed once its turn came, after the others
    line = one_line_error(run_train(config_dir, *common, "data.dilate=3,4"))
    assert line == "error: data.dilate must be an odd integer >= 1, not 4 (one of the values swept)"
    assert not sweep_dir.exists()
    # a ranking every job draws its masks from: each job failed on it, one after the other
    ranking = f"data.extra_segmented.ranking={tmp_path}/gone.csv"
    line = one_line_error(run_train(config_dir, *common, ranking))
    assert (
        line
        == f"error: data.extra_segmented.ranking: cannot read {tmp_path}/gone.csv: no such file"
    )
    assert not sweep_dir.exists()
    # a split file a job (docs/datasets.md): job 1's, not there, failed after job 0 trained
    (tmp_path / "N0.csv").write_text("split,sample_id,segmented\n")
    split = f"data.split_file={tmp_path}/N${{data.num_segmented}}.csv"
    line = one_line_error(run_train(config_dir, *common, "data.num_segmented=0,10", split))
    assert line == (
        f"error: cannot read split file {tmp_path}/N10.csv (data.dilate=1 "
        "seed=0 data.num_segmented=10): no such file"
    )
    assert not sweep_dir.exists()
    # data every job would look for in vain (a paper dataset not fetched, CFD not there)
    nodata = tmp_path / "nodata"
    paper = ("experiment=paper/ksdd", "data.fold=0,1", f"paths.data_dir={nodata}")
    line = one_line_error(run_entry("train", "-m", *paper, f"hydra.sweep.dir={sweep_dir}"))
    assert line == f"error: data root {nodata}/ksdd does not exist (set data.root=PATH)"
    empty = tmp_path / "empty"
    (empty / "ksdd").mkdir(parents=True)  # made before the archive was unpacked
    unpacked_not = (*paper, f"paths.data_dir={empty}", f"hydra.sweep.dir={sweep_dir}")
    line = one_line_error(run_entry("train", "-m", *unpacked_not))
    assert line == f"error: data root {empty}/ksdd is empty (set data.root=PATH, or fill it)"
    assert not sweep_dir.exists()
    # the paper's per-fold split files (docs/datasets.md), whose name the fold is made of
    (tmp_path / "fetched" / "ksdd" / "kos01").mkdir(parents=True)
    (tmp_path / "N0_fold0.csv").write_text("split,sample_id,segmented\n")
    per_fold = f"data.split_file={tmp_path}/N${{data.num_segmented}}_fold${{data.fold}}.csv"
    fetched = (*paper, f"paths.data_dir={tmp_path / 'fetched'}")
    command = ("train", "-m", *fetched, "data.num_segmented=0", per_fold)
    line = one_line_error(run_entry(*command, f"hydra.sweep.dir={sweep_dir}"))
    assert line == (
        f"error: cannot read split file {tmp_path}/N0_fold1.csv (data.fold=1): no such file"
    )
    assert not sweep_dir.exists()
    # DAGM with some of the swept classes only (the paper's sweep runs all ten)
    dagm = make_dagm(tmp_path / "dagm", classes=(1, 2), images=2)
    classes = ("+sweep=paper_dagm_num_segmented", f"data.root={dagm}")
    line = one_line_error(run_entry("train", "-m", *classes, f"hydra.sweep.dir={sweep_dir}"))
    assert line == (
        f"error: no DAGM class folder for data.dagm_class=3,4,5,6,7,8,9,10 under {dagm} "
        "(found: Class1, Class2)"
    )
    tiles = (
        "experiment=cfd_tiles",
        "seed=0,1",
        f"data.tile.source={nodata}",
        f"paths.data_dir={nodata}",
    )
    line = one_line_error(run_entry("train", "-m", *tiles, f"hydra.sweep.dir={sweep_dir}"))
    assert line == (
        f"error: data.tile.source {nodata} does not exist (the photographs to tile; set "
        "data.tile.source=FOLDER, which experiment=cfd_tiles reads from CRACKSEG_CFD_DIR)"
    )
    # a data config with no root, on any launcher; a root under ~ is found as a job finds it
    unset = ("data=crack_segmentation", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    line = one_line_error(run_entry("train", "-m", *unset))
    assert line == "error: data.root=PATH is required"
    # a root the jobs' environment gives (hydra.job.env_set): looked for as a job will
    from_env = (
        "data=crack_segmentation",
        "data.root=${oc.env:JOBS_DATA}/cfd",
        f"+hydra.job.env_set.JOBS_DATA={nodata}",
        "seed=0,1",
    )
    line = one_line_error(run_entry("train", "-m", *from_env, f"hydra.sweep.dir={sweep_dir}"))
    assert line == f"error: data root {nodata}/cfd does not exist (set data.root=PATH)"
    outputs = ("paths.output_dir=/tmp/all", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    line = one_line_error(run_entry("train", "-m", *outputs))
    assert line == (
        "error: paths.output_dir is each job's own folder in a sweep: set hydra.sweep.dir instead"
    )
    line = one_line_error(run_entry("train", "-m", "resume=", "seed=0,1"))
    assert line.startswith("error: resume= is empty: leave it out; a sweep run again")
    home = ("data=crack_segmentation", "data.root='~/cfd'", "seed=0,1")
    result = run_entry(
        "train", "-m", *home, f"hydra.sweep.dir={sweep_dir}", env={"HOME": str(nodata)}
    )
    assert (
        one_line_error(result)
        == f"error: data root {nodata}/cfd does not exist (set data.root=PATH)"
    )
    assert not sweep_dir.exists()


def test_an_optuna_search_maximises_the_best_validation_ap(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    result = run_train(
        tiny_config_dir(tmp_path),
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    objectives = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "status.json").is_file()):
        status = json.loads((job / "status.json").read_text())
        objectives.append(status["metrics"]["best_val_image_ap"])
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert 0.01 <= config["loss"]["delta_cls"] <= 1.0
        assert 0.1 <= config["optim"]["lr"] <= 2.0
    assert len(objectives) == 2
    # What Optuna maximised is each trial's validation AP, never a test metric.
    assert found["best_value"] == pytest.approx(max(objectives))


def test_a_setting_and_seed_run_again_after_the_grid_changed_counts_once() -> None:
    """seed swept since: ``0_x=label`` (seed 0 by default) and ``0_x=label,seed=0`` are one
    run twice; the means count it once, and the summary says which job repeats which."""

    def row(job: str, seed: object, x: str, auc: float) -> dict:
        metrics = dict.fromkeys(summary.METRICS)
        return {
            "job": job,
            "status": "finished",
            "error": None,
            "seed": seed,
            "x": x,
            **metrics,
            "image_auc": auc,
        }

    rows = [
        row("0_x=label", 0, "label", 0.5),
        row("0_x=label,seed=0", "0", "label", 0.5),
        row("1_x=label,seed=1", "1", "label", 0.7),
        row("2_x=mask,seed=0", "0", "mask", 0.9),
    ]
    assert summary.repeated_jobs(rows) == {"0_x=label,seed=0": "0_x=label"}
    label, mask = summary.group_rows(rows)
    assert (label["n"], label["image_auc_mean"]) == (2, pytest.approx(0.6))
    assert mask["n"] == 1


def test_a_local_parallel_sweep_stopped_by_sigterm_stops_its_jobs_with_checkpoints(
    tmp_path: Path,
) -> None:
    """``kill PID`` of the sweep's own process (or a container's stop): its running jobs
    stop as after Ctrl-C, each with its checkpoint, before it ends; none trains on."""
    sweep_dir = tmp_path / "sweep"
    log = (tmp_path / "stderr.txt").open("w")  # not a pipe: two jobs' logs would fill it
    process = subprocess.Popen(
        [
            str(BIN / "crackseg-train"),
            "-m",
            "--config-dir",
            str(tiny_config_dir(tmp_path)),
            "experiment=tiny",
            "trainer.max_epochs=200",
            "seed=0,1,2",
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(sweep_dir.glob("*/checkpoints/last.ckpt"))) < 2:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs never got through an epoch"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)  # to the sweep's process alone
        try:
            assert process.wait(timeout=200) == 143
        except subprocess.TimeoutExpired:
            log.flush()
            pytest.fail("no end 200 s after SIGTERM:\n" + (tmp_path / "stderr.txt").read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert f"stopped: continue with the same command and hydra.sweep.dir={sweep_dir}" in stderr
    jobs = sorted(p for p in sweep_dir.iterdir() if (p / "status.json").is_file())
    assert len(jobs) == 2  # the third never started
    summary = (sweep_dir / "summary.md").read_text()
    assert "2 jobs: 0 finished, 0 failed, 2 unfinished (2 interrupted)" in summary
    assert "Not started: 1 job of the grid of the sweep's last run" in summary
    assert summary.count("`seed=2`") == 1
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
        assert (job / "checkpoints" / "interrupted.ckpt").is_file()


def test_a_sweep_run_one_job_after_another_stopped_in_a_job_writes_its_summary(
    tmp_path: Path,
) -> None:
    """The stopped job ends the sweep past Hydra's end of a multirun: its summary is written
    all the same, the stopped job counted as unfinished (not an earlier run's summary
    left in place, saying the sweep finished)."""
    sweep_dir = tmp_path / "sweep"
    marker = tmp_path / "stalled"
    sweep = ("--config-dir", str(tiny_config_dir(tmp_path)), "experiment=tiny")
    stall = "+callbacks.stall._target_=stall_callback.StallAt"
    args = ("-m", *sweep, f"hydra.sweep.dir={sweep_dir}", "seed=0,1", stall)
    process = start_train(marker, *args, epoch=0, batch=0)
    try:
        wait_for_stall(process, marker)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=200) == 143
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert f"stopped: continue with the same command and hydra.sweep.dir={sweep_dir}" in stderr
    summary = (sweep_dir / "summary.md").read_text()
    assert "1 job: 0 finished, 0 failed, 1 unfinished (1 interrupted)" in summary, summary
    assert "or waiting in a cluster's queue): `seed=1`." in summary


def test_a_sweep_started_in_the_folder_of_a_running_sweep_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """The folder is the running sweep's until its end: a second sweep there (the same
    command typed again, or another grid) would overwrite its multirun.yaml and summary and
    run its queued jobs beside it."""
    sweep_dir = tmp_path / "sweep"
    config_dir = tiny_config_dir(tmp_path)
    marker = tmp_path / "stalled"
    sweep = ("--config-dir", str(config_dir), "experiment=tiny", f"hydra.sweep.dir={sweep_dir}")
    stall = "+callbacks.stall._target_=stall_callback.StallAt"
    first = start_train(marker, "-m", *sweep, "seed=0,1", stall, epoch=0, batch=0)
    try:
        wait_for_stall(first, marker)
        before = {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()}
        again = run_entry(
            "train", "-m", *sweep, "seed=1,2", stall, env={"PYTHONPATH": str(HELPERS)}, timeout=120
        )
        line = one_line_error(again)
        holder = f"another process (pid {first.pid} on host {platform.node()})"
        assert line == f"error: {sweep_dir} is in use by {holder}; wait for it to end"
        assert {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()} == before
    finally:
        first.kill()
        first.wait()
    assert not multirun.held_by_another_process(sweep_dir)  # free however the sweep ended


def test_a_job_taken_from_the_queue_of_a_stopping_sweep_does_not_start(tmp_path: Path) -> None:
    """A worker whose job stopped takes the next queued job at once: that job ends before
    Hydra makes its folder while the sweep's process (a live one) stops."""
    from crackseg.runs.job_folders import SWEEP_STOPPING, job_folder

    mark = tmp_path / SWEEP_STOPPING
    mark.write_text(f"{os.getppid()}\n")  # another process, alive: the stopping sweep
    with pytest.raises(KeyboardInterrupt, match="is stopping: this job does not start"):
        job_folder(2, "seed=2", str(tmp_path), ["seed=2"])
    mark.write_text(f"{os.getpid()}\n")  # the sweep's own process names its folders on
    assert job_folder(2, "seed=2", str(tmp_path), ["seed=2"]) == "2_seed=2"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mark.write_text(f"{dead.pid}\n")  # left by a sweep killed before its end
    assert job_folder(2, "seed=2", str(tmp_path), ["seed=2"]) == "2_seed=2"


def test_the_folder_of_another_command_in_a_sweep_is_no_job_of_it(tmp_path):
    """An evaluation run into a training sweep's folder was read as one of its jobs: the
    sweep run again was refused (the finished job "ran with other settings") or named its
    new jobs by every key the evaluation did not share."""
    from crackseg.runs.job_names import keys_telling_jobs_apart

    def job(name: str, command: str, *overrides: str) -> None:
        hydra_dir = tmp_path / name / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
        (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": command}}}))
        (tmp_path / name / "status.json").write_text('{"status": "finished"}')

    job("0_seed=0", "train", "seed=0", "trainer.max_epochs=1")
    job("1_seed=1", "train", "seed=1", "trainer.max_epochs=1")
    job("myeval", "eval", "ckpt_path='0_seed=0/last.ckpt'", "data.dilate=5")
    assert keys_telling_jobs_apart(tmp_path, "train") == {"seed"}
    # no command: any folder's (the evaluation's keys too)
    assert keys_telling_jobs_apart(tmp_path) == {
        "seed",
        "trainer.max_epochs",
        "ckpt_path",
        "data.dilate",
    }
    # the other processes of a DDP job, which Lightning names train_ddp_process_N, too
    for name in ("train", "train_ddp_process_1"):
        hydra = {"sweep": {"dir": str(tmp_path)}, "job": {"name": name}}
        config = OmegaConf.create({"hydra": hydra})
        assert [p.name for p in multirun._job_folders(config)] == ["0_seed=0", "1_seed=1"]


def test_the_runs_of_a_folder_are_found_without_searching_inside_runs_or_hidden_folders(
    tmp_path,
):
    """Run folders are those with a ``.hydra/`` inside, in job order (2 before 10); what a
    run's folder holds (checkpoints, predictions) and hidden folders are not searched."""
    from crackseg.sweep.summary import find_job_dirs

    for job in ("10_seed=1", "2_seed=0", "older/0_seed=0", ".trash/0_seed=0"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
    (tmp_path / "2_seed=0" / "copied_in" / ".hydra").mkdir(parents=True)
    (tmp_path / "notes" / ".hydra").parent.mkdir()
    (tmp_path / "notes" / ".hydra").write_text("a file, not a run's folder\n")
    found = [job.relative_to(tmp_path).as_posix() for job in find_job_dirs(tmp_path)]
    assert found == ["2_seed=0", "10_seed=1", "older/0_seed=0"]
