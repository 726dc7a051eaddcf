"""A multirun's own work around its jobs: the checks that refuse a sweep before any job
starts (its shared settings, its data, finished jobs it would reuse with other settings),
the lock on its folder, and the stop of its side-by-side jobs together. What each job does
around its task is crackseg.runs.lifecycle."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import env_override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackseg.atomic import atomic_write_text
from crackseg.data.data_settings import MADE_FROM_NOTHING, check_data_makers, data_maker
from crackseg.data.layouts import check_config_data_found, check_dagm_classes
from crackseg.error_lines import one_line, print_line
from crackseg.errors import (
    ConfigError,
    CracksegError,
    DataError,
    RunFolderError,
    SweepSettingsError,
    SweepStopped,
)
from crackseg.run_files import SWEEP_FILE
from crackseg.runs.config_changes import config_differences
from crackseg.runs.config_checks import (
    check_config,
    check_swept_values,
    refuse_extra_count_without_ranking,
)
from crackseg.runs.gpus import runs_parallel_locally
from crackseg.runs.hydra_run import (
    OTHER_COMMANDS,
    override_key,
    saved_hydra_file,
    saved_overrides,
    started_by,
    sweep_command,
)
from crackseg.runs.job_folders import SWEEP_STOPPING
from crackseg.runs.job_names import (
    BASIC_SWEEPER,
    grid_job_overrides,
    grid_jobs,
    job_overrides,
    job_settings,
    keys_telling_jobs_apart,
    setting_changes,
    shared_settings,
    swept_keys,
    swept_values,
)
from crackseg.runs.lifecycle import ran_with_other_settings, refuse_added_settings_nothing_reads
from crackseg.runs.ownership import (
    claim_run_folder,
    held_by_another_process,
    is_rank_zero,
    release_run_folder,
    used_by_another_command,
)
from crackseg.runs.resume import check_sweep_resume
from crackseg.runs.status import finished_status, holds_run, read_status
from crackseg.setting_rules import as_typed, check_required, is_integer

log = logging.getLogger(__name__)


class SweepChecksCallback(Callback):
    """Hydra callback: refuse a multirun whose shared settings cannot work before any job
    (or its folder) is started: ``resume=RUN_DIR``, the values
    :func:`crackseg.runs.config_checks.check_config` checks, each value swept that has a rule,
    the data and split files the jobs read, a sweep run again over finished jobs that had
    other settings, and a sweep folder another sweep is running in. One line and exit 2, as
    Hydra turns a callback's exception into a warning.

    A sweep holds its folder as a run holds its own (:func:`claim_run_folder`), from before
    Hydra writes ``multirun.yaml`` there to after the summary: a second sweep started in it
    would overwrite the first one's ``multirun.yaml`` and summary, and run its queued jobs
    beside it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            task, swept = _task_and_swept(config)  # the job folders read once
            check_sweep_resume(config.get("resume"))
            check_output_dir_not_typed(task)
            check_slurm_found(config)
            check_search_and_launcher(config)
            check_devices_per_job(config)
            check_config(config)
            refuse_added_settings_nothing_reads(config, config.hydra)
            params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
            check_swept_values(task, {str(key): value for key, value in params.items()})
            refuse_extra_count_without_ranking(config, [*task, *map(str, params)], swept)
            refuse_missing_data(config, task, swept)
            refuse_missing_ranking(config, swept)
            refuse_missing_split_files(config, task, swept)
            refuse_a_run_folder(Path(str(config.hydra.sweep.dir)))
            claim_run_folder(config.hydra.sweep.dir)
            record_a_search(config)
            refuse_finished_jobs_with_other_settings(config, task, swept)
            refuse_held_runs_with_other_settings(config, task, swept)
            refuse_unfinished_jobs_not_run_again(config, task)
        except (CracksegError, OSError, OmegaConfBaseException) as error:  # a folder, a lock
            print_line(f"error: {one_line(error)}")
            sys.exit(2)
        if runs_parallel_locally(config.get("hydra")):
            stop_side_by_side_jobs_together(Path(str(config.hydra.sweep.dir)))
        else:
            stop_between_jobs_as_ctrl_c()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        restore_signal_handlers()
        release_run_folder(config.hydra.sweep.dir)


def refuse_a_run_folder(sweep_dir: Path) -> None:
    """A sweep goes into a folder of its own: not one holding a run (its status, its
    checkpoints), where its jobs' folders and summary would mix with the run's files, and
    the run would count as one of its jobs."""
    if used_by_another_command(sweep_dir):
        raise RunFolderError(
            f"{sweep_dir} holds a run; a sweep goes into a folder of its own: choose another "
            "hydra.sweep.dir"
        )


