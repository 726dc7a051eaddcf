"""A run's life around its task: its status, skipping a sweep's finished job (refused
where it ran with other settings), its data split before it records its start, and a clear
end when it is stopped or fails. A sweep's
own checks before its jobs, and its stop, are crackseg.runs.multirun."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackseg import CONFIG_DIR
from crackseg.config_files import keys_a_config_sets, keys_set_at_the_top, target_arguments
from crackseg.error_lines import is_expected_error, one_line, print_line, root_cause
from crackseg.errors import (
    EXIT_STOPPED,
    ConfigError,
    CracksegError,
    RunFolderError,
    SweepSettingsError,
)
from crackseg.runs.config_changes import config_differences
from crackseg.runs.gpus import job_device_context
from crackseg.runs.hydra_run import in_multirun, override_key, saved_hydra_file, typed_overrides
from crackseg.runs.job_log import log_traceback_to_file
from crackseg.runs.ownership import (
    accept_run_folder,
    claim_run_folder,
    is_accepted,
    is_rank_zero,
    process_rank,
    refuse_files_of_others,
    release_run_folder,
    unlock_refused_folder,
    used_by_another_command,
)
from crackseg.runs.resolvers import (  # registers the configs' resolvers
    forget_new_run_folders,
    one_of_several_processes,
    remove_refused_folder_at_exit,
)
from crackseg.runs.status import finished_status, write_status
from crackseg.setting_rules import as_override, closest_setting

if TYPE_CHECKING:
    from crackseg.data.datamodule import CrackDataModule

log = logging.getLogger(__name__)


#: The logger of Lightning's rank-zero messages, its tips among them.
LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


def leave_out_library_notices() -> None:
    """Leave out of every command's output what the libraries say in every run that says
    nothing of it and that no setting of crackseg's answers."""
    # Lightning (2.6.6, the newest) flattens batches, and torch.export a model's inputs,
    # with torch's LeafSpec, which torch 2.13 deprecates.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's model summary cannot size bf16-mixed parameters, and counts them as the
    # float32 they are under mixed precision.
    warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model")
    # Lightning advertises its cloud services ("Tip: ... litlogger", "litmodels").
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(is_no_lightning_tip)


def is_no_lightning_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def run_task(
    task: Callable[[DictConfig], dict[str, Any]],
    cfg: DictConfig,
    objective: str = "best_val_image_ap",
    stopped_message: str | Callable[[], str] | None = None,
) -> float | None:
    """Run ``task`` and return the metric a sweeper optimises.

    A user's mistake ends a single run with one line and exit code 2. In a multirun every
    failure (including out-of-memory) is written to the job's ``status.json`` and the sweep
    goes on; a job already finished in its folder is skipped, so re-running a sweep into
    the same ``hydra.sweep.dir`` resumes it. A run stopped by SIGTERM or Ctrl-C
    (:func:`sigterm_as_ctrl_c`) exits with
    status 143 (a sweep stops there too) and the status ``interrupted``, leaving the
    checkpoint to resume from. A command that cannot be resumed (an evaluation, a prediction,
    an export) says its ``stopped_message`` instead of how to resume, and leaves what it did
    so far, its folder refused to any later command.
    """
    leave_out_library_notices()  # again: a launcher's worker process (joblib, SLURM) starts bare
    output_dir = Path(cfg.paths.output_dir)
    multirun = in_multirun()
    try:
        check_job_placement(output_dir, multirun)
        if HydraConfig.initialized():
            refuse_added_settings_nothing_reads(cfg, HydraConfig.get())
    except ConfigError as refused:  # recorded in the folder Hydra made, not the one typed
        hydra_dir = Path(HydraConfig.get().runtime.output_dir)
        accept_a_new_folder(hydra_dir)
        _record(hydra_dir, "failed", error=one_line(refused))
        tell_user(f"error: {refused}")
        if not multirun:
            remove_refused_folder_at_exit(hydra_dir)
        sys.exit(2)
    try:
        # Held since Hydra set up the job's log (crackseg.runs.resolvers.job_log); claimed here
        # too in case the logging config was replaced.
        claim_run_folder(output_dir)
        if multirun and cfg.get("skip_finished", True):
            done = finished_status(output_dir)
            if done is not None:
                _refuse_other_settings(output_dir, cfg)
                log.info("skipping %s: finished in an earlier sweep", output_dir)
                return done.get("metrics", {}).get(objective)
        # SIGTERM stops the task as Ctrl-C does: before, between and inside Lightning's
        # loops (where Lightning stops it, training after the batch). A task takes its
        # share of the CPU cores itself once it has checked its settings
        # (crackseg.runs.threads.set_job_threads).
        with job_device_context(cfg), sigterm_as_ctrl_c():  # one GPU per job of a sweep
            results = task(cfg)
    except stop_requests():
        _end_stopped(output_dir, stopped_message, multirun)
    except SystemExit as exiting:
        # Ctrl-C inside one of Lightning's calls outside the training loop (its setup, a
        # validation, the test): Lightning ends the process with exit(1) from its handler.
        if not isinstance(exiting.__context__, KeyboardInterrupt):
            raise
        _end_stopped(output_dir, stopped_message, multirun)
    except Exception as raised:
        return _end_failed(output_dir, raised, multirun)
    else:
        metrics = {k: v for k, v in results.items() if isinstance(v, int | float | str | None)}
        if is_rank_zero():
            write_status(output_dir, "finished", metrics=metrics)
        return metrics.get(objective)
    finally:
        release_run_folder(output_dir)  # the next job of a sweep may run in this process
        forget_new_run_folders()


