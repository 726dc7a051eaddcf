"""Shared behaviour of the Hydra entry points: clear errors, job status, resuming sweeps."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException
from pytorch_lightning.utilities.exceptions import SIGTERMException
from tqdm import tqdm

import crackseg.errors
import crackseg.resolvers  # noqa: F401  (registers the resolvers the configs use)
from crackseg.config_checks import check_config
from crackseg.errors import CracksegError, RunFolderError, SweepSettingsError
from crackseg.run_folder import (
    check_sweep_resume,
    claim_run_folder,
    config_differences,
    finished_status,
    hydra_job,
    is_rank_zero,
    release_run_folder,
    write_status,
)
from crackseg.sweep.gpus import job_device_context
from crackseg.sweep.job_names import setting_changes, shared_settings, swept_keys
from crackseg.sweep.summary import MD_NAME, ended_sweeps
from crackseg.sweep.threads import set_job_threads

log = logging.getLogger(__name__)

#: The names of crackseg's own error types (crackseg.errors).
_OWN_ERRORS = {
    name
    for name, value in vars(crackseg.errors).items()
    if isinstance(value, type) and issubclass(value, CracksegError)
}

#: Exit status of a run stopped by SIGTERM or Ctrl-C (128 + SIGTERM, as a shell reports it).
EXIT_STOPPED = 143
#: Exit status of a multirun in which some job failed or did not finish.
EXIT_JOBS_FAILED = 1
#: Errors of the file system that end a run with one line: the output folder is unwritable
#: (or its path runs through a file), the disk or the quota is full, a file grew too large,
#: a file name is too long for the file system.
STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}
#: Of those, the errors that say a write did not fit (full disk or quota, read-only file
#: system, file size limit); the others are worded as themselves.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def run_task(
    task: Callable[[DictConfig], dict[str, Any]],
    cfg: DictConfig,
    objective: str = "best_val_image_ap",
) -> float | None:
    """Run ``task`` and return the metric a sweeper optimises.

    A user's mistake ends a single run with one line and exit code 2. In a multirun every
    failure (including out-of-memory) is written to the job's ``status.json`` and the sweep
    goes on; a job already finished in its folder is skipped, so re-running a sweep into
    the same ``hydra.sweep.dir`` resumes it. A run stopped by SIGTERM or Ctrl-C exits with
    status 143 (a sweep stops there too), leaving the checkpoint to resume from.
    """
    output_dir = Path(cfg.paths.output_dir)
    multirun, _ = hydra_job()
    try:
        # Held since Hydra set up the job's log (crackseg.resolvers.job_log); claimed here
        # too in case the logging config was replaced.
        claim_run_folder(output_dir)
        if multirun and cfg.get("skip_finished", True):
            done = finished_status(output_dir)
            if done is not None:
                _refuse_other_settings(output_dir, cfg)
                log.info("skipping %s: finished in an earlier sweep", output_dir)
                return done.get("metrics", {}).get(objective)
        with job_device_context(cfg):  # one GPU per job in a local parallel sweep
            set_job_threads(cfg)  # and a share of the CPU cores
            results = task(cfg)
    except SIGTERMException:
        _record(output_dir, "interrupted")
        if multirun:
            sweep_dir = HydraConfig.get().sweep.dir
            print_line(f"stopped: continue with the same command and hydra.sweep.dir={sweep_dir}")
        else:
            print_line(f"stopped: continue with  crackseg-train resume={output_dir}")
        sys.exit(EXIT_STOPPED)
    except Exception as raised:
        error = _root_cause(raised)
        if multirun and isinstance(error, SweepSettingsError):
            raise error from None  # the whole sweep's mistake: it ends the sweep
        expected = isinstance(error, CracksegError) or _is_storage_error(error)
        if expected and not isinstance(error, RunFolderError):
            _record(output_dir, "failed", error=one_line(error))
        if not multirun:
            if expected:
                print_line(f"error: {one_line(error)}")
                sys.exit(2)
            raise
        if not expected:
            log.exception("job failed")
            _record(output_dir, "failed", error=one_line(error))
        log.error("job failed: %s", one_line(error))
        return None
    else:
        metrics = {k: v for k, v in results.items() if isinstance(v, int | float | str | None)}
        if is_rank_zero():
            write_status(output_dir, "finished", metrics=metrics)
        return metrics.get(objective)
    finally:
        release_run_folder(output_dir)  # the next job of a sweep may run in this process


def _refuse_other_settings(output_dir: Path, cfg: DictConfig) -> None:
    """A sweep run again must have the settings of its finished jobs: their folders are
    named by the swept values only, so another setting would reuse results it did not make."""
    saved_path = output_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return
    if changed := config_differences(OmegaConf.load(saved_path), cfg):
        raise _ran_with_other_settings(output_dir, changed)


def _ran_with_other_settings(job: Path, changed: list[str]) -> SweepSettingsError:
    return SweepSettingsError(
        f"the finished job in {job} ran with other settings ({'; '.join(changed)}); "
        "use another hydra.sweep.dir"
    )


def print_line(text: str) -> None:
    """Print ``text`` to stderr at the start of a line of its own.

    A progress bar interrupted by an error is left mid-line (on stdout, on the same
    terminal): closing the bars still open ends that line first.
    """
    for bar in list(tqdm._instances):
        bar.close()
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def _record(output_dir: Path, status: str, **fields: Any) -> None:
    """Rank 0 writes the status; best effort, as on a full disk it may not be writable."""
    if not is_rank_zero():
        return
    try:
        write_status(output_dir, status, **fields)
    except OSError as error:
        log.warning("could not write the run status: %s", error)


def _is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def _root_cause(error: BaseException) -> BaseException:
    """What the user needs to see: the error a constructor (Hydra's instantiate) or a
    resolver (OmegaConf, which chains it as the context) raised, not the wrapper."""
    while isinstance(error, InstantiationException | InterpolationResolutionError):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return error


def one_line(error: BaseException) -> str:
    """An error as one line: a file system error names its file (``cannot write FILE: ...``
    for a write that did not fit), Hydra's lists are inlined."""
    if isinstance(error, OSError) and error.strerror:
        if error.errno in WRITE_ERRNOS:
            where = f" {error.filename}" if error.filename else ""
            return f"cannot write{where}: {error.strerror}"
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, MissingConfigException) and len(lines) > 1:
        # "Could not find 'data/foo'", "Available options in 'data':", one per line, and
        # the search path.
        options = list(itertools.takewhile(lambda x: not x.startswith("Config search"), lines[2:]))
        return f"{lines[0]} (available: {', '.join(options)})"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the command line: {lines[0]}"
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, InterpolationResolutionError):
        # A resolver's refusal that lost its chain on the way back from a launcher's worker
        # process: "RunFolderError raised while resolving interpolation: MESSAGE".
        name, _, message = text.partition(" raised while resolving interpolation: ")
        if message and name in _OWN_ERRORS:
            text = message
    cause = error.__cause__
    if isinstance(error, HydraException) and isinstance(cause, OmegaConfBaseException):
        cause_line = str(cause).splitlines()[0].strip()
        text = f"{text.rstrip('.')}: {cause_line}"
    return text


