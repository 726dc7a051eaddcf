"""Shared behaviour of the Hydra entry points: clear errors, job status, resuming sweeps."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from crackseg.errors import CracksegError
from crackseg.sweep.gpus import job_device_context

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _write_status(output_dir: Path, status: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STATUS_FILE).write_text(json.dumps(status, indent=2))


def finished_status(output_dir: Path) -> dict[str, Any] | None:
    """The status of a job that already finished in this folder, if any."""
    path = output_dir / STATUS_FILE
    if not path.is_file():
        return None
    status = json.loads(path.read_text())
    return status if status.get("status") == "finished" else None


def run_task(
    task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, objective: str = "image_ap"
) -> float | None:
    """Run ``task`` and return the metric a sweeper optimises.

    A user's mistake ends a single run with one line and exit code 2. In a multirun every
    failure (including out-of-memory) is written to the job's ``status.json`` and the sweep
    goes on; a job already finished in its folder is skipped, so re-running a sweep into
    the same ``hydra.sweep.dir`` resumes it.
    """
    output_dir = Path(cfg.paths.output_dir)
    multirun = _is_multirun()
    if multirun and cfg.get("skip_finished", True):
        done = finished_status(output_dir)
        if done is not None:
            log.info("skipping %s: finished in an earlier sweep", output_dir)
            return done.get("metrics", {}).get(objective)
    try:
        with job_device_context(cfg):  # one GPU per job in a local parallel sweep
            results = task(cfg)
    except Exception as raised:
        error = _root_cause(raised)
        if not multirun:
            if isinstance(error, CracksegError):
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)
            raise
        if not isinstance(error, CracksegError):
            log.exception("job failed")
        return _failed(output_dir, error)
    metrics = {k: v for k, v in results.items() if isinstance(v, int | float | str | None)}
    _write_status(output_dir, {"status": "finished", "metrics": metrics})
    return metrics.get(objective)


def _root_cause(error: BaseException) -> BaseException:
    """Hydra's instantiate wraps what a constructor raised; the user needs the original."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _failed(output_dir: Path, error: BaseException) -> None:
    line = str(error).splitlines()[0] if str(error) else ""
    message = f"{type(error).__name__}: {line}"
    log.error("job failed: %s", message)
    _write_status(output_dir, {"status": "failed", "error": message})
    return None
