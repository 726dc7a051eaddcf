"""What produced a run (``run_info.json``): versions, commit, machine, command line."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import crackseg
from crackseg.atomic import atomic_write_text
from crackseg.run_files import INFO_FILE


def git_commit(repo: Path) -> tuple[str | None, bool | None]:
    """The commit checked out in ``repo`` and whether the tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(dirty)


def provenance() -> dict[str, Any]:
    """What produced a run: package and library versions, commit, machine, command line."""
    package = Path(crackseg.__file__).resolve().parent
    # An installed wheel holds its configs inside the package; it may sit in some other git
    # repository (a project's .venv), whose commit says nothing about this code.
    installed = Path(crackseg.CONFIG_DIR).parent == package
    commit, dirty = (None, None) if installed else git_commit(package.parent)
    return {
        "crackseg_version": crackseg.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "pytorch_lightning": importlib.metadata.version("pytorch_lightning"),
        "host": platform.node(),
        "pid": os.getpid(),
        "command": sys.argv,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_run_info(folder: Path, resumed_from: Path | None = None) -> None:
    """``run_info.json``: the run's provenance; a resumption appends its own."""
    path = Path(folder) / INFO_FILE
    info = provenance()
    if resumed_from is None or not path.is_file():
        record = {**info, "resumed": []}
    else:
        record = json.loads(path.read_text())
        record.setdefault("resumed", []).append({**info, "checkpoint": str(resumed_from)})
    atomic_write_text(path, json.dumps(record, indent=2))