def run_hydra_main(main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function; a bad command line or config is one line, exit 2.

    Hydra prints its own errors over several lines (with a stack trace for some); with
    HYDRA_FULL_ERROR it raises them instead, and they are worded here. Errors inside a run
    are handled by :func:`run_task`. A multirun in which a job failed or did not finish
    ends with one line naming its summary, exit 1.
    """
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (HydraException, OmegaConfBaseException, OSError, CracksegError) as raised:
        # A run folder refused by crackseg.resolvers, or one that cannot be created, is
        # worded as itself, not as the resolver error wrapping it.
        error = _root_cause(raised)
        if not isinstance(error, CracksegError) and not _is_storage_error(error):
            if not isinstance(raised, HydraException | OmegaConfBaseException):
                raise
            error = raised
        print_line(f"error: {one_line(error)}")
        sys.exit(2)
    for sweep_dir, jobs, failed, unfinished in ended_sweeps:
        if jobs is None:
            print_line(f"error: could not read the status of the jobs in {sweep_dir}; see the log")
            sys.exit(EXIT_JOBS_FAILED)
        if failed or unfinished:
            what = "failed" if not unfinished else "failed or did not finish"
            summary = sweep_dir / MD_NAME
            print_line(f"error: {failed + unfinished} of {jobs} jobs {what}; see {summary}")
            sys.exit(EXIT_JOBS_FAILED)


class SweepChecksCallback(Callback):
    """Hydra callback: refuse a multirun whose shared settings cannot work before any job
    (or its folder) is started: ``resume=RUN_DIR``, and the values
    :func:`crackseg.config_checks.check_config` checks (swept values are checked by each
    job), and a sweep run again over finished jobs that had other settings. One line and
    exit 2, as Hydra turns a callback's exception into a warning."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_resume(config.get("resume"))
            check_config(config)
            if config.get("skip_finished", True):
                refuse_finished_jobs_with_other_settings(config)
        except CracksegError as error:
            print_line(f"error: {one_line(error)}")
            sys.exit(2)


def refuse_finished_jobs_with_other_settings(config: DictConfig) -> None:
    """Finished jobs of the sweep folder are skipped, and their folders are named by the
    swept values only: a setting given otherwise on the command line (``trainer.max_epochs=20``
    after a 10-epoch sweep) would reuse results it did not make. Compared before any job runs
    (each job also compares its whole saved config when it is skipped)."""
    sweep_dir = Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir():
        return
    task = OmegaConf.to_container(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    swept = swept_keys(task, params)
    wanted = shared_settings(task, swept)
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        saved = job / ".hydra" / "overrides.yaml"
        if finished_status(job) is None or not saved.is_file():
            continue
        if changed := setting_changes(shared_settings(OmegaConf.load(saved), swept), wanted):
            raise _ran_with_other_settings(job, changed[:3])
