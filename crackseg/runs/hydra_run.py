"""What Hydra knows of a run: whether this job is one of a multirun and the overrides typed
for it, and the files Hydra saved in a run folder's ``.hydra/`` (what a run was started
with, and by which command)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def saved_hydra_file(run_dir: Path, name: str) -> Any:
    """One of the files Hydra saved in a run's ``.hydra/`` (``hydra.yaml``,
    ``overrides.yaml``), None where it is missing or cannot be read."""
    try:
        return OmegaConf.load(Path(run_dir) / ".hydra" / name)
    except (OSError, yaml.YAMLError, OmegaConfBaseException):
        return None


def saved_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was started with (its ``.hydra/overrides.yaml``), as typed: an
    interpolation (``data.root=${paths.data_dir}/x``) is left as text, not resolved in a
    list that cannot resolve it. None where they are missing or cannot be read."""
    saved = saved_hydra_file(run_dir, "overrides.yaml")
    if not OmegaConf.is_list(saved):
        return None
    return [str(o) for o in OmegaConf.to_container(saved, resolve=False)]


#: The commands whose folders hold no training to resume (Hydra's job names).
OTHER_COMMANDS = ("eval", "predict", "export")


def started_by(run_dir: Path) -> str | None:
    """The command that wrote the folder (``train``, ``eval``, ``predict``, ``export``):
    Hydra's job name in ``.hydra/hydra.yaml``, which is the entry point's module whatever
    config it started with (``--config-name my_train`` too), unless ``hydra.job.name`` set
    another; None where not recorded. Read once while the file is unchanged (a sweep's
    checks ask it of every job folder several times)."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _job_name(str(path), stamp)


@functools.lru_cache(maxsize=4096)
def _job_name(path: str, stamp: int) -> str | None:
    saved = saved_hydra_file(Path(path).parents[1], "hydra.yaml")
    name = OmegaConf.select(saved, "hydra.job.name", default=None) if saved else None
    return str(name) if name is not None else None


#: The job name Lightning gives the other processes of a DDP run it starts
#: (``hydra.job.name=train_ddp_process_1``), whatever the command.
DDP_PROCESS_NAME = re.compile(r"_ddp_process_\d+$")


def sweep_command(config: Any) -> str | None:
    """The command a multirun's jobs are run by (``train``, ``eval``, ...), as
    :func:`started_by` records it: the same in the other processes of a DDP job."""
    name = OmegaConf.select(config, "hydra.job.name", default=None)
    return None if name is None else DDP_PROCESS_NAME.sub("", str(name))


def override_key(override: str) -> str:
    """The key a command-line override sets: ``data.root`` of ``data.root=PATH``,
    ``+data.root=PATH`` or ``~data.root``."""
    return str(override).split("=", 1)[0].lstrip("+~")


def in_multirun() -> bool:
    """Whether this is a job of a multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def typed_overrides() -> list[str]:
    """The overrides typed for this job (a sweep's job: with its own swept values); none
    outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    return OmegaConf.to_container(HydraConfig.get().overrides.task)  # as typed, unresolved