def stop_between_jobs_as_ctrl_c() -> None:
    """A SIGTERM to a sweep whose jobs run one after another in its process, between two
    jobs (while Hydra sets up the next), or to the command waiting for a cluster's jobs,
    stops it as Ctrl-C does: its summary written, one ``stopped:`` line, exit 143
    (crackseg.cli). Its default action killed the process, leaving no summary. Inside a job
    the job's own handler stops it (crackseg.runs.lifecycle.sigterm_as_ctrl_c); one while
    Hydra's end of the sweep writes the summary has it written again (crackseg.cli puts the
    handler back before it writes one itself)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        raise SweepStopped

    _handlers_before_sweep.setdefault(signal.SIGTERM, signal.signal(signal.SIGTERM, stop))


#: How long a local parallel sweep stopped by a signal waits for its jobs' clean stop (s).
JOBS_STOP_WAIT_S = 300


def stop_side_by_side_jobs_together(sweep_dir: Path) -> None:
    """A local parallel sweep stopped by Ctrl-C, or by a SIGTERM to its own process (``kill
    PID``, a container's stop), waits for its running jobs to stop with ``interrupted.ckpt``,
    then stops, exit 143. A SIGTERM is passed on to its worker processes as the Ctrl-C a
    terminal sends them. Else the sweep's process ended at once: its workers were killed
    while they saved their checkpoints, or, after a SIGTERM, trained on, orphaned. A second
    Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # A worker whose job stops takes the next job of its queue at once: that job sees
        # the mark before Hydra makes its folder, and does not start.
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_STOPPING).write_text(f"{os.getpid()}\n")
        if signum == signal.SIGTERM:  # a terminal's Ctrl-C reached the workers itself
            for pid in child_processes(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
        log.warning("stopping: the running jobs stop after their batch, with a checkpoint")
        deadline = time.monotonic() + JOBS_STOP_WAIT_S
        while time.monotonic() < deadline and any(map(held_by_another_process, jobs_in())):
            time.sleep(0.2)
        raise SweepStopped

    def jobs_in() -> list[Path]:  # (the folder is made once the first job is launched)
        return [job for job in sweep_dir.iterdir() if job.is_dir()] if sweep_dir.is_dir() else []

    (sweep_dir / SWEEP_STOPPING).unlink(missing_ok=True)  # left by a sweep killed so
    _stopping_marks.append(sweep_dir / SWEEP_STOPPING)
    _handlers_before_sweep.update(
        {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    )


#: The SIGTERM and SIGINT handlers a sweep replaced, put back at its end, and a local
#: parallel sweep's stopping mark's place, removed then.
_handlers_before_sweep: dict[int, Any] = {}
_stopping_marks: list[Path] = []


def restore_signal_handlers() -> None:
    """Put back the handlers :func:`stop_side_by_side_jobs_together` or
    :func:`stop_between_jobs_as_ctrl_c` replaced, and remove the stopping mark."""
    for signum, handler in _handlers_before_sweep.items():
        signal.signal(signum, handler)
    _handlers_before_sweep.clear()
    for mark in _stopping_marks:
        mark.unlink(missing_ok=True)
    _stopping_marks.clear()


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; none where there is no /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "PID (COMMAND) STATE PPID ...": the command may hold spaces and parentheses
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def check_devices_per_job(config: DictConfig) -> None:
    """The jobs of a local parallel sweep run side by side with one device each: a job on
    several (DDP) would start its other processes as a copy of the whole sweep, beside the
    other jobs' (Lightning starts them with the sweep's command line)."""
    if not runs_parallel_locally(config.get("hydra")):
        return
    devices = OmegaConf.select(config, "trainer.devices", default=1)
    several = len(devices) != 1 if OmegaConf.is_list(devices) else str(devices) != "1"
    if several:
        raise ConfigError(
            f"trainer.devices={devices}: the jobs of a local parallel sweep run side by side "
            "on one device each; run jobs on several devices one after another "
            "(without hydra/launcher=local_parallel, or with hydra.launcher.n_jobs=1)"
        )


def check_output_dir_not_typed(task: list[str]) -> None:
    """A sweep's jobs write into their own folders under ``hydra.sweep.dir``: one
    ``paths.output_dir`` for them all would be refused by each job (:func:`run_task`)."""
    if any(override_key(o) == "paths.output_dir" for o in task):
        raise ConfigError(
            "paths.output_dir is each job's own folder in a sweep: set hydra.sweep.dir instead"
        )


def check_slurm_found(config: DictConfig) -> None:
    """``hydra/launcher=slurm`` submits the jobs with SLURM's commands: where they are not
    found, submitit would fail with a traceback after the sweep's folder is made."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if "slurm" in launcher.lower() and shutil.which("srun") is None:
        raise ConfigError(
            "hydra/launcher=slurm needs SLURM (srun and sbatch), which this machine does not "
            "have: start the sweep on the cluster, or drop hydra/launcher=slurm"
        )


def record_a_search(config: DictConfig) -> None:
    """The sweep's config as ``multirun.yaml`` in its folder, which Hydra's basic sweeper
    saves and Optuna's does not: a search's folder then records its command line and search
    space, and is found as a sweep (the comparison notebook's default is the one launched
    last)."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER:
        return
    text = OmegaConf.to_yaml(config)
    atomic_write_text(Path(str(config.hydra.sweep.dir)) / SWEEP_FILE, text)


#: The directions of Optuna's search.
SEARCH_DIRECTIONS = ("maximize", "minimize")


def check_search_and_launcher(config: DictConfig) -> None:
    """A search (Optuna's sweeper) runs at least one trial (with none it has no best), at
    least one at a time, in a direction Optuna knows, into a database file whose folder is
    there; a local parallel sweep runs some jobs at a time (joblib's -1: one a core). Each
    was a traceback from the sweeper or the launcher, after the sweep folder was made."""
    for key in ("hydra.sweeper.n_trials", "hydra.sweeper.n_jobs"):
        value = OmegaConf.select(config, key, default=None)
        if value is not None and not (is_integer(value) and value >= 1):
            raise ConfigError(f"{key} must be an integer >= 1, not {as_typed(value)}")
    jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if jobs is not None and not (is_integer(jobs) and jobs != 0):
        raise ConfigError(
            f"hydra.launcher.n_jobs must be an integer other than 0 (-1: one job a core), "
            f"not {as_typed(jobs)}"
        )
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    directions = list(direction) if OmegaConf.is_list(direction) else [direction]
    # the sweeper's own default is its enum (Direction.minimize), which it names so too
    if direction is not None and not all(
        getattr(d, "name", d) in SEARCH_DIRECTIONS for d in directions
    ):
        raise ConfigError(
            f"hydra.sweeper.direction must be {' or '.join(SEARCH_DIRECTIONS)}, not {direction!r}"
        )
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        folder = Path(storage.removeprefix("sqlite:///")).parent
        sweep_dir = Path(str(config.hydra.sweep.dir)) if "sweep" in config.hydra else None
        in_sweep = sweep_dir is not None and (folder == sweep_dir or sweep_dir in folder.parents)
        if not folder.is_dir() and not in_sweep:  # the sweep's own folder is made for it
            raise ConfigError(f"hydra.sweeper.storage={storage}: no folder {folder}")


def _task_and_swept(config: DictConfig) -> tuple[list[str], set[str]]:
    """A multirun's command-line overrides, and the keys its jobs vary: those it sweeps, and
    those an earlier run of the sweep swept in its folder that it gives one value now (the
    job folders are named by them, :func:`crackseg.runs.job_names.keys_telling_jobs_apart`).
    A key swept before and not given now is a shared setting left out: its finished jobs
    are refused for it, not joined by jobs of the default beside them."""
    task = OmegaConf.to_container(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    given = {override_key(o) for o in task} | {override_key(str(k)) for k in params}
    earlier = keys_telling_jobs_apart(config.hydra.sweep.dir, sweep_command(config)) & given
    return task, swept_keys(task, params) | earlier


def _job_folders(config: DictConfig) -> list[Path]:
    """The folders of the jobs an earlier run of the sweep left in its folder; not those of
    another command (an evaluation run into a training sweep's folder), which are no job of
    it, as its summary leaves them out."""
    sweep_dir = Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir():
        return []
    command = sweep_command(config)
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    return [p for p in folders if command is None or started_by(p) in (None, command)]


def refuse_finished_jobs_with_other_settings(
    config: DictConfig, task: list[str], swept: set[str]
) -> None:
    """Finished jobs of the sweep folder are skipped, and their folders are named by the
    swept values only: a setting given otherwise on the command line (``trainer.max_epochs=20``
    after a 10-epoch sweep) would reuse results it did not make. Compared before any job runs
    (each job also compares its whole saved config when it is skipped). With
    ``skip_finished=false`` a finished job is refused outright: it cannot run again there."""
    wanted = shared_settings(task, swept)
    for job in _job_folders(config):
        saved = saved_overrides(job)
        if finished_status(job) is None or saved is None:
            continue
        if changed := setting_changes(shared_settings(saved, swept), wanted):
            if _differences_from_now(config, job, task, swept) == []:
                # typed otherwise to the same effect (a default typed out): the jobs are
                # found by the overrides typed, and this one would be trained again
                raise SweepSettingsError(
                    f"the finished job in {job} was started with other overrides "
                    f"({'; '.join(changed[:3])}), to the same effect: a sweep run again "
                    "finds its jobs by the overrides typed; type them as before, or use "
                    "another hydra.sweep.dir"
                )
            raise ran_with_other_settings(job, changed[:3])
        if not config.get("skip_finished", True):
            # A run's folder is never written again: its job would only be refused, and the
            # summary would count its old result as this sweep's.
            raise SweepSettingsError(
                f"skip_finished=false, but {job} holds a finished job, which is never run "
                "again in its folder: choose another hydra.sweep.dir"
            )


def refuse_held_runs_with_other_settings(
    config: DictConfig, task: list[str], swept: set[str]
) -> None:
    """A job folder holding a run (finished, or to be resumed) whose settings this sweep
    would change is refused before any job runs, where the job itself finds it only when
    its turn comes, after the sweep's new jobs have trained beside the old results: a config
    file edited since (in conf/ or ``--config-dir``, under the same command line, which
    :func:`refuse_finished_jobs_with_other_settings` cannot see), or a setting typed
    otherwise for a job to be resumed. Each such job is composed as this sweep will compose
    it (this command line, with the job's own swept values) and compared with the config it
    ran with; where that cannot be done here, each job compares its own when it starts."""
    for job in _job_folders(config):
        if not holds_run(job):
            continue  # started again from scratch
        changed = _differences_from_now(config, job, task, swept)
        if changed:
            raise SweepSettingsError(
                f"the job in {job} ran with other settings than this sweep gives it "
                f"({'; '.join(changed)}): a config file or a setting changed since; undo the "
                "change, or use another hydra.sweep.dir"
            )


def refuse_unfinished_jobs_not_run_again(config: DictConfig, task: list[str]) -> None:
    """An evaluation, prediction or export never runs in a folder that holds a run's status
    (crackseg.runs.ownership.refuse_used_folder), its own job of an earlier run of the
    sweep that failed or was stopped too: a job of this sweep's grid (Hydra's basic
    sweeper's) whose folder is such is refused before any job runs, with what to do, rather
    than when its turn comes, which ends the sweep there without its summary. (A training
    job is run again in its folder: it resumes.)"""
    command = str(config.hydra.job.name)
    # a DDP job's other processes run the sweep beside the first, in its job folders
    if command not in OTHER_COMMANDS or not is_rank_zero():
        return
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != BASIC_SWEEPER:
        return
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    grid = grid_jobs(task, {str(k): v for k, v in params.items()})
    if grid is None:
        return
    for job in _job_folders(config):
        saved = saved_overrides(job)
        if saved is None or job_settings(saved) not in grid:
            continue  # not a job of this sweep's grid
        if finished_status(job) is not None or not used_by_another_command(job):
            continue  # skipped, or started in it as new
        state = (read_status(job) or {}).get("status", "unfinished")
        raise SweepSettingsError(
            f"the job in {job} did not finish in an earlier run of this sweep ({state}), and "
            f"crackseg-{command} runs no job again in its folder: delete that folder to run "
            "the job again, or use another hydra.sweep.dir"
        )


def _differences_from_now(
    config: DictConfig, job: Path, task: list[str], swept: set[str]
) -> list[str] | None:
    """How the config this sweep composes for the job in ``job`` (this command line, with
    the job's own swept values) differs from the one it ran with; None where that cannot be
    done here (its files unreadable: the job itself refuses them when it starts)."""
    started_with = saved_overrides(job)
    saved = saved_hydra_file(job, "config.yaml")
    if started_with is None or saved is None:
        return None
    hydra_overrides = OmegaConf.to_container(config.hydra.overrides.hydra)  # its searchpath
    overrides = job_overrides(task, started_with, swept)
    try:
        now = compose(config.hydra.job.config_name, overrides=[*hydra_overrides, *overrides])
        for settings in (saved, now):  # ${hydra:runtime.output_dir}: only a job knows it
            if "output_dir" in settings.get("paths", {}):
                settings.paths.output_dir = str(job)
        return config_differences(saved, now)
    except (HydraException, OmegaConfBaseException) as error:
        log.warning("%s not compared before the sweep (%s)", job, one_line(error))
        return None


#: Launchers whose jobs run on this machine, where their data must be found.
LOCAL_LAUNCHERS = ("basic_launcher", "joblib")


def runs_jobs_here(config: DictConfig) -> bool:
    """Whether the sweep's launcher runs its jobs on this machine (:data:`LOCAL_LAUNCHERS`)."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    return any(name in launcher.lower() for name in LOCAL_LAUNCHERS)


def refuse_missing_ranking(config: DictConfig, swept: set[str]) -> None:
    """The ranking every job of a sweep draws its extra masks from
    (``data.extra_segmented.ranking``, where not swept) must be a file here: each job would
    otherwise fail on it, one after the other (jobs run elsewhere are left to find it)."""
    key = "data.extra_segmented.ranking"
    if key in swept or not runs_jobs_here(config):
        return
    ranking = OmegaConf.select(config, key, default=None)
    if ranking is not None and not Path(str(ranking)).expanduser().is_file():
        raise DataError(f"{key}: cannot read {ranking}: no such file")


def refuse_missing_split_files(config: DictConfig, task: list[str], swept: set[str]) -> None:
    """The split file each job reads (``data.split_file``, one a job where it names swept
    settings, as docs/datasets.md's ``N${data.num_segmented}_fold${data.fold}.csv`` does)
    must be a file here: a job without one would fail only after the jobs before it ran.
    Left to the jobs: those run elsewhere, and a sweep over data or experiment configs."""
    key = "data.split_file"
    if not runs_jobs_here(config) or swept & {"data", "experiment"}:
        return
    # as typed: resolved in the sweep's config, without the swept values, the paper's
    # per-fold file names loop (data.fold there is made of data.split_file)
    data = config.get("data")
    given = OmegaConf.to_container(data, resolve=False).get("split_file") if data else None
    if given is None and key not in swept:
        return
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    jobs = grid_job_overrides(task, {str(k): v for k, v in params.items()})
    if jobs is None:
        return
    base = OmegaConf.to_container(config, resolve=False)
    base.pop("hydra")
    env = OmegaConf.to_container(config.hydra.job.env_set, resolve=True)
    missing: dict[str, str] = {}  # split file -> the first job reading it, by its swept values
    parser = OverridesParser.create()
    for job in jobs:
        settings = OmegaConf.create(base)
        for override in parser.parse_overrides(job):
            name = override.key_or_group
            now = OmegaConf.select(settings, name, default=None, throw_on_resolution_failure=False)
            if override.is_delete() or override.is_add() or isinstance(now, DictConfig):
                continue  # a config group's choice, or a setting no split file names
            OmegaConf.update(settings, name, override.value(), merge=False)
        try:
            with env_override({name: str(value) for name, value in env.items()}):
                path = OmegaConf.select(settings, key)
        except OmegaConfBaseException:
            continue  # resolved by the job itself, which says what it lacks
        if path is not None and not Path(str(path)).expanduser().is_file():
            values = " ".join(f"{k}={v}" for k, v in job_settings(job).items() if k in swept)
            missing.setdefault(str(path), values)
    if missing:
        named = [f"{path} ({values})" if values else path for path, values in missing.items()]
        shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        raise DataError(f"cannot read split file {shown}: no such file")


def refuse_missing_data(config: DictConfig, task: list[str], swept: set[str]) -> None:
    """The data every job of a sweep reads (``data.root``, or the photographs ``data.tile``
    cuts, where neither is swept) must be given, and on this machine be there: each job
    would otherwise fail on it, one after the other. Looked for with the jobs' environment
    (``hydra.job.env_set``); data a job makes itself (synthetic, downloaded) is not, nor
    that of jobs run elsewhere (a cluster's launcher)."""
    data = config.get("data")
    if data is None or any(
        key in ("data", "experiment") or key.startswith(("data.root", "data.tile", "paths."))
        for key in swept
    ):
        return
    check_required(config, ("data.root",))  # unresolved: the jobs' environment is below
    if not runs_jobs_here(config):
        return
    check_data_makers(data)
    if data_maker(data) in MADE_FROM_NOTHING:
        return
    env = OmegaConf.to_container(config.hydra.job.env_set, resolve=True)
    with env_override({key: str(value) for key, value in env.items()}):
        check_config_data_found(data)
        root = Path(str(data.root)).expanduser()
    if data.get("layout") == "dagm":  # a sweep over its classes (the paper's DAGM sweeps)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        classes = swept_values(task, params, "data.dagm_class") or [data.dagm_class]
        check_dagm_classes(root, classes)
