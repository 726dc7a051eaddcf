"""A run's folder: its status, its provenance, and who may write into it.

One live process at a time writes into a run folder: it holds a lock on ``.lock`` there
(see :func:`claim_run_folder`), taken before Hydra writes anything into the folder.
A folder holds a run once training has started in it (``status.json`` or a checkpoint).
Such a folder is written into again only to resume that same run: ``resume=RUN_DIR``, or
``resume=auto`` (what every job of a multirun does, so re-running a sweep, or a requeued
cluster job, continues its unfinished jobs from their checkpoints). A run that failed
before saving a checkpoint (a config or data error) holds nothing to resume: its folder
may be started again.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import crackseg
from crackseg.atomic import atomic_write_text, remove_partial_writes
from crackseg.errors import CracksegError, RunFolderError
from crackseg.models.checkpoint import checkpoint_run_config, checkpoint_step
from crackseg.run_files import (
    CHECKPOINT_DIR,
    INFO_FILE,
    INTERRUPTED_CHECKPOINT,
    LAST_CHECKPOINT,
    LOCK_FILE,
    RUN_OUTPUTS,
    SLURM_CHECKPOINTS,
    STATUS_FILE,
)
from crackseg.runs.hardware import (
    FLOAT16,
    check_accelerator,
    check_deterministic,
    resolve_precision,
    trains_float16,
)
from crackseg.runs.job_log import accept_job_logs
from crackseg.setting_rules import as_override

log = logging.getLogger(__name__)

#: The settings that name files or folders, in the order their relative paths are anchored
#: (:func:`anchor_relative_paths`): those the others are made of first.
PATH_KEYS = ("paths.data_dir", "paths.log_dir", "data.root", "data.split_file", "data.tile.source")


#: Config keys (glob patterns) that may differ between a run and its resumption: how it is
#: resumed, how it shares the CPU, how many loader workers read its data (a machine with
#: fewer cores; each item's augmentation is seeded by its place in the epoch, not by the
#: worker), what its console shows, how fast its network runs (the speed options: a run
#: started before ``model.channels_last: auto`` saved ``false``), and where its folder is (a
#: run folder may be moved). The GPU a job of a local parallel sweep is given
#: (``trainer.devices=[k]``) is compared as a number of devices.
RESUME_FREE_KEYS = (
    "resume",
    "model.channels_last",
    "model.compile",
    "model.volume_im2col",
    "skip_finished",
    "share_cpu_cores",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "paths.output_dir",
    "trainer.default_root_dir",
    "callbacks.*.dirpath",
    "callbacks.*.output_dir",
    "logger.save_dir",
)

#: Keys the configs of runs started before the settings groups held as copies of other
#: keys (the model block read the loss, data and optimiser groups; the data block the
#: loss's weight map) or as the class Hydra built: the sources are compared, so these never
#: count as a difference when such a run continues.
MIRRORED_KEYS = (
    "model._target_",
    "model._recursive_",
    "model.net.gradient_adjustment",
    "model.optim",
    "model.optim.*",
    "model.scheduler",
    "model.scheduler.*",
    "model.delta_cls",
    "model.dynamic_balance",
    "model.decision_target",
    "model.batch_reduction",
    "model.input_channels",
    "model.input_height",
    "model.input_width",
    "data._target_",
    "data.weighted_seg",
    "data.weighted_seg_max",
    "data.weighted_seg_p",
    "data.weighted_seg_per_component",
)

#: Settings added after runs may have started, with the value that gives the behaviour those
#: runs had (or, for a check, the check): a config saved before a key existed compares as if
#: it held that value.
ADDED_KEYS = {
    "validation_schedule": "every_n",
    "callbacks.validate_on_last_epoch.schedule": "every_n",
    "loss.weak_gradient_adjustment": "published",
    "callbacks.fail_on_diverged_loss._target_": "crackseg.callbacks.FailOnDivergedLoss",
}


#: Where Lightning reads a process's rank from until its Trainer sets it, first set first
#: (lightning_fabric.utilities.rank_zero).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_rank_zero() -> bool:
    """Whether this is the first process of a run: Lightning's rank once Lightning is loaded
    (its Trainer sets it), before that the one Lightning reads from the environment, so that
    a command refused before training never waits for Lightning's import."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(rank_zero.rank_zero_only, "rank", None) if rank_zero is not None else None
    if rank is None:
        rank = next((int(os.environ[k]) for k in RANK_VARIABLES if k in os.environ), 0)
    return rank == 0


