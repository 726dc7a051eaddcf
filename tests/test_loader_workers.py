"""The data loader's workers: they leave stop signals to the main process, take their random
seeds as Lightning gives them, and an error one of them raises is one line."""

from __future__ import annotations

import os
import random
import signal
from functools import partial

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from crackseg.data.loader_workers import init_loader_worker
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


def test_a_loader_worker_outlives_the_stop_signals_the_main_process_acts_on():
    worker_init = partial(init_loader_worker, rank=0, seeded=False)
    loader = DataLoader(SignalsItself(), num_workers=1, worker_init_fn=worker_init)
    assert [int(batch) for batch in loader] == [0, 1, 2, 3]


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
