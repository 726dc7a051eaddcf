"""The data loader's workers: they start the way that is safe in their process, leave stop
signals to the main process from their birth on, take their random seeds as Lightning gives
them, and an error one of them raises is one line."""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from crackseg.data.loader_workers import (
    STOP_SIGNALS,
    init_loader_worker,
    stop_signals_held,
    worker_start_method,
)
from crackseg.error_lines import one_line
from crackseg.errors import DataError

#: How workers are started: forked or spawned, or as a process of a distributed run starts
#: them (from a fork server).
START_METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", [*START_METHODS, "distributed"])
def test_a_loader_worker_holds_the_stop_signals_from_its_birth_and_then_ignores_them(method):
    """Ctrl-C, ``timeout``, ``kill -- -PGID`` and SLURM signal the whole process group: a
    signal while a worker starts up (a spawned one imports torch first) waits, held, and is
    dropped once the worker ignores it; one later is ignored. The worker is never killed by
    it, and the main process holds the signals only while it starts its workers."""
    script = Path(__file__).parent / "helpers" / "worker_signals.py"
    done = subprocess.run(
        [sys.executable, str(script), method], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout)
    assert state["started"] == ("forkserver" if method == "distributed" else method)
    stops = sorted(int(s) for s in STOP_SIGNALS)
    assert [item["item"] for item in state["items"]] == [0, 1, 2, 3]  # item 1 signalled it
    for item in state["items"]:
        assert item["held_at_birth"] == stops
        assert item["held"] == []
        assert item["ignored"] == stops
    assert state["held_here"] == []


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


def test_a_run_of_one_process_forks_its_loader_workers():
    """Forked workers start at once (no imports); only a distributed run's need a fork
    server (a process with communication threads may hang a worker forked from it)."""
    assert worker_start_method(distributed=False) is None


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