#: The run folders this process holds: absolute path -> descriptor of the locked file.
_held: dict[str, int] = {}
#: Of those, the folders the command has accepted to write into (:func:`accept_run_folder`),
#: and those whose lock file holds this process's name.
_accepted: set[str] = set()
_named: set[str] = set()


def claim_run_folder(folder: str | Path) -> None:
    """Make this process the only one writing into ``folder`` until it releases it or ends.

    A lock on ``folder/.lock`` (:func:`lock_file`): a killed run never leaves its folder
    locked, even while its data loader workers are still ending. The holder writes its
    pid and host into the file, which a refused process names: at once in a folder that
    holds no run yet, else once it accepts the folder (:func:`accept_run_folder`), so a
    command refused there leaves even that file as it was. Only rank 0 of a
    multi-process run claims the folder; the other ranks write where rank 0 holds it.
    Claiming a folder this process holds already does nothing.
    """
    if not is_rank_zero():
        return
    key = os.path.abspath(folder)
    if key in _held:
        return
    Path(key).mkdir(parents=True, exist_ok=True)
    holder = ""
    for _ in range(20):  # a holder that has just taken the lock writes its name right after
        fd = lock_file(Path(key) / LOCK_FILE, 0o666)
        if fd is not None:
            _held[key] = fd
            if not used_by_another_command(Path(key)):
                _name_holder(key)
            return
        holder = (Path(key) / LOCK_FILE).read_text(errors="replace").strip()
        if holder:
            break
        time.sleep(0.05)
    raise RunFolderError(f"{key} is in use by {_describe_holder(holder)}; wait for it to end")


