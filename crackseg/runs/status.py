"""What a run folder holds: its ``status.json`` (running, finished, failed, interrupted) and the
checkpoints a run could continue from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from crackseg.atomic import atomic_write_text
from crackseg.run_files import (
    CHECKPOINT_DIR,
    HYDRA_FILES,
    INTERRUPTED_CHECKPOINT,
    LAST_CHECKPOINT,
    LOCK_FILE,
    SLURM_CHECKPOINTS,
    STATUS_FILE,
    SWEEP_FILE,
)


def load_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object (``status.json``, ``metrics.json``), None where there
    is no file; raises OSError or ValueError where it cannot be read or holds no object."""
    if not path.is_file():
        return None
    loaded = json.loads(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a JSON {type(loaded).__name__}, not an object")
    return loaded


def load_status(folder: Path) -> dict[str, Any] | None:
    """The run's ``status.json``, None where it has none; raises OSError or ValueError
    where it cannot be read (the sweep summary reports that as a failed job)."""
    return load_json_object(Path(folder) / STATUS_FILE)


def read_status(folder: Path) -> dict[str, Any] | None:
    """The run's status, None where it has none or it cannot be read."""
    try:
        return load_status(folder)
    except (OSError, ValueError):
        return None


def write_status(folder: Path, status: str, **fields: Any) -> None:
    """``status.json``: strict JSON, an undefined metric (AUC on one class) null, not NaN."""
    record = _finite({"status": status, **fields})
    atomic_write_text(Path(folder) / STATUS_FILE, json.dumps(record, indent=2, allow_nan=False))


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, in dicts and lists too, as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def finished_status(folder: Path) -> dict[str, Any] | None:
    """The status of a run that already finished in this folder, if any."""
    status = read_status(folder)
    return status if status is not None and status.get("status") == "finished" else None


def holds_sweep(folder: Path) -> bool:
    """Whether ``folder`` is a sweep's (it holds the sweep's ``multirun.yaml``); False where
    it cannot be looked at (a name too long: worded where the folder is made)."""
    try:
        return (Path(folder) / SWEEP_FILE).is_file()
    except OSError:
        return False


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run: one that saved a checkpoint, or that has a status
    other than failed. A run that failed before its first checkpoint holds nothing."""
    folder = Path(folder)
    if _checkpoints(folder):
        return True
    if not (folder / STATUS_FILE).exists():
        return False
    status = read_status(folder)
    return status is None or status.get("status") != "failed"


def holds_only_a_refusal(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but the record of a command refused before its work
    (:func:`holds_only_a_record`, its status failed). A later command may take such a folder
    (one the user named with ``hydra.run.dir``)."""
    status = read_status(folder) if holds_only_a_record(folder) else None
    return status is not None and status.get("status") == "failed"


def holds_only_a_record(folder: Path) -> bool:
    """Whether ``folder`` holds no more than a command's record: its status, Hydra's
    ``.hydra/`` files, the job's log and the lock."""
    folder = Path(folder)
    try:
        names = {path.name for path in folder.iterdir()}
        hydra = folder / ".hydra"
        hydra_files = {path.name for path in hydra.iterdir()} if hydra.is_dir() else set()
    except OSError:
        return False
    record = {".hydra", STATUS_FILE, LOCK_FILE}
    others = {name for name in names - record if not name.endswith(".log")}
    return not others and hydra_files <= HYDRA_FILES


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoints a run could continue from: the last epoch's, SIGTERM's or SLURM's."""
    candidates = [
        folder / CHECKPOINT_DIR / LAST_CHECKPOINT,
        folder / CHECKPOINT_DIR / INTERRUPTED_CHECKPOINT,
        *folder.glob(SLURM_CHECKPOINTS),
    ]
    return [p for p in candidates if p.is_file()]


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint to continue from: the one saved at the latest training step (the newer
    file where two were saved at one step). By step, as copying a folder (``cp -r``) does
    not keep the files' times."""
    existing = _checkpoints(Path(folder))
    if len(existing) < 2:  # nothing to compare: the file is not read here
        return existing[0] if existing else None
    from crackseg.models.checkpoint import checkpoint_step  # torch, only where one is read

    return max(existing, key=lambda p: (checkpoint_step(p), p.stat().st_mtime_ns))
