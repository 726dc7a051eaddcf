"""CPU threads per job, so that the jobs of a local sweep share the cores instead of fighting.

torch starts one intra-op thread per core in every process. Two trainings side by side then
keep twice as many busy threads as there are cores, and each parallel operation waits for
threads the other job holds: on 2 cores, two trainings each ran over ten times slower. So
the jobs of a sweep that run at the same time on one machine (``hydra/launcher=
local_parallel``) split the cores, counting their data-loader workers (processes that run
torch with one thread each):

    threads = max(1, cores // jobs - workers)

with ``cores`` the cores this process may use (``os.sched_getaffinity``, capped by a
container's CPU quota), ``jobs`` the
launcher's ``n_jobs`` and ``workers`` the job's ``data.num_workers``; OMP_NUM_THREADS, where
it is set, caps it (a count the user chose is never raised). A single run, or a sweep
whose jobs run one after another, keeps torch's default (one thread per core, or
OMP_NUM_THREADS where it is set). Every job logs the number it took.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from crackseg.runs.gpus import current_hydra_config, runs_parallel_locally

log = logging.getLogger(__name__)

#: cgroup v2's CPU quota of this process's container ("QUOTA PERIOD", or "max PERIOD").
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def threads_per_job(cores: int, jobs: int, workers: int) -> int:
    """torch intra-op threads for each of ``jobs`` jobs sharing ``cores`` cores, each job
    also running ``workers`` loader workers: ``max(1, cores // jobs - workers)``."""
    return max(1, cores // max(1, jobs) - workers)


def usable_cores() -> int:
    """The cores this process may run on (a SLURM or taskset allocation, not the machine's),
    no more than a container's CPU quota grants (``docker --cpus=2`` on a 64-core host: 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return min(cores, quota) if quota is not None else cores


def cpu_quota() -> int | None:
    """The CPUs of this process's cgroup v2 quota, rounded up; None where there is none."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def jobs_side_by_side(hydra_cfg: DictConfig | None, cores: int) -> int:
    """How many jobs of this run's sweep run at once on this machine (1 for a single run).

    joblib's ``n_jobs``: a negative value counts back from the cores (-1 is one job per core).
    """
    if not runs_parallel_locally(hydra_cfg):
        return 1
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)


def set_job_threads(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> int:
    """Give this job its share of the cores (see the module docstring); returns the number
    of torch intra-op threads the job now uses, which it also logs."""
    import torch

    hydra_cfg = hydra_cfg if hydra_cfg is not None else current_hydra_config()
    cores = usable_cores()
    jobs = jobs_side_by_side(hydra_cfg, cores)
    processes = ddp_processes_on_cpu(cfg)
    if jobs == 1 and processes == 1:
        threads = torch.get_num_threads()
        log.info("torch threads: %d (%d cores, no other job beside this one)", threads, cores)
        return threads
    workers = int(OmegaConf.select(cfg, "data.num_workers", default=0) or 0)
    threads = threads_per_job(cores, jobs * processes, workers)
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    if pinned.isdigit() and int(pinned) > 0:  # (joblib's workers get cores // n_jobs there)
        threads = min(threads, int(pinned))
    torch.set_num_threads(threads)
    if processes > 1:  # kept by Lightning, which would give each cores // processes, and
        os.environ["OMP_NUM_THREADS"] = str(threads)  # by the processes it starts
    # (a local sweep of DDP runs is refused: never both)
    sharing = (
        f"the run's {processes} DDP processes" if processes > 1 else f"{jobs} jobs side by side"
    )
    log.info(
        "torch threads: %d (%d cores shared by %s; loader workers per %s: %d)",
        threads,
        cores,
        sharing,
        "process" if processes > 1 else "job",
        workers,
    )
    return threads


def ddp_processes_on_cpu(cfg: DictConfig) -> int:
    """The processes a run's DDP starts on this machine's CPU (``trainer=ddp
    trainer.accelerator=cpu trainer.devices=2``: 2), which share its cores; 1 otherwise."""
    import torch

    trainer = cfg.get("trainer") or {}
    strategy = str(trainer.get("strategy", "auto"))
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not strategy.startswith("ddp") or not on_cpu:
        return 1
    count = len(devices) if isinstance(devices, list | ListConfig) else devices
    return count if isinstance(count, int) and count > 1 else 1
