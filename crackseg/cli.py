"""Command-line concerns of the entry points: a user's mistake as one ``error:`` line and a
non-zero exit, never a stack trace (the line itself is worded by crackseg.error_lines).
What a run does around its task (status, skipping finished jobs) is
crackseg.runs.lifecycle; a sweep's checks before its jobs and its stop,
crackseg.runs.multirun."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from crackseg import error_lines, version_line
from crackseg.config_files import groups_of_command
from crackseg.error_lines import (
    cannot_set_up_run_folder,
    is_expected_error,
    one_line,
    print_line,
    root_cause,
)
from crackseg.errors import EXIT_STOPPED, ConfigError, CracksegError, SweepStopped
from crackseg.runs.hydra_run import override_key
from crackseg.runs.lifecycle import leave_out_library_notices
from crackseg.runs.ownership import is_rank_zero, refuse_a_sweeps_folder, unlock_every_folder
from crackseg.setting_rules import as_override
from crackseg.sweep.summary import MD_NAME, end_sweep, ended_sweeps, started_sweeps

#: Exit status of a multirun in which some job failed or did not finish.
EXIT_JOBS_FAILED = 1
#: How Hydra refuses two of its modes at once (``-m`` with ``--cfg``).
HYDRA_MODES_EXCLUSIVE = "Only one of --run, --multirun, --cfg"
#: What Optuna's sweeper raises at the end of a search in which no trial completed.
NO_TRIAL_COMPLETED = "No trials are completed yet."
#: The overrides that name a command's folder.
FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def refuse_unusable_folder_overrides(args: list[str]) -> None:
    """``hydra.run.dir=`` or ``hydra.sweep.dir=`` with nothing after it (an unset shell
    variable) would make the folder the command runs in the run's, its files mixed with
    the run's; one starting with a quoted ``~`` would be a folder named ``~`` there (Hydra
    does not expand it); a ``hydra.run.dir`` holding a sweep would get the run's
    ``.hydra/`` beside the sweep's jobs: refused before Hydra writes into it. ``.`` says so
    on purpose."""
    for arg in args:
        key, equals, value = arg.partition("=")
        if not equals or override_key(arg) not in FOLDER_KEYS:
            continue
        folder = value.strip("'\" ")
        if not folder:
            raise ConfigError(f"{key} is empty: give the folder (an unset shell variable?)")
        if folder == "~" or folder.startswith("~/"):
            raise ConfigError(
                f"{key}={folder}: Hydra does not expand ~; write {key}=$HOME{folder[1:]}"
            )
        if override_key(arg) == "hydra.run.dir":
            # before Hydra writes the run's .hydra/ there, beside the sweep's jobs
            refuse_a_sweeps_folder(Path(folder))


def refuse_missing_search_folders(args: list[str]) -> None:
    """A ``file://`` folder of ``hydra.searchpath`` that does not exist: Hydra passes over
    it, and a config of the user's (``experiment=night_shift``) is then not found among
    crackseg's own, with nothing said about the folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for arg in args:
        if override_key(arg) != "hydra.searchpath":
            continue
        folders = OverridesParser.create().parse_overrides([arg])[0].value()
        for entry in folders if isinstance(folders, list) else [folders]:
            scheme, _, folder = str(entry).rpartition("://")
            if scheme == "file" and not Path(folder).is_dir():
                raise ConfigError(f"hydra.searchpath: {entry}: no such folder")


def refuse_unusable_group_choices(args: list[str], command: str) -> None:
    """``logger=null``: a config group's option is chosen by name, and Hydra fails on a null
    one with a traceback; the group is left out by deleting it. ``logger=[tensorboard,csv]``:
    Hydra merges the two into one logger's config, which fails after the data is read, or
    logs with one of them without a word."""
    for arg in args:
        key, equals, value = arg.partition("=")
        if not equals or key not in groups_of_command(command):
            continue
        if value.strip() == "null":
            raise ConfigError(
                f"{arg}: a config group is chosen by an option's name ({key}=NAME); "
                f"~{key} leaves it out"
            )
        if key == "logger" and value.strip().startswith("["):
            raise ConfigError(f"{arg}: a run logs with one logger (logger=NAME)")


def is_uncompleted_cluster_job(error: BaseException) -> bool:
    """submitit's error for a job that ended without a result (its state FAILED, TIMEOUT,
    OUT_OF_MEMORY, ...), told by name: the launcher is imported only by the sweeps using it."""
    kind = type(error)
    return kind.__name__ == "UncompletedJobError" and kind.__module__.startswith("submitit")


def restore_sweep_handlers() -> None:
    """The signal handlers a sweep replaced put back, and its stopping mark removed, before
    its summary is written past Hydra's end of the multirun."""
    from crackseg.runs.multirun import restore_signal_handlers  # loads the sweep's checks

    restore_signal_handlers()


def end_last_sweep() -> Path | None:
    """The summary of the sweep this command started last, written past Hydra's end of the
    multirun (its stopped or failed jobs counted), its signal handlers put back first (a
    second SIGTERM while it is written: the default). Its folder; None where none began."""
    restore_sweep_handlers()
    sweep_dir = list(started_sweeps)[-1] if started_sweeps else None
    if sweep_dir is None or not sweep_dir.is_dir():
        return None
    end_sweep(sweep_dir)
    return sweep_dir


