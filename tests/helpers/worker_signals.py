"""What a loader worker started one way makes of the stop signals, as JSON on stdout.

Run by tests/test_loader_workers.py in an interpreter of its own (``python worker_signals.py
METHOD``): a process has one fork server, which keeps the signal mask and preloads of the
moment it started, and pytest's worker has one of its own (tests/helpers/warm_python.py).
METHOD is ``fork`` or ``spawn``, or ``distributed``: the way a process of a distributed run
starts its workers (crackseg.data.loader_workers.worker_start_method), its fork server
started first as a run starts it (start_fork_server).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from torch.utils.data import Dataset

from crackseg.data.loader_workers import (
    STOP_SIGNALS,
    StopSafeDataLoader,
    init_loader_worker,
    start_fork_server,
    worker_start_method,
)

#: The stop signals a worker of :func:`init_held_at_birth` held as it started, before its init.
BIRTH: dict[str, list[int]] = {}


def _held() -> list[int]:
    """The stop signals this thread holds back (blocks)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return sorted(int(s) for s in STOP_SIGNALS if s in held)


def init_held_at_birth(worker_id: int) -> None:
    BIRTH["held"] = _held()
    init_loader_worker(worker_id, rank=0, seeded=False)


class SignalState(Dataset):
    """Four items; the worker loading item 1 gets SIGTERM and SIGINT, as every process of
    the group does from ``timeout``, ``kill -- -PGID``, SLURM or Ctrl-C. Each item tells
    the stop signals its worker held as it started, holds now, and ignores."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        if index == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        ignored = [int(s) for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
        return {"item": index, "held_at_birth": BIRTH["held"], "held": _held(), "ignored": ignored}


def main(method: str) -> None:
    start = method
    if method == "distributed":
        start_fork_server()
        start = worker_start_method(distributed=True)
    loader = StopSafeDataLoader(
        SignalState(),
        batch_size=None,  # the items as they are
        num_workers=1,
        worker_init_fn=init_held_at_birth,
        multiprocessing_context=start,
    )
    items = list(loader)
    started = loader.multiprocessing_context.get_start_method()
    print(json.dumps({"started": started, "items": items, "held_here": _held()}))


if __name__ == "__main__":
    main(sys.argv[1])
