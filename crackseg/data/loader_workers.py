"""How a run's DataLoader workers start: the start method that is safe in the process that
starts them, the stop signals they never act on, and their random seeds."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing import forkserver, resource_tracker
from multiprocessing.context import BaseContext

from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

#: The signals that stop a run: the main process acts on them, its loader workers never do.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Whether signals can be held back here (not on Windows, which has no process groups to
#: signal).
CAN_HOLD_SIGNALS = hasattr(signal, "pthread_sigmask")


#: What a fork server imports once for all the workers it starts: the data module, and with
#: it everything a worker unpickles.
FORK_SERVER_PRELOAD = ["crackseg.data.datamodule"]


def worker_start_method(distributed: bool) -> BaseContext | str | None:
    """How loader workers are started.

    - The platform's way (None: fork on Linux before Python 3.14) in a run of one process.
    - From a fork server (else spawned) in a process of a distributed run: its communication
      threads enter Python from C++, and one may hold the interpreter's thread-state lock at
      the moment a worker is forked; CPython 3.11 takes that lock in the child before it makes
      the lock anew, so the worker hangs before its first line and the run with it (2 of 12
      forked runs of 2 CPU processes hung so). The server is a process of one thread
      (:func:`start_fork_server`).
    - Fork inside a job of a local parallel sweep, whose joblib (loky) process makes loky's own
      start method the default, and that one cannot start a DataLoader's workers.
    """
    known = multiprocessing.get_all_start_methods()
    if distributed:
        if "forkserver" not in known:
            return "spawn"
        server = multiprocessing.get_context("forkserver")
        server.set_forkserver_preload(FORK_SERVER_PRELOAD)
        return server
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in known:
        return None
    return "fork" if "fork" in known else "spawn"


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back (blocked) in this thread while the block runs.

    A process started here inherits the block, however it is started (forked, spawned, or
    from a fork server first started here: one started earlier keeps the mask it had), and
    holds the signals until :func:`init_loader_worker` ignores them: a signal to the process
    group while a worker starts up cannot kill it. The starting process itself is not held
    back where it has other threads: one of them takes the signal, and Python runs its
    handler in the main thread as ever; alone, it gets it as the block ends."""
    if not CAN_HOLD_SIGNALS:
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


#: Whether :func:`start_fork_server` started this process's fork server.
_fork_server_started = False


def start_fork_server() -> None:
    """Start the fork server of a distributed run's loader workers (:func:`worker_start_method`)
    as the run starts: it imports the data code (a second or two) while the run sets up,
    instead of as Lightning's fit starts the first workers, where a Ctrl-C failed the run.
    Started once in a process, with the stop signals held, which its workers inherit
    (:func:`stop_signals_held`), and without the working folder on its import path
    (:func:`python_without_the_working_folder`)."""
    global _fork_server_started
    if _fork_server_started or not isinstance(worker_start_method(distributed=True), BaseContext):
        return
    if CAN_HOLD_SIGNALS:  # it unblocks the stop signals once started (not a restore)
        resource_tracker.ensure_running()
    with stop_signals_held(), python_without_the_working_folder():
        forkserver.ensure_running()
    _fork_server_started = True


@contextlib.contextmanager
def python_without_the_working_folder() -> Iterator[None]:
    """Python processes started here leave the working folder off their import path
    (PYTHONSAFEPATH): a fork server runs ``python -c``, which puts it first, and a folder
    there named crackseg (the one above a clone) was imported as crackseg, failing every
    worker with "cannot import name ... from 'crackseg' (unknown location)"."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = before


class StopSafeDataLoader(DataLoader):
    """A DataLoader whose workers are started with the stop signals held
    (:func:`stop_signals_held`); with :func:`init_loader_worker` as ``worker_init_fn`` they
    never act on them."""

    def __iter__(self):  # noqa: ANN204 (DataLoader's own iterator types are private)
        method = self._start_method() if self.num_workers > 0 else "fork"
        if method == "forkserver":
            start_fork_server()  # once: it changes the environment for a moment
        elif method != "fork" and CAN_HOLD_SIGNALS:
            resource_tracker.ensure_running()  # it unblocks the stop signals once started
        with stop_signals_held():
            return super().__iter__()

    def _start_method(self) -> str:
        """How the workers will start: the loader's context's way, else the default (the
        first of the methods known; asking for it would fix it for the process)."""
        if self.multiprocessing_context is not None:
            return self.multiprocessing_context.get_start_method()
        default = multiprocessing.get_start_method(allow_none=True)
        return default or multiprocessing.get_all_start_methods()[0]


def init_loader_worker(worker_id: int, rank: int, seeded: bool) -> None:
    """A loader worker as it starts: it leaves SIGINT and SIGTERM to the main process, and
    takes its random seeds as Lightning seeds workers (``seed_everything(workers=True)``,
    which sets ``PL_SEED_WORKERS``; a loader with its own ``worker_init_fn`` gets none from
    Lightning).

    Ctrl-C, ``timeout``, ``kill -- -PGID`` and SLURM signal the whole process group. A
    worker that died of the signal ended the run with "DataLoader worker ... is killed by
    signal" before the main process could stop it as a stop (``interrupted.ckpt``, status
    ``interrupted``); the main process shuts its workers down itself. A signal held back
    since the worker started (:class:`StopSafeDataLoader`) is dropped here, unseen."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if CAN_HOLD_SIGNALS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if seeded:
        pl_worker_init_function(worker_id, rank=rank)