def tell_user(line: str) -> None:
    """The command's ``stopped:`` line, from its first process only: under DDP every process
    is stopped, and each said it. An ``error:`` line comes from every process, the others'
    naming theirs: an error of one process alone (its GPU out of memory) is said by it, as
    the first is ended by Lightning without a word."""
    if is_rank_zero():
        print_line(line)
    elif line.startswith("error: "):
        print_line(f"error: process {process_rank()}: {line.removeprefix('error: ')}")


def check_job_placement(output_dir: Path, multirun: bool) -> None:
    """Where the job runs is Hydra's to say. ``paths.output_dir`` is the folder Hydra made
    for the job, where its log and ``.hydra/`` are: given otherwise, a run would be split
    over two folders. A launcher typed for a single run (``hydra/launcher=slurm``) is one
    Hydra ignores: the run would train here, not where it was sent."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    hydra_dir = Path(hydra.runtime.output_dir)
    if os.path.realpath(output_dir) != os.path.realpath(hydra_dir):
        raise ConfigError(
            f"paths.output_dir={output_dir} is not the run's folder {hydra_dir}: "
            "set hydra.run.dir (hydra.sweep.dir in a sweep) instead"
        )
    launchers = [o for o in hydra.overrides.hydra if override_key(o) == "hydra/launcher"]
    if launchers and not multirun:
        raise ConfigError(
            f"{launchers[0]} launches the jobs of a sweep, and a single run would train "
            "here: add -m (--multirun), or drop it"
        )
    # A sweep's settings (+sweep=dilate, hparams_search=optuna) are its sweeper's: a single
    # run ignores them, and would train one job of the defaults in their place.
    swept = OmegaConf.select(hydra, "sweeper.params", default=None)
    if swept and not multirun:
        raise ConfigError(
            f"the config sweeps over {', '.join(swept)} (hydra.sweeper.params), which a "
            "single run ignores: add -m (--multirun)"
        )


def refuse_added_settings_nothing_reads(cfg: DictConfig, hydra: DictConfig) -> None:
    """A key added to a command's config that nothing reads: at the top (``+seeed=1``, where
    Hydra advises ``+`` for a key it lacks, or ``++seeed=1``) the run went on with the
    setting meant at its default; to a block that builds a class (``+trainer.max_epoch=1``)
    the class refused it only once the run was under way. A config group added so
    (``+sweep=dilate``) is a choice, not a key. ``hydra`` is the run's Hydra config
    (HydraConfig, or a multirun's ``hydra`` node)."""
    choices = OmegaConf.to_container(hydra.runtime.choices)
    overrides = OmegaConf.to_container(hydra.overrides.task)  # as typed, unresolved
    added_groups = {override_key(o) for o in overrides if o.startswith("+")} & set(choices)
    for override in overrides:
        if not override.startswith("+"):
            continue
        key = override_key(override)
        block, _, name = key.rpartition(".")
        config_name = hydra.job.config_name
        root = key.split(".")[0]
        adds_a_block = bool(block) or key in choices
        if adds_a_block and not _read_by_the_command(root, cfg, config_name, choices, added_groups):
            raise ConfigError(
                f"{override} adds settings this command does not read: it has no {root} "
                f"{'group' if key in choices else 'settings'}"
            )
        if not block:
            set_by_a_config = override.startswith("++") and key in keys_set_at_the_top(
                config_name, choices
            )
            if key not in choices and not set_by_a_config:
                known = sorted(k for k in cfg if k not in (key, "hydra"))
                raise ConfigError(
                    f"{override} adds a setting nothing reads{closest_setting('', key, known)}"
                )
            continue
        target = OmegaConf.select(cfg, f"{block}._target_", default=None)
        arguments = target_arguments(target) if not name.startswith("_") else None
        if arguments is None:
            continue
        known = set(arguments) | keys_a_config_sets(block, choices)  # scheduler.interval
        if name not in known:
            raise ConfigError(
                f"{override} adds a setting {target} does not take"
                f"{closest_setting(block, name, sorted(known - {'_target_', '_partial_'}))}"
            )


def _read_by_the_command(
    root: str,
    cfg: DictConfig,
    config_name: str,
    choices: dict[str, Any],
    added_groups: set[str],
) -> bool:
    """Whether the command reads the top-level block or group ``root`` a ``+`` override
    adds to: a group of its config's defaults list (chosen or not), a key its config sets,
    or a group whose option places its settings at the top (``+sweep=dilate``, from conf/
    or a search path: no block of its name), checked key by key. A config of the user's own
    (``--config-name`` from another folder) is not known here: anything passes."""
    if not (Path(CONFIG_DIR) / f"{config_name}.yaml").is_file():
        return True
    groups = {group for group in choices if not group.startswith("hydra")} - added_groups
    if root in groups or root in keys_set_at_the_top(config_name, choices):
        return True
    return root in choices and root not in cfg


def _setting_removed_by_an_override(error: BaseException) -> ConfigError | None:
    """A setting deleted with ``~KEY``, or a block emptied with ``KEY=null``, that the
    command then missed (a KeyError, OmegaConf's missing key or interpolation): the
    override named, rather than the key it left missing."""
    if not isinstance(error, KeyError | OmegaConfBaseException):
        return None
    for override in typed_overrides():
        key = override_key(override)
        if override.startswith("~") and f"'{key.rpartition('.')[2]}'" in str(error):
            return ConfigError(
                f"{override} deletes a setting this command reads: set it instead ({key}=VALUE)"
            )
        emptied = _NOT_A_CONTAINER.search(str(error))
        value = override.partition("=")[2]
        if emptied and value.lower() == "null" and f".{key}".endswith(f".{emptied[1]}"):
            # (a relative interpolation, ${.tile.size}, names the node from its block)
            read = _READ_KEY.search(str(error))
            named = f" ({read[1]})" if read else ""
            return ConfigError(
                f"{override} empties a block whose settings this command reads{named}: "
                "leave it as it is"
            )
    return None


#: The key OmegaConf names in "Error trying to access KEY: ...", and the node that is no
#: block in "node `NODE` is not a container".
_READ_KEY = re.compile(r"Error trying to access (\S+):")
_NOT_A_CONTAINER = re.compile(r"node `([^`]+)` is not a container")


def _end_failed(output_dir: Path, raised: Exception, multirun: bool) -> None:
    """A command that failed: its status; one line and exit 2 for a user's mistake in a
    single run (a traceback otherwise); in a multirun the job's line, and the sweep goes on,
    unless the mistake is the whole sweep's."""
    error = root_cause(raised)
    error = _setting_removed_by_an_override(error) or error
    if multirun and isinstance(error, SweepSettingsError):
        raise error from None  # the whole sweep's mistake: it fails the sweep
    if isinstance(raised, InstantiationException) and not isinstance(error, CracksegError):
        # A class the config names refused its arguments (+trainer.strategy=nope): the
        # config's mistake, worded as the target and its refusal.
        error = raised
    expected = isinstance(error, InstantiationException) or is_expected_error(error)
    if multirun and not expected:
        log.exception("job failed")
    if isinstance(error, RunFolderError):  # a folder of another run keeps its status
        unlock_refused_folder(output_dir)
    else:
        accept_a_new_folder(output_dir)
        _record(output_dir, "failed", error=one_line(error))
    if not multirun:
        if expected:
            tell_user(f"error: {one_line(error)}")
            log_traceback_to_file(output_dir, raised)
            remove_refused_folder_at_exit(output_dir)  # where it holds only the refusal's record
            sys.exit(2)
        raise raised
    log.error("job failed: %s", one_line(error))
    if expected:
        log_traceback_to_file(output_dir, raised)


def _end_stopped(output_dir: Path, message: str | Callable[[], str] | None, multirun: bool) -> None:
    """A command stopped by SIGTERM or Ctrl-C: its status, how to go on (``message``, or
    what it says once the command stopped), exit 143."""
    _record(output_dir, "interrupted")
    if message is not None:
        tell_user(f"stopped: {message() if callable(message) else message}")
    elif multirun:
        sweep_dir = HydraConfig.get().sweep.dir
        again = as_override("hydra.sweep.dir", sweep_dir)
        tell_user(f"stopped: continue with the same command and {again}")
    else:
        tell_user(f"stopped: continue with crackseg-train {as_override('resume', output_dir)}")
    sys.exit(EXIT_STOPPED)


def stop_requests() -> tuple[type[BaseException], ...]:
    """What SIGTERM and Ctrl-C raise: KeyboardInterrupt, and Lightning's SIGTERMException
    while it trains. That one can only be raised once Lightning is loaded, so it is looked
    up then, and a command refused before training never waits for Lightning's import."""
    exceptions = sys.modules.get("pytorch_lightning.utilities.exceptions")
    if exceptions is None:
        return (KeyboardInterrupt,)
    return (exceptions.SIGTERMException, KeyboardInterrupt)


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the work inside as Ctrl-C does (a KeyboardInterrupt, which
    :func:`run_task` ends with one line and the status ``interrupted``). Inside a Lightning
    call that holds SIGTERM itself (from the start of its loops: training stops after the
    batch with a checkpoint), this handler, which Lightning calls after its own, leaves the
    stop to it (crackseg.runs.trainer.stop_if_signalled raises one that Lightning only
    noted, after a loop's last batch). A second SIGTERM does not interrupt the stop. Raised
    where Python drops exceptions (a finaliser, a weakref callback the garbage collector
    runs), the stop is raised again once the work inside is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped = False

    def interrupt(signum: int, frame: Any) -> None:
        nonlocal stopped
        if signal.getsignal(signal.SIGTERM) is not interrupt:
            return  # Lightning's handler holds SIGTERM and has called this one
        if stopped:
            return  # stopping already: a second SIGTERM must not cut its clean-up short
        stopped = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        raise KeyboardInterrupt


def _refuse_other_settings(output_dir: Path, cfg: DictConfig) -> None:
    """A sweep run again must have the settings of its finished jobs: their folders are
    named by the swept values only, so another setting would reuse results it did not make."""
    if not (output_dir / ".hydra" / "config.yaml").is_file():
        return
    saved = saved_hydra_file(output_dir, "config.yaml")
    if saved is None:
        raise SweepSettingsError(
            f"the finished job in {output_dir} has an unreadable .hydra/config.yaml, its "
            "settings unknown; use another hydra.sweep.dir"
        )
    if changed := config_differences(saved, cfg):
        raise ran_with_other_settings(output_dir, changed)


def ran_with_other_settings(job: Path, changed: list[str]) -> SweepSettingsError:
    return SweepSettingsError(
        f"the finished job in {job} ran with other settings ({'; '.join(changed)}); "
        "use another hydra.sweep.dir"
    )


def accept_a_new_folder(output_dir: Path) -> None:
    """A command refused before it accepted its folder (a setting this machine cannot run)
    records why in a folder that is its own: one Hydra has just made for it, holding no run,
    no other command's status and no files of others. Any other folder is left as it was."""
    if not is_rank_zero() or is_accepted(output_dir) or used_by_another_command(output_dir):
        return
    try:
        refuse_files_of_others(output_dir)
    except RunFolderError:
        return
    accept_run_folder(output_dir)


def _record(output_dir: Path, status: str, **fields: Any) -> None:
    """Rank 0 writes the status of a command that accepted its folder (one refused before
    leaves it as it was); best effort, as on a full disk it may not be writable."""
    if not is_rank_zero() or not is_accepted(output_dir):
        return
    try:
        write_status(output_dir, status, **fields)
    except OSError as error:
        log.warning("could not write the run status: %s", error)


def split_data_now(datamodule: CrackDataModule, stage: str) -> None:
    """The run's data, made where the run makes it (synthetic, downloaded or tiled), split
    for ``stage`` now, before the run records its start and its logger writes: data that
    cannot be used (no images where the layout looks, fewer positives with masks than
    ``data.num_segmented``) is refused while the run folder holds only the refusal's record,
    which goes with the folder. Lightning's setup keeps this split. Every process of a run
    launched together (``srun --ntasks=N``) refuses so, unless the run makes its data: then
    Lightning makes it in the first process and splits it in each after."""
    if datamodule.makes_its_data and one_of_several_processes():
        return
    datamodule.prepare_data()
    datamodule.setup(stage)
