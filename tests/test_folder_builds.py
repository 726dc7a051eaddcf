"""A dataset folder is built beside its place and renamed into it; what a killed builder
left is removed by the next build, what a builder at work holds is not."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

import pytest

from crackseg.atomic import (
    BUILD_LOCK_SUFFIX,
    PARTIAL,
    folder_built_beside,
    remove_abandoned_builds,
)
from crackseg.data.synthetic import generate_synthetic_dataset


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_finished_build_leaves_nothing_beside_its_folder(tmp_path):
    dst = tmp_path / "data"
    with folder_built_beside(dst) as tmp:
        (tmp / "a.png").write_bytes(b"x")
        assert _hidden(tmp_path) == sorted([tmp.name, tmp.name + BUILD_LOCK_SUFFIX])
        tmp.rename(dst)
    assert (dst / "a.png").is_file() and _hidden(tmp_path) == []
    with pytest.raises(RuntimeError), folder_built_beside(tmp_path / "other"):
        raise RuntimeError("the build failed")
    assert _hidden(tmp_path) == []


def test_the_folder_of_a_killed_builder_goes_at_the_next_build(tmp_path):
    """SIGKILL runs no ``finally``: its half-built folder and its lock stay, unheld."""
    builder = (
        "import os, sys, time\n"
        "from crackseg.atomic import folder_built_beside\n"
        "with folder_built_beside(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half.png').write_bytes(b'x')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n"
    )
    dst = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-c", builder, str(dst)], stdout=subprocess.PIPE, text=True
    )
    killed = process.stdout.readline().strip()
    os.kill(process.pid, 9)
    process.wait()
    process.stdout.close()
    assert _hidden(tmp_path) == sorted(
        [os.path.basename(killed), os.path.basename(killed) + BUILD_LOCK_SUFFIX]
    )
    with folder_built_beside(dst) as tmp:
        assert _hidden(tmp_path) == sorted([tmp.name, tmp.name + BUILD_LOCK_SUFFIX])


def _build(parent, name: str, host: str, dst: str = "data") -> tuple[object, int]:
    """A build of ``dst``: its folder and its lock file naming ``host``, the lock held (as
    another process's would be: flock locks are per open file)."""
    folder = parent / f".{dst}{PARTIAL}{name}"
    folder.mkdir()
    lock_fd = os.open(f"{folder}{BUILD_LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    os.write(lock_fd, host.encode())
    return folder, lock_fd


def test_the_folder_of_a_builder_at_work_or_of_another_host_is_left(tmp_path):
    dst = tmp_path / "data"
    at_work, at_work_lock = _build(tmp_path, "atwork", socket.gethostname())
    elsewhere, elsewhere_lock = _build(tmp_path, "elsewhere", "another-node")
    os.close(elsewhere_lock)  # its lock not seen here, as on a shared file system
    unlocked = tmp_path / f".data{PARTIAL}older"  # no lock file: left too
    unlocked.mkdir()
    try:
        with folder_built_beside(dst) as tmp:
            assert at_work.is_dir() and unlocked.is_dir() and tmp.is_dir()
    finally:
        os.close(at_work_lock)  # its builder killed
    assert remove_abandoned_builds(dst) == [at_work]
    assert elsewhere.is_dir() and unlocked.is_dir()


def test_data_found_made_clears_what_a_killed_builder_of_it_left(tmp_path):
    """A job of a sweep finds the synthetic set another job made, beside the folder a third
    job left when it was killed making it."""
    root = tmp_path / "synthetic"
    generate_synthetic_dataset(root, num_positives=2, num_negatives=2, height=32, width=32)
    _, lock_fd = _build(tmp_path, "killed", socket.gethostname(), dst="synthetic")
    os.close(lock_fd)
    generate_synthetic_dataset(root, num_positives=2, num_negatives=2, height=32, width=32)
    assert _hidden(tmp_path) == []
