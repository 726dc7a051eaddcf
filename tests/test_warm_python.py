"""The warm runner of the tests' commands (helpers.warm_python) runs a module as a fresh
``python -m`` does: the same arguments, path, folder, environment, exit codes and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import warm_python

PROBE = """
import json, multiprocessing, os, sys
print(json.dumps({
    "argv": sys.argv, "path": sys.path, "cwd": os.getcwd(), "env": os.environ.get("PROBE"),
    "start_method": multiprocessing.get_start_method(), "main": __name__,
    "spec": __spec__.name,
}))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "exit":
    sys.exit(3)
if how == "message":
    sys.exit("a message")
if how == "raise":
    raise ValueError("raised")
if how == "ctrl-c":
    raise KeyboardInterrupt
"""


def both(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, ...]:
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "PROBE": "yes", "PYTHONPATH": str(tmp_path / "extra")}
    fresh = subprocess.run(
        [sys.executable, "-m", "probe", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    warm = warm_python.run_module("probe", list(argv), tmp_path, env, timeout=60)
    return fresh, warm


@pytest.mark.parametrize(
    ("how", "code"), [("return", 0), ("exit", 3), ("message", 1), ("raise", 1), ("ctrl-c", -2)]
)
def test_a_warm_command_ends_as_a_fresh_one(tmp_path, how, code):
    fresh, warm = both(tmp_path, how)
    assert fresh.returncode == warm.returncode == code
    assert warm.stdout == fresh.stdout  # argv, sys.path, folder, environment, __main__
    if how in ("raise", "ctrl-c"):  # a traceback: its frames differ, not how it reads
        fresh_lines, warm_lines = fresh.stderr.splitlines(), warm.stderr.splitlines()
        assert warm_lines[:2] == fresh_lines[:2] and warm_lines[-1] == fresh_lines[-1]
        assert warm.stderr.count("Traceback") == 1
    else:
        assert warm.stderr == fresh.stderr
