"""Training runs that hold still at a chosen point, for the fault tests to stop them there.

The run needs ``+callbacks.stall._target_=stall_callback.StallAt`` among its arguments;
``start_train`` puts this folder on its PYTHONPATH and tells the callback where to stall.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
REPO = HELPERS.parents[1]


def start_train(
    marker: Path,
    *args: str,
    epoch: int,
    batch: int | str,
    env: dict | None = None,
    new_session: bool = False,
) -> subprocess.Popen:
    """Start ``crackseg-train ARGS`` to hold still at ``batch`` of ``epoch`` (as it starts;
    or "vN", "val", ...: stall_callback.StallAt), writing ``marker`` once it does; in a
    process group of its own with ``new_session`` (one a signal can be sent to whole)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crackseg.train", *args],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(HELPERS),
            "CRACKSEG_TEST_STALL": f"{epoch}:{batch}:{marker}",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_for_stall(process: subprocess.Popen, marker: Path, timeout: float = 300) -> None:
    """Return once the run holds still; fail if it ended, or never got there in time."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall point"
        time.sleep(0.05)
