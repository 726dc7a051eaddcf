"""Job folders of a sweep named by what tells the jobs apart, not by what they share.

Hydra names a job's folder after all of its overrides (``hydra.job.override_dirname``), so
``crackseg-train -m +sweep=dilate trainer.max_epochs=2`` would put ``trainer.max_epochs=2``
into every job's name. The swept keys are those given several values: the keys of
``hydra.sweeper.params`` (a ``conf/sweep/`` file) and the command-line overrides that are
sweeps (``seed=0,1``, ``range(3)``, ``glob(...)``). :class:`JobNamesCallback` adds every other
key of the command line to ``override_dirname.exclude_keys`` of the jobs, before the sweeper
composes them. It does so through the hydra overrides of the sweep, which Hydra applies to
every job it composes, whatever the launcher (local, joblib workers, SLURM): a job's name
is then ``<num>_<swept key>=<value>,...``, and its ``.hydra/hydra.yaml`` shows the keys left out.

The same split (swept keys, shared settings) tells whether a sweep run again asks its
finished jobs for what they ran with (:func:`shared_settings`, :func:`job_overrides`,
:func:`setting_changes`; crackseg.runs.multirun and crackseg.runs.lifecycle compare them).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from crackseg.runs.config_changes import RESUME_FREE_KEYS
from crackseg.runs.hydra_run import override_key, saved_overrides, started_by, sweep_command

log = logging.getLogger(__name__)

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


def swept_keys(task_overrides: Iterable[str], sweeper_params: Mapping[str, Any]) -> set[str]:
    """The keys that vary between the jobs: sweeper params and command-line sweeps."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys | {override_key(name) for name in sweeper_params}


def keys_telling_jobs_apart(sweep_dir: str | Path, command: str | None = None) -> set[str]:
    """The keys whose values tell apart the jobs already in ``sweep_dir`` (as their
    ``.hydra/overrides.yaml`` give them; a key some jobs lack counts too). Swept by an
    earlier run of the sweep, they still name its jobs when a run again gives one of them a
    single value (``data.input_height=60,64``, then ``data.input_height=64``): that job is
    then found in its earlier folder, not trained again in a new one. The folders of another
    ``command`` than the sweep's (an evaluation run into it) are no jobs of it (None: any)."""
    sweep_dir = Path(sweep_dir)
    jobs = [job for job in sweep_dir.iterdir() if job.is_dir()] if sweep_dir.is_dir() else []
    if command is not None:
        jobs = [job for job in jobs if started_by(job) in (None, command)]
    given: dict[str, list[str]] = {}
    read = 0
    for job in jobs:
        saved = saved_overrides(job)
        if saved is None:  # unreadable: the job itself refuses it
            continue
        try:
            overrides = OverridesParser.create().parse_overrides(saved)
        except HydraException:
            continue
        read += 1
        for override in overrides:
            if not _free_to_change(override.key_or_group):
                given.setdefault(override.key_or_group, []).append(_value_text(override))
    return {key for key, values in given.items() if len(set(values)) > 1 or len(values) < read}


def swept_values(
    task_overrides: Iterable[str], sweeper_params: Mapping[str, Any], key: str
) -> list[str] | None:
    """The values the jobs give ``key`` (the command line's over the sweeper's params), as
    typed; None where neither sets it."""
    given = [f"{key}={sweeper_params[key]}"] if key in sweeper_params else []
    given += [o for o in task_overrides if override_key(o) == key]
    if not given:
        return None
    override = OverridesParser.create().parse_overrides([given[-1]])[0]
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def common_keys(task_overrides: Iterable[str], sweeper_params: Mapping[str, Any]) -> list[str]:
    """The command-line keys every job shares, in the order they were typed."""
    overrides = list(task_overrides)
    swept = swept_keys(overrides, sweeper_params)
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]
    return [k for k in dict.fromkeys(keys) if k not in swept]


#: Command-line keys a sweep may change when it is run again: those a finished job's own
#: check lets differ (how it resumes and shares the CPU, where its folder is), and Hydra's.
RERUN_FREE_KEYS = (*RESUME_FREE_KEYS, "hydra*")


def shared_settings(task_overrides: Iterable[str], swept: set[str]) -> dict[str, str]:
    """``key -> value`` of the overrides that are not swept and not free to change."""
    settings = {}
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.key_or_group
        if key in swept or _free_to_change(key):
            continue
        settings[key] = _value_text(override)
    return settings


def _free_to_change(key: str) -> bool:
    """Whether a sweep run again may give ``key`` another value (:data:`RERUN_FREE_KEYS`)."""
    return any(fnmatch.fnmatchcase(key, free) for free in RERUN_FREE_KEYS)