def _name_holder(key: str) -> None:
    """Write this process's pid and host into the lock file of a folder it holds."""
    fd = _held.get(key)
    if fd is None or key in _named:
        return
    me = json.dumps({"pid": os.getpid(), "host": platform.node()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me}\n".encode(), 0)
    _named.add(key)


def lock_file(path: Path, mode: int = 0o644, create: bool = True) -> int | None:
    """Open ``path`` (creating it unless ``create`` is false) and lock it for this process
    without waiting: the open descriptor (closing it drops the lock), or None when another
    process holds the lock.

    A POSIX record lock (``lockf``), not ``flock``: the kernel drops it when the process
    ends however it ends, and child processes (data loader workers) do not inherit it, so
    a killed process's lock is free at once although its workers may live on for a while.
    Record locks belong to the process: lock each file once per process.
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), mode)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return None
        raise
    return fd


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"another process (pid {holder['pid']} on host {holder['host']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def held_by_another_process(folder: str | Path) -> bool:
    """Whether a live process other than this one holds ``folder``; creates nothing."""
    key = os.path.abspath(folder)
    if key in _held:
        return False
    try:
        fd = lock_file(Path(key) / LOCK_FILE, create=False)
    except OSError:  # no lock file (or none this process may open): nobody holds it
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def accept_run_folder(folder: str | Path) -> None:
    """The command has checked its folder and works there: from now on it writes its log,
    its status and its outputs there. Before, a refused command writes nothing there."""
    _accepted.add(os.path.abspath(folder))
    _name_holder(os.path.abspath(folder))
    accept_job_logs(folder)


def is_accepted(folder: str | Path) -> bool:
    return os.path.abspath(folder) in _accepted


def release_run_folder(folder: str | Path) -> None:
    """Let another process write into ``folder`` (emptying the holder's name first)."""
    key = os.path.abspath(folder)
    _accepted.discard(key)
    fd = _held.pop(key, None)
    if fd is not None:
        if key in _named:
            _named.discard(key)
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the lock


def resumed_folder(resume: object) -> Path | None:
    """The run folder ``resume=RUN_DIR`` names; None for a new run or ``resume=auto``. An
    empty one (an unset shell variable) is refused, not read as the current folder."""
    if resume in (None, "auto"):
        return None
    if str(resume) == "":
        raise RunFolderError(
            "resume= is empty: name the run folder (resume=RUN_DIR), or leave it out"
        )
    return Path(str(resume))


def check_resume_folder(run_dir: Path) -> None:
    """``resume=RUN_DIR`` must name a run's folder; checked before anything is written."""
    if not run_dir.exists():
        raise RunFolderError(f"resume={run_dir}: no such folder")
    if not run_dir.is_dir():
        raise RunFolderError(f"resume={run_dir} is not a folder")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise RunFolderError(f"resume={run_dir} is not a run folder (no .hydra/config.yaml)")
    command = started_by(run_dir)
    if command in OTHER_COMMANDS:
        raise RunFolderError(
            f"resume={run_dir} holds a crackseg-{command} run, not a training: nothing to resume"
        )


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
    another; None where not recorded."""
    saved = saved_hydra_file(run_dir, "hydra.yaml")
    name = OmegaConf.select(saved, "hydra.job.name", default=None) if saved else None
    return str(name) if name is not None else None


def check_sweep_resume(resume: object) -> None:
    """A sweep resumes its jobs itself (``resume=auto``); ``resume=RUN_DIR`` names one run."""
    if resume == "":
        raise RunFolderError(
            "resume= is empty: leave it out; a sweep run again with its hydra.sweep.dir "
            "resumes its jobs"
        )
    if resumed_folder(resume) is not None:
        raise RunFolderError(
            "resume=RUN_DIR continues one run; to resume a sweep, run it again with the "
            "same hydra.sweep.dir"
        )


def used_by_another_command(folder: Path) -> bool:
    """Whether ``folder`` holds a run, or any run's status (a failed one's too): an
    evaluation, prediction or export never writes there."""
    return holds_run(folder) or (Path(folder) / STATUS_FILE).exists()


def refuse_files_of_others(folder: Path) -> None:
    """Refuse a folder that no crackseg command wrote (it has no status) holding files by
    the names a run writes: a folder of the user's given as ``hydra.run.dir``, whose
    ``report.md`` or ``metrics.json`` the run would overwrite."""
    folder = Path(folder)
    if (folder / STATUS_FILE).exists():
        return
    if found := [name for name in RUN_OUTPUTS if (folder / name).exists()]:
        raise RunFolderError(
            f"{folder} holds files that are not a run's, which it would overwrite "
            f"({', '.join(found)}); choose another hydra.run.dir"
        )


def refuse_used_folder(folder: Path) -> None:
    """Evaluations, predictions and exports only ever write into a folder of their own: not
    one holding a run, nor another prediction's outputs (one killed before it wrote its
    status), which they would overwrite or mix with theirs."""
    from crackseg.deploy.outputs import refuse_earlier_outputs

    if used_by_another_command(folder):
        status = read_status(folder) or {}
        command = started_by(folder)
        held = f"a run of crackseg-{command}" if command in OTHER_COMMANDS else "a run"
        if status.get("status") == "failed" and not holds_run(folder):
            held = f"a command that failed ({status.get('error', 'see its log')})"
        raise RunFolderError(f"{folder} already holds {held}; choose another hydra.run.dir")
    refuse_files_of_others(folder)
    refuse_earlier_outputs(folder)


def accept_folder_of_its_own(folder: str | Path) -> None:
    """An evaluation's, prediction's or export's start: its folder refused where it holds a
    run or another prediction (:func:`refuse_used_folder`), else accepted."""
    refuse_used_folder(Path(folder))
    accept_run_folder(folder)


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
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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
    return max(existing, key=lambda p: (checkpoint_step(p), p.stat().st_mtime_ns))


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
        "torch": torch.__version__,
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


def config_differences(old: DictConfig, new: DictConfig, limit: int = 3) -> list[str]:
    """``key: old -> new`` for the first few settings that differ (resolved values)."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    for key, value in ADDED_KEYS.items():
        if key in flat_new:
            flat_old.setdefault(key, value)
    keys = sorted(set(flat_old) | set(flat_new))
    changed = [
        f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}"
        for k in keys
        if _compared(k, flat_old.get(k)) != _compared(k, flat_new.get(k))
        and not any(fnmatch.fnmatchcase(k, free) for free in (*RESUME_FREE_KEYS, *MIRRORED_KEYS))
    ]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _compared(key: str, value: Any) -> Any:
    """A setting as resumption compares it: ``trainer.devices`` as a number of devices, so
    a job given another GPU than before (``[1]`` for ``[0]`` or ``1``) may resume; a path
    (:data:`PATH_KEYS`) as the file it names from here, so a run once resumed from
    elsewhere (its paths then made absolute: :func:`anchor_relative_paths`) is the same."""
    if key == "trainer.devices" and isinstance(value, list):
        return len(value)
    if key in PATH_KEYS and isinstance(value, str) and not value.startswith("~"):
        return os.path.normpath(os.path.abspath(value))
    return value


