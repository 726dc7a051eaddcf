"""The data loader's workers: they start the way that is safe in their process, leave stop
signals to the main process from their birth on, take their random seeds as Lightning gives
them, and an error one of them raises is one line."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from crackseg.data.loader_workers import (
    STOP_SIGNALS,
    StopSafeDataLoader,
    init_loader_worker,
    stop_signals_held,
    worker_start_method,
)
from crackseg.error_lines import one_line
from crackseg.errors import DataError


class SignalsItself(Dataset):
    """Four items; the worker loading item 1 gets SIGTERM and SIGINT, as every process of
    the group does from ``timeout``, ``kill -- -PGID``, SLURM or Ctrl-C."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return index


#: Every way a worker may be started here; a fork server is how a distributed run starts them.
START_METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", START_METHODS)
def test_a_loader_worker_outlives_the_stop_signals_the_main_process_acts_on(method):
    worker_init = partial(init_loader_worker, rank=0, seeded=False)
    loader = StopSafeDataLoader(
        SignalsItself(), num_workers=1, worker_init_fn=worker_init, multiprocessing_context=method
    )
    assert [int(batch) for batch in loader] == [0, 1, 2, 3]


#: What a worker of :func:`_held_at_birth` found as it started, before its init ran.
BIRTH: dict[str, set[int]] = {}


def _held_at_birth(worker_id: int) -> None:
    BIRTH["held"] = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}
    init_loader_worker(worker_id, rank=0, seeded=False)


class SignalState(Dataset):
    """One item: the stop signals the worker held as it started, holds now, and ignores."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        held_now = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}
        stops = {int(s) for s in STOP_SIGNALS}
        return {
            "held_at_birth": sorted(stops & BIRTH["held"]),
            "held_now": sorted(stops & held_now),
            "ignored": sorted(s for s in stops if signal.getsignal(s) == signal.SIG_IGN),
        }


@pytest.mark.parametrize("method", START_METHODS)
def test_a_loader_worker_holds_the_stop_signals_from_its_birth_until_it_ignores_them(method):
    """A signal to the process group while a worker starts up (a spawned one imports torch
    first) waits, held, and is dropped once the worker ignores it: the worker is never killed
    by it. The main process holds the signals only while it starts its workers."""
    loader = StopSafeDataLoader(
        SignalState(), num_workers=1, worker_init_fn=_held_at_birth, multiprocessing_context=method
    )
    state = next(iter(loader))
    stops = sorted(int(s) for s in STOP_SIGNALS)
    assert [int(s) for s in state["held_at_birth"]] == stops
    assert [int(s) for s in state["held_now"]] == []
    assert [int(s) for s in state["ignored"]] == stops
    held_here = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert not held_here & set(STOP_SIGNALS)


def test_the_stop_signals_held_come_in_when_the_hold_ends():
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with stop_signals_held():
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            time.sleep(0.05)
            assert got == []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [signal.SIGTERM]


def test_a_distributed_process_starts_its_loader_workers_from_a_fork_server():
    """A process of a distributed run has communication threads that enter Python: a worker
    forked from it may hang before its first line (CPython 3.11 takes a lock the fork may have
    left held); a fork server has one thread. Alone, a run forks them (fast, no imports)."""
    started = worker_start_method(distributed=True, preload=["crackseg.data.datamodule"])
    assert started.get_start_method() == "forkserver"
    assert worker_start_method(distributed=False, preload=[]) is None


class RandomDraws(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return torch.rand(()).item(), float(np.random.rand()), random.random()


def _draws(worker_init) -> list:  # noqa: ANN001
    torch.manual_seed(0)
    loader = DataLoader(RandomDraws(), num_workers=2, worker_init_fn=worker_init)
    return [tuple(float(v) for v in batch) for batch in loader]


def test_a_loader_worker_is_seeded_as_lightning_seeds_it():
    """``seed_everything(workers=True)`` gives a loader without a worker_init_fn Lightning's:
    crackseg's, which every loader has, seeds as it would (augmentation repeats)."""
    lightnings = _draws(partial(pl_worker_init_function, rank=1))
    assert _draws(partial(init_loader_worker, rank=1, seeded=True)) == lightnings
    assert _draws(partial(init_loader_worker, rank=0, seeded=True)) != lightnings


class BadFile(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        raise DataError("truncated JPEG file (no end-of-image marker): images/a.jpg")


def test_an_error_of_a_loader_worker_is_its_own_line():
    """Raised again in the main process, it reads "Caught DataError in DataLoader worker
    process 0." over its worker's traceback: the line is the error's own."""
    with pytest.raises(DataError) as raised:
        next(iter(DataLoader(BadFile(), num_workers=1)))
    expected = "truncated JPEG file (no end-of-image marker): images/a.jpg"
    assert one_line(raised.value) == expected
