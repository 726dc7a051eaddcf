"""Independent trainings on one machine share its CPU cores.

The jobs of a local parallel sweep split the cores from the start (crackseg.runs.threads);
two trainings started separately (two terminals, two scripts) know nothing of each other
and each keep a thread per core, which on 2 cores made both over five times slower than
one alone. So every training whose thread count nobody pinned (no OMP_NUM_THREADS, not
``trainer.deterministic``, whose results would then depend on what else runs) registers in
a folder of lock files (one per user and set of usable cores), one per live training, and
every few seconds takes its share:

    threads = its own count                                     alone
    threads = min(own, max(1, cores // runs - workers))         with runs - 1 others live

Its own count is torch's default (one thread per core) for a single run, and its share of
the sweep's cores for a job of a local parallel sweep, which so counts, and is counted by,
trainings started beside the sweep.

An entry is a file locked with :func:`crackseg.runs.ownership.lock_file` (an OS lock that dies
with its process, and is not inherited by loader workers); an entry whose lock can be taken
belongs to a run that died and is removed by whoever finds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from crackseg.runs.ownership import lock_file
from crackseg.runs.threads import threads_per_job, usable_cores

log = logging.getLogger(__name__)

#: Seconds between two looks at how many trainings are live.
CHECK_EVERY_S = 2.0


def default_registry() -> Path:
    """The folder of live trainings' entries: one per user and set of usable cores, so jobs
    given disjoint cores of one node (SLURM, taskset) do not count each other."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = list(range(os.cpu_count() or 1))
    cores_id = hashlib.sha1(",".join(map(str, cores)).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"crackseg-runs-{os.getuid()}-{cores_id}"


class RunRegistry:
    """This process's entry among the live trainings of the machine (of this user)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or default_registry()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{self.folder} is not a private folder of this user")
        # Locked before it appears under its final name, so no one sees it unlocked.
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging = self.folder / f".{name}.new"
        fd = lock_file(staging, 0o600)
        if fd is None:  # a name no other process can have chosen
            raise OSError(f"cannot lock {staging}")
        self._fd = fd
        self.path = self.folder / f"{name}.lock"
        os.rename(staging, self.path)

    def live_runs(self) -> int:
        """Live trainings, this one included; removes the entries of runs that died."""
        live = 0
        for entry in self.folder.glob("*.lock"):
            if entry == self.path:
                live += 1
                continue
            try:
                fd = lock_file(entry, create=False)
            except FileNotFoundError:  # removed by another run meanwhile
                continue
            if fd is None:
                live += 1  # its holder is alive
            else:
                entry.unlink(missing_ok=True)
                os.close(fd)  # releases the lock taken from a dead entry
        return live

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)


class ShareCoresWithOtherRuns(pl.Callback):
    """Every ``CHECK_EVERY_S`` seconds of training, validation or testing, set torch's
    intra-op threads to this run's share of the cores (module docstring); logs each change.

    Between stages (fit, validate, test) the entry is closed and the process's own thread
    count restored, so a sweep's next job in the same process starts from it.
    """

    def __init__(self, workers: int, registry_folder: Path | None = None) -> None:
        self.workers = workers
        self.registry_folder = registry_folder
        self.registry: RunRegistry | None = None
        self.cores = usable_cores()
        self.own_threads = torch.get_num_threads()
        self._next_check = 0.0
        self._logged_threads = self.own_threads

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.registry is not None:
            return
        self.own_threads = torch.get_num_threads()
        self._logged_threads = self.own_threads
        try:
            self.registry = RunRegistry(self.registry_folder)
        except OSError as error:  # a full /tmp, a folder of another user: run alone
            log.warning("not sharing the CPU cores with other trainings: %s", error)
            return
        self._next_check = 0.0

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None
            torch.set_num_threads(self.own_threads)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: BaseException
    ) -> None:
        # Lightning skips teardown when a stage raises; the next job of a sweep in this
        # process must not start from this one's share.
        self.teardown(trainer, pl_module, "")

    def threads_for(self, runs: int) -> int:
        if runs <= 1:
            return self.own_threads
        return min(self.own_threads, threads_per_job(self.cores, runs, self.workers))

    def share(self) -> None:
        now = time.monotonic()
        if self.registry is None or now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        try:
            runs = self.registry.live_runs()
        except OSError as error:
            log.warning("not sharing the CPU cores with other trainings any more: %s", error)
            self.teardown(None, None, "")
            return
        threads = self.threads_for(runs)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if threads != self._logged_threads:  # once per change, not per stage
            self._logged_threads = threads
            log.info(
                "torch threads: %d (%d crackseg trainings on %d cores; loader workers: %d)",
                threads,
                runs,
                self.cores,
                self.workers,
            )

    def on_train_batch_start(self, *args: Any) -> None:
        self.share()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.share()

    def on_test_batch_start(self, *args: Any) -> None:
        self.share()
