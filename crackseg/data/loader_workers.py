"""How a run's DataLoader workers start: the start method that works inside a job of a
local parallel sweep, and each worker's signals and random seeds."""

from __future__ import annotations

import multiprocessing
import signal

from lightning_fabric.utilities.seed import pl_worker_init_function


def worker_start_method() -> str | None:
    """How loader workers are started: the platform's way (None), except inside a job of a
    local parallel sweep, whose joblib (loky) process makes loky's own start method the
    default, and that one cannot start a DataLoader's workers."""
    method = multiprocessing.get_start_method(allow_none=True)
    known = multiprocessing.get_all_start_methods()
    if method is None or method in known:
        return None
    return "fork" if "fork" in known else "spawn"


def init_loader_worker(worker_id: int, rank: int, seeded: bool) -> None:
    """A loader worker as it starts: it leaves SIGINT and SIGTERM to the main process, and
    takes its random seeds as Lightning seeds workers (``seed_everything(workers=True)``,
    which sets ``PL_SEED_WORKERS``; a loader with its own ``worker_init_fn`` gets none from
    Lightning).

    Ctrl-C, ``timeout``, ``kill -- -PGID`` and SLURM signal the whole process group. A
    worker that died of the signal ended the run with "DataLoader worker ... is killed by
    signal" before the main process could stop it as a stop (``interrupted.ckpt``, status
    ``interrupted``); the main process shuts its workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if seeded:
        pl_worker_init_function(worker_id, rank=rank)