def _flatten(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def prepare_training_run(
    cfg: DictConfig, multirun: bool, task_overrides: list[str]
) -> tuple[DictConfig, Path | None]:
    """The config to train with and the checkpoint to continue from (None: a fresh start).

    Refuses, before anything is written, a folder that holds another run, a finished run,
    and a resumption with changed settings. The other processes of a multi-process run
    (started by rank 0 into its folder) follow rank 0's decision without checking again.
    """
    output_dir = Path(cfg.paths.output_dir)
    resume = cfg.get("resume")
    resumed = resumed_folder(resume)
    if not is_rank_zero():
        if resumed is not None:
            return _started_config(output_dir), resume_checkpoint(output_dir)
        return cfg, resume_checkpoint(output_dir) if resume == "auto" or multirun else None
    if resumed is not None:
        if multirun:
            check_sweep_resume(resume)
        return _resume_run_dir(resumed, output_dir, task_overrides)
    if not holds_run(output_dir):
        refuse_files_of_others(output_dir)
        return cfg, None
    if resume != "auto" and not multirun:
        if (command := started_by(output_dir)) in OTHER_COMMANDS:
            raise RunFolderError(
                f"{output_dir} holds a crackseg-{command} run; choose another hydra.run.dir"
            )
        if finished_status(output_dir) is not None:
            raise RunFolderError(
                f"{output_dir} holds a run that finished; choose another hydra.run.dir"
            )
        raise RunFolderError(
            f"{output_dir} already holds a run; continue it with "
            f"{as_override('resume', output_dir)} "
            "or choose another hydra.run.dir"
        )
    checkpoint = resume_checkpoint(output_dir)
    # The settings it ran with: the checkpoint's, else those it started with.
    try:
        saved = checkpoint_run_config(checkpoint) if checkpoint is not None else None
    except CracksegError:
        # The run in this folder (this job's own, or the one typed) cannot go on: its
        # failure, recorded in its status, where a run again of its sweep counts it.
        accept_run_folder(output_dir)
        raise
    if saved is None and (output_dir / ".hydra" / "config.yaml").is_file():
        # as typed (trainer.precision: auto), where a checkpoint holds it made concrete
        saved = OmegaConf.load(output_dir / ".hydra" / "config.yaml")
        if "trainer" in saved:
            trainer = saved.trainer  # made concrete as the live one is
            trainer.precision = resolve_precision(trainer.precision, trainer.accelerator)
    changed = config_differences(saved, cfg) if saved is not None else []
    if finished_status(output_dir) is not None:
        settings = f", with other settings ({'; '.join(changed)})" if changed else ""
        raise RunFolderError(f"the run in {output_dir} already finished{settings}")
    if changed:
        raise RunFolderError(
            f"{output_dir} holds a run with other settings ({'; '.join(changed)}); "
            "use another folder"
        )
    remove_partial_writes(output_dir)
    if checkpoint is None:
        log.info("%s holds a run that saved no checkpoint: starting it again", output_dir)
    return cfg, checkpoint


def _resume_run_dir(
    run_dir: Path, output_dir: Path, task_overrides: list[str]
) -> tuple[DictConfig, Path | None]:
    check_resume_folder(run_dir)
    if run_dir.resolve() != output_dir.resolve():
        raise RunFolderError(
            f"resume={run_dir} but the run folder is {output_dir}: drop hydra.run.dir"
        )
    others = [o for o in task_overrides if override_key(o) != "resume"]
    if others:
        raise RunFolderError(
            f"resume= continues a run with its own settings; drop {' '.join(others)}"
        )
    if finished_status(run_dir) is not None:
        raise RunFolderError(f"the run in {run_dir} already finished; nothing to resume")
    remove_partial_writes(run_dir)
    checkpoint = resume_checkpoint(run_dir)
    if checkpoint is None:
        log.info("%s holds a run that saved no checkpoint: starting it again", run_dir)
    return _started_config(run_dir), checkpoint


def _started_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (its ``.hydra/``), marked as resuming it, its
    relative paths anchored in the folder it was started from, so that it resumes from any."""
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved.resume = str(run_dir)
    hydra = saved_hydra_file(run_dir, "hydra.yaml")
    started_in = OmegaConf.select(hydra, "hydra.runtime.cwd", default=None) if hydra else None
    if started_in and os.path.realpath(started_in) != os.path.realpath(os.getcwd()):
        anchor_relative_paths(saved, Path(started_in))
    return saved


def anchor_relative_paths(cfg: DictConfig, folder: Path) -> None:
    """Make the relative paths of :data:`PATH_KEYS` absolute, as seen from ``folder``; a
    path built of another (``${paths.data_dir}/cfd``) follows it, ``~/data`` stays."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or str(value).startswith("~") or Path(str(value)).is_absolute():
            continue
        OmegaConf.update(cfg, key, os.path.normpath(folder / str(value)), force_add=False)


def resolve_machine_settings(cfg: DictConfig) -> None:
    """Settings that depend on the machine (``trainer.precision: auto``), made concrete
    before anything compares, records or reports the config."""
    if "trainer" in cfg:
        check_accelerator(cfg.trainer.accelerator, cfg.trainer.get("devices", 1))
        check_deterministic(cfg)
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)