@contextmanager
def info_said_once_accepted() -> Iterator[None]:
    """The INFO lines logged inside, shown on the console only if it ends without an error:
    a command line refused there prints its ``error:`` line alone, not what was chosen
    before the refusal (``precision: bf16-mixed``). Warnings are shown at once; the job's
    log file keeps every line either way."""
    consoles = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]
    held: list[tuple[logging.Handler, logging.LogRecord]] = []

    def holding_info(console: logging.Handler) -> Callable[[logging.LogRecord], bool]:
        def hold_info(record: logging.LogRecord) -> bool:
            if record.levelno > logging.INFO:
                return True
            held.append((console, record))
            return False

        return hold_info

    filters = [(console, holding_info(console)) for console in consoles]
    for console, hold_info in filters:
        console.addFilter(hold_info)
    try:
        yield
    finally:
        for console, hold_info in filters:
            console.removeFilter(hold_info)
    for console, record in held:
        console.handle(record)


def run_hydra_main(main: Callable[[], Any], command: str) -> None:
    """Call the ``@hydra.main`` function of ``command`` (its config: train, eval, predict,
    export); a bad command line or config is one line, exit 2.

    Hydra prints its own errors over several lines (with a stack trace for some); with
    HYDRA_FULL_ERROR it raises them instead, and they are worded here. Errors inside a run
    are handled by :func:`crackseg.runs.lifecycle.run_task`. A multirun in which a job
    failed or did not finish ends with one line naming its summary, exit 1; one stopped
    ends with its summary written, exit 143.
    """
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    error_lines.command_config = command  # the config the command starts from (train.yaml)
    if "--version" in sys.argv[1:]:  # Hydra's own would name only itself
        print(version_line())
        sys.exit(0)
    leave_out_library_notices()
    try:
        refuse_unusable_folder_overrides(sys.argv[1:])
        refuse_missing_search_folders(sys.argv[1:])
        refuse_unusable_group_choices(sys.argv[1:], command)
        main()
    except (SweepStopped, KeyboardInterrupt):
        # KeyboardInterrupt: Ctrl-C outside any job, where no handler of crackseg's turns it
        # into a stop (the command of a cluster sweep waiting for its jobs, which go on there)
        if not is_rank_zero():  # a DDP job's other process, which runs the sweep in step
            restore_sweep_handlers()
            sys.exit(EXIT_STOPPED)
        sweep_dir = end_last_sweep()  # the stopped jobs counted as unfinished
        if sweep_dir is not None:
            again = as_override("hydra.sweep.dir", sweep_dir)
            print_line(f"stopped: continue with the same command and {again}")
        else:
            print_line("stopped before any job started")
        sys.exit(EXIT_STOPPED)
    except SystemExit as ended:
        # A job of a sweep run one after another was stopped: it said how to go on, and
        # the sweep ends here, past Hydra's end of a multirun, which writes the summary.
        if ended.code == EXIT_STOPPED and is_rank_zero():
            end_last_sweep()
        raise
    except (HydraException, OmegaConfBaseException, OSError, CracksegError) as raised:
        # A run folder refused by crackseg.runs.resolvers, or one that cannot be created, is
        # worded as itself, not as the resolver error wrapping it.
        error = root_cause(raised)
        unlock_every_folder()  # refused before its run: no lock file left where it is all
        line = cannot_set_up_run_folder(error)
        if line is None:
            if not is_expected_error(error):
                if not isinstance(raised, HydraException | OmegaConfBaseException):
                    raise
                error = raised
            line = one_line(error)
        print_line(f"error: {line}")
        sys.exit(2)
    except RuntimeError as raised:
        # A cluster job that ended without a result (killed by SLURM, out of memory): the
        # launcher stops collecting the others' results there. The sweep ends as one whose
        # jobs failed, with its summary of what is on disk.
        if not is_uncompleted_cluster_job(raised) or not started_sweeps:
            raise
        print_line(f"a cluster job ended without a result: {one_line(raised)}")
        end_last_sweep()
    except ValueError as raised:
        if str(raised).startswith(HYDRA_MODES_EXCLUSIVE):  # `-m ... --cfg job`
            print_line(f"error: {raised} (--cfg shows the config of one run: drop -m)")
            sys.exit(2)
        # Optuna's sweeper asks for the best of a search in which every trial failed: the
        # sweep ends as one whose jobs failed, with its summary.
        if str(raised) != NO_TRIAL_COMPLETED or not started_sweeps:
            raise
        end_last_sweep()
    for sweep_dir, jobs, failed, unfinished in ended_sweeps:
        if jobs is None:
            print_line(f"error: could not read the status of the jobs in {sweep_dir}; see the log")
            sys.exit(EXIT_JOBS_FAILED)
        if failed or unfinished:
            what = "failed" if not unfinished else "failed or did not finish"
            summary = sweep_dir / MD_NAME
            print_line(f"error: {failed + unfinished} of {jobs} jobs {what}; see {summary}")
            sys.exit(EXIT_JOBS_FAILED)