def named_free_settings(name: str) -> set[str]:
    """The ``key=value`` items of a job folder's name whose keys a rerun may change: swept
    (``data.num_workers=0,4``), they tell the jobs apart though their identity leaves them
    out (:func:`job_identity`)."""
    return {item for item in name.split(",") if _free_to_change(override_key(item))}


def _value_text(override: Override) -> str:
    """An override's value in Hydra's own spelling, as a sweep saves it in each job's
    ``overrides.yaml``: ``false`` and ``False``, ``1e-2`` and ``0.01`` are one setting, and
    so are ``1`` and ``1.0`` (a whole number written as a float is spelt as the integer),
    but in Lightning's ``trainer`` settings, where they differ (``limit_train_batches``: one
    batch, or all of them)."""
    try:
        value = override.value()
        whole = isinstance(value, float) and value.is_integer() and abs(value) < 2**53
        if whole and not override.key_or_group.startswith("trainer."):
            return str(int(value))
        return override.get_value_element_as_str()
    except HydraException:  # a value Hydra does not spell again: as typed
        return override.input_line.split("=", 1)[-1] if override.input_line else ""


def job_settings(overrides: Iterable[str]) -> dict[str, str]:
    """``key -> value`` of a job's overrides as they tell it from the other jobs of its
    sweep, run after run: in Hydra's own spelling, in the order given, without those a
    sweep run again may change (:data:`RERUN_FREE_KEYS`)."""
    settings = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if not _free_to_change(key):
            settings[key] = _value_text(override)
    return settings


def job_identity(overrides: Iterable[str]) -> list[str]:
    """A job's settings (:func:`job_settings`) as sorted ``key=value`` lines."""
    return sorted(f"{key}={value}" for key, value in job_settings(overrides).items())


#: The sweeper whose grid :func:`grid_jobs` makes: Hydra's own.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def grid_jobs(
    task_overrides: Iterable[str], sweeper_params: Mapping[str, Any]
) -> list[dict[str, str]] | None:
    """The settings (:func:`job_settings`) of every job of the grid Hydra's basic sweeper
    makes of the sweeper's params and the command line; None where it cannot be made here
    (a ``glob(...)`` sweep, which needs the config's groups)."""
    jobs = grid_job_overrides(task_overrides, sweeper_params)
    return None if jobs is None else [job_settings(job) for job in jobs]


def grid_job_overrides(
    task_overrides: Iterable[str], sweeper_params: Mapping[str, Any]
) -> list[list[str]] | None:
    """The overrides of every job of the grid Hydra's basic sweeper makes, ``key=value``
    lines; None where it cannot be made here (see :func:`grid_jobs`)."""
    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + list(task_overrides)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
        (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    except HydraException:
        return None
    return jobs


def job_overrides(
    task_overrides: Iterable[str], saved: Iterable[str], swept: set[str]
) -> list[str]:
    """A job's overrides as this sweep gives them: the command line's (``task_overrides``),
    its swept values those the job ran with (``saved``, its ``.hydra/overrides.yaml``)."""
    parser = OverridesParser.create()
    own = {o.key_or_group: o.input_line for o in parser.parse_overrides(list(saved))}
    own = {key: line for key, line in own.items() if key in swept}
    overrides = []
    for override in parser.parse_overrides(list(task_overrides)):
        key = override.key_or_group
        if key not in swept:
            overrides.append(override.input_line)
        elif key in own:
            overrides.append(own.pop(key))
    return [*overrides, *own.values()]  # a sweeper's own parameters after the command line's


def setting_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """``key: old -> new`` for every setting given differently (``-`` where not given)."""
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys if old.get(k) != new.get(k)
    ]


def exclude_override(exclude_keys: Iterable[str]) -> str:
    """The hydra override that sets ``override_dirname.exclude_keys`` to ``exclude_keys``."""
    quoted = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in exclude_keys)
    return f"{EXCLUDE_KEYS}=[{quoted}]"


class JobNamesCallback(Callback):
    """Hydra callback: leave the settings common to all jobs out of the job folder names,
    and keep in them those that tell the jobs apart, even a key the config leaves out of
    every name (``experiment=weakly_supervised,mixed_supervision``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = OmegaConf.to_container(config.hydra.overrides.task)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        configured = list(OmegaConf.select(config, EXCLUDE_KEYS, default=None) or [])
        kept = keys_telling_jobs_apart(config.hydra.sweep.dir, sweep_command(config))  # before
        kept |= swept_keys(task, params)
        excluded = [k for k in configured if k not in kept]
        common = [k for k in common_keys(task, params) if k not in excluded and k not in kept]
        if not common and excluded == configured:
            return
        log.debug("left out of the job names (the same in every job): %s", ", ".join(common))
        with read_write(config.hydra):
            config.hydra.overrides.hydra.append(exclude_override([*excluded, *common]))