def start_training_run(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """The config to train with and the checkpoint to continue from (None: a fresh start).

    A stopped run continues from its newest checkpoint (``resume=``); nothing is read from
    the data yet, and Lightning is not needed yet.
    """
    multirun, overrides = in_multirun(), typed_overrides()
    resolve_machine_settings(cfg)
    cfg, checkpoint = prepare_training_run(cfg, multirun, overrides)
    accept_run_folder(cfg.paths.output_dir)
    _refuse_float16_resumed_without_gpu(cfg)
    resolve_machine_settings(cfg)  # a resumed run's own config
    return cfg, checkpoint


def _refuse_float16_resumed_without_gpu(cfg: DictConfig) -> None:
    """A float16 run goes on in float16 (resume= keeps a run's settings): on a GPU only."""
    precision, accelerator = cfg.trainer.precision, cfg.trainer.accelerator
    resumed = resumed_folder(cfg.get("resume")) is not None
    if resumed and str(precision) in FLOAT16 and not trains_float16(accelerator):
        raise RunFolderError(
            f"the run in {cfg.paths.output_dir} trains in {precision}, which needs a GPU: "
            "resume it on a machine with one"
        )


def record_start(cfg: DictConfig, checkpoint: Path | None) -> None:
    """``status.json`` says running; ``run_info.json`` says what produced the run."""
    if is_rank_zero():
        output_dir = Path(cfg.paths.output_dir)
        write_status(output_dir, "running")
        write_run_info(output_dir, resumed_from=checkpoint)
