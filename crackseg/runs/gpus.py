"""One GPU per job when a multirun runs its jobs side by side on one machine.

joblib's launcher starts ``n_jobs`` worker processes and hands them the jobs of a sweep;
nothing in Hydra says which GPU a job should use, so without help every job trains on
GPU 0. Here each job takes a GPU of its own for its whole run by an exclusive lock on
``<lock dir>/gpu<id>.lock`` (a record lock, :func:`crackseg.runs.ownership.lock_file`, in one
folder for every sweep on the machine, :func:`gpu_lock_dir`): the kernel drops it when
the holder exits or dies, its data loader workers do not inherit it, so a killed job
never leaves a GPU claimed, and jobs beyond the number of GPUs wait until one is released.

The CUDA_VISIBLE_DEVICES trap: CUDA reads that variable once, when it is initialised in a
process. loky keeps its workers between jobs, so a worker whose first job narrowed the
variable to GPU 2 would see only GPU 2 for every later job, whatever that job claimed.
``job_device_context`` therefore leaves the variable alone and pins the job with
``trainer.devices=[k]`` (and ``torch.cuda.set_device(k)`` for code that uses the current
device), which is right whether or not CUDA is already initialised in the worker.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crackseg.runs.ownership import lock_file

log = logging.getLogger(__name__)


def parse_visible_devices(value: str | None) -> list[str] | None:
    """The ids listed in a CUDA_VISIBLE_DEVICES value; None when the variable is unset.

    CUDA stops at the first invalid entry (``-1`` hides every GPU); ids may be indices or
    ``GPU-<uuid>``/``MIG-<uuid>`` strings, kept as written.
    """
    if value is None:
        return None
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break
        ids.append(item)
    return ids


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids that name them on the machine.

    From CUDA_VISIBLE_DEVICES when it is set, else ``0 .. torch.cuda.device_count()-1``;
    empty on a machine (or a torch build) without CUDA, which makes the GPU claim a no-op.
    """
    import torch

    count = torch.cuda.device_count()  # does not initialise CUDA in this process
    if count == 0:
        return []
    listed = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if listed is None:
        return [str(i) for i in range(count)]
    return listed[:count]


def _lock_name(gpu_id: str) -> str:
    return "gpu" + "".join(c if c.isalnum() or c in "-_" else "_" for c in str(gpu_id)) + ".lock"


@contextlib.contextmanager
def claim_gpu(
    lock_dir: str | os.PathLike[str], gpu_ids: Sequence[str | int], poll_s: float = 2.0
) -> Iterator[str | None]:
    """Hold the first free GPU of ``gpu_ids`` for the duration; yields its id.

    Free means no other process holds ``lock_dir/gpu<id>.lock``; when all are taken it
    polls every ``poll_s`` seconds. No GPUs: yields None.
    """
    if not gpu_ids:
        yield None
        return
    lock_path = Path(lock_dir)
    lock_path.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu in gpu_ids:
            fd = lock_file(lock_path / _lock_name(str(gpu)))
            if fd is not None:
                break
        else:
            if not waited:
                log.info("all %d GPUs are taken by other jobs; waiting for one", len(gpu_ids))
                waited = True
            time.sleep(poll_s)
            continue
        break
    os.ftruncate(fd, 0)  # a killed holder may have left its pid
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield str(gpu)
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the lock


def gpu_lock_dir() -> Path:
    """Where the jobs of every local sweep of this user claim GPUs: one folder for the
    machine, so two sweeps side by side never share a GPU (``$CRACKSEG_GPU_LOCK_DIR``, else
    ``crackseg-gpu-locks-<uid>`` in the temporary folder)."""
    chosen = os.environ.get("CRACKSEG_GPU_LOCK_DIR")
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"crackseg-gpu-locks-{os.getuid()}"


def current_hydra_config() -> DictConfig | None:
    """The running job's Hydra config, or None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def runs_parallel_locally(hydra_cfg: DictConfig | None) -> bool:
    """True for a multirun whose jobs share this machine at the same time (joblib, n_jobs>1)."""
    if hydra_cfg is None:
        return False
    from hydra.types import RunMode

    if OmegaConf.select(hydra_cfg, "mode") not in (RunMode.MULTIRUN, "MULTIRUN"):
        return False
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if "joblib" not in target.lower():
        return False
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1)
    return n_jobs is None or int(n_jobs) != 1


def in_local_parallel_sweep() -> bool:
    """True inside a job of a multirun whose jobs share this machine at the same time."""
    return runs_parallel_locally(current_hydra_config())


def _wants_one_gpu(cfg: DictConfig) -> bool:
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")).lower()
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if accelerator not in ("auto", "gpu", "cuda"):
        return False
    if str(devices) == "1":
        return True
    if OmegaConf.is_list(devices) and len(devices) == 1:
        log.warning("trainer.devices=%s chooses the jobs' GPU: each job runs on it", devices)
    else:
        log.warning(
            "trainer.devices=%s: a job using several devices is not given a GPU of its own; "
            "run such sweeps with n_jobs=1",
            devices,
        )
    return False


@contextlib.contextmanager
def job_device_context(
    cfg: DictConfig, hydra_cfg: DictConfig | None = None, poll_s: float = 2.0
) -> Iterator[str | None]:
    """Give one job of a local parallel sweep a GPU of its own; a no-op everywhere else.

    Active only in a multirun launched by joblib with ``n_jobs`` other than 1, on a machine
    with GPUs, for a job that trains on one GPU. It claims a GPU with a lock in
    :func:`gpu_lock_dir` (shared by every sweep on the machine) and sets
    ``cfg.trainer.devices=[k]``, k being the index of that GPU among the visible ones.
    Before releasing, it frees the job's cached GPU memory so the next job on that GPU finds
    it empty (the worker's CUDA context, a few hundred MB, stays). Yields the claimed GPU id,
    or None.
    """
    hydra_cfg = hydra_cfg if hydra_cfg is not None else current_hydra_config()
    if not runs_parallel_locally(hydra_cfg) or not _wants_one_gpu(cfg):
        yield None
        return
    gpus = visible_gpus()
    if not gpus:
        yield None
        return
    with claim_gpu(gpu_lock_dir(), gpus, poll_s=poll_s) as gpu_id:
        index = gpus.index(gpu_id)
        cfg.trainer.devices = [index]
        _set_device(index)
        log.info("this job trains on GPU %s (cuda:%d)", gpu_id, index)
        try:
            yield gpu_id
        finally:
            _release_memory()


def _set_device(index: int) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(index)


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def local_jobs(default: Any = 2) -> int:
    """The default number of parallel local jobs: one per visible GPU, else ``default``."""
    return len(visible_gpus()) or int(default)
