"""The OmegaConf resolvers the Hydra configs use, registered on import.

``${crackseg.run_dir:RESUME,DEFAULT}`` and ``${crackseg.hydra_subdir:OUTPUT_DIR,RESUME}`` (conf/
hydra/default.yaml) send a resumed run back into its own folder without rewriting its
``.hydra/``; ``${crackseg.job_log:OUTPUT_DIR,NAME}``, the job's log file, is what Hydra
resolves first once it has the job's folder, so the folder is claimed for this process
there, before the log file and ``.hydra/`` are written (crackseg.runs.ownership);
``${crackseg.job_folder:NUM,OVERRIDE_DIRNAME,SWEEP_DIR,OVERRIDES}`` names multirun job folders
(crackseg.runs.job_folders; ``crackseg.dirname``, its name part, is what folders of earlier
sweeps recorded);
``${crackseg.local_jobs:N}`` (conf/hydra/launcher/local_parallel.yaml) sizes a local
parallel sweep. The settings of the paper's runs that change with another setting
(docs/method.md §10; the rules in crackseg.paper_settings):
``${crackseg.any_segmented:N,RANKING}`` (dynamic balance off in weak runs),
``${crackseg.weak_adjustment:N,CHOICE,RANKING}`` (gradient-flow adjustment: on everywhere
as published, or off in weak runs with ``loss.weak_gradient_adjustment=off``),
``${crackseg.if_weak:N,RANKING,WEAK,OTHERWISE}`` (KSDD's learning rate and δ at N = 0),
``${crackseg.severstal_epochs:TRAINING_POSITIVES}``, ``${crackseg.table4:ROW,SWITCH}`` and
``${crackseg.table4_segmented:ROW,MIXED_N}`` (the rows of the paper's Table 4), and
``${crackseg.if_equal:A,B,THEN,OTHERWISE}``. Every entry point imports this module through
crackseg.runs.lifecycle, and Hydra's launcher workers through the sweep summary callback.

The run folder ``run_dir`` makes for a new command is removed at exit where it holds
nothing, or only the record of a refusal (:func:`remove_refused_folder_at_exit`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

from omegaconf import OmegaConf

from crackseg.paper_settings import (
    any_segmented,
    if_weak,
    severstal_epochs,
    table4,
    table4_segmented,
    weak_adjustment,
)
from crackseg.runs.job_folders import job_dirname, job_folder


def run_dir(resume: object, default: str) -> str:
    """The run folder: the one named by ``resume=RUN_DIR``, else a new one
    (:func:`new_run_folder`). A ``resume=`` naming no run is refused first."""
    from crackseg.runs.resume import check_resume_folder, resumed_folder

    if (folder := resumed_folder(resume)) is None:
        return new_run_folder(default)
    check_resume_folder(folder)
    return str(resume)


#: The folder :func:`new_run_folder` made for each default name, for the command running in
#: this process (:func:`forget_new_run_folders` when it ends).
_new_run_folders: dict[str, str] = {}


def new_run_folder(default: str) -> str:
    """``default`` (``outputs/runs/NAME/<time to the second>``), made here; where another
    command made it first (two started in the same second, by a script or in two
    terminals), the first of ``default_2``, ``default_3``, ... that none has made. Made with
    an exclusive ``mkdir``, so two commands never share one; the same for every call while
    the command runs (Hydra resolves the name more than once); removed at exit if nothing
    was written into it (``--cfg all --resolve`` prints the name and runs nothing).

    The processes of one run started by a launcher (torchrun, ``srun --ntasks=N``) take
    ``default`` as it is, so that all of them name the same folder."""
    if default in _new_run_folders:
        return _new_run_folders[default]
    if one_of_several_processes():
        return default
    made = Path(default).absolute()  # the first folder of the path this call makes
    while not made.parent.exists():
        made = made.parent
    folder, number = default, 1
    while True:
        try:
            Path(folder).mkdir(parents=True)
        except FileExistsError:
            number += 1
            folder = f"{default}_{number}"
            continue
        except OSError:  # not writable: Hydra's own mkdir says so, naming the folder
            return default
        break
    atexit.register(_remove_unused, Path(folder).absolute(), made)
    _new_run_folders[default] = folder
    return folder


#: The folders :func:`new_run_folder` made whose single command was refused with one line.
_refused_folders: set[Path] = set()


def remove_refused_folder_at_exit(folder: str | Path) -> None:
    """A single command refused with one line (a setting, a missing file) in a folder
    :func:`new_run_folder` named for it: at exit the folder goes, with the record of the
    refusal (its config, log and status), as after Hydra's own refusals, which come before
    any folder. A folder holding more (a training's checkpoints) stays, and so does one
    the user named (``hydra.run.dir``), which the next command may use again."""
    folder = Path(folder).absolute()
    if folder in {Path(made).absolute() for made in _new_run_folders.values()}:
        _refused_folders.add(folder)


def _remove_unused(folder: Path, made: Path) -> None:
    """At exit: ``folder`` where it holds nothing, or only a refusal's record."""
    if folder in _refused_folders:
        _remove_refusal_record(folder)
    _remove_if_empty(folder, made)


def _remove_refusal_record(folder: Path) -> None:
    """The files a command refused before its work left in ``folder``, where it left no other:
    Hydra's ``.hydra/`` (its three files), the job's log, ``status.json`` and the lock."""
    from crackseg.runs.status import holds_only_a_record

    if not holds_only_a_record(folder):
        return
    with contextlib.suppress(OSError):
        hydra = folder / ".hydra"
        if hydra.is_dir():
            for path in hydra.iterdir():
                path.unlink()
            hydra.rmdir()
        for path in folder.iterdir():
            path.unlink()


def forget_new_run_folders() -> None:
    """The command has ended: a next one in this process (a test, a notebook) gets a
    folder of its own from :func:`new_run_folder`."""
    _new_run_folders.clear()


def one_of_several_processes() -> bool:
    """Whether a launcher started this command as one process of several of one run."""
    from crackseg.runs.ownership import is_rank_zero

    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        with contextlib.suppress(ValueError):
            if int(os.environ.get(key, "1")) > 1:
                return True
    return not is_rank_zero()


def _remove_if_empty(folder: Path, made: Path) -> None:
    """``folder``, and the folders above it up to ``made``, where they hold nothing."""
    with contextlib.suppress(OSError):
        while True:
            folder.rmdir()
            if folder == made or made not in folder.parents:
                return
            folder = folder.parent


def job_log(output_dir: str | None, job_name: str, skip_finished: bool = False) -> str:
    """The job's log file, in a folder this process holds (refused if another one does).

    Hydra creates the job's folder, then sets up logging (which opens this file), then saves
    ``.hydra/``: claiming here is the earliest point that knows the folder, whether it came
    from ``hydra.run.dir`` (typed or not) or from ``hydra.sweep.dir``/``subdir``. Without a
    job (``--cfg all --resolve`` prints the config) there is no folder: the file's name alone.
    """
    from crackseg.runs.ownership import claim_run_folder

    if output_dir is None:
        return f"{job_name}.log"
    refuse_used_folder_before_lock(output_dir, job_name, skip_finished)
    claim_run_folder(output_dir)
    return str(Path(output_dir) / f"{job_name}.log")


def refuse_used_folder_before_lock(
    output_dir: str, job_name: str | None, skip_finished: bool = False
) -> None:
    """An evaluation, prediction or export refuses a folder holding a run or a prediction
    before it locks the folder, so the refused command creates nothing there (not even the
    lock file); a training, a folder of the user's holding files by the names a run writes
    (which a later ``resume=`` would have taken for a run's). One that another live process
    holds is refused by the lock, naming it. A finished job of a sweep run again with
    ``skip_finished=true`` is left to crackseg.runs.lifecycle.run_task, which skips it."""
    from crackseg.errors import RunFolderError
    from crackseg.runs.hydra_run import OTHER_COMMANDS, in_multirun, started_by
    from crackseg.runs.ownership import (
        held_by_another_process,
        refuse_files_of_others,
        refuse_used_folder,
    )
    from crackseg.runs.status import finished_status, holds_run

    if job_name is None or held_by_another_process(output_dir):
        return
    if job_name == "train":
        if not holds_run(Path(output_dir)):  # as crackseg.runs.resume.decide_fresh_or_resumed
            refuse_files_of_others(Path(output_dir))
            # one that failed may be started again; another command's is not a training's
            # (Hydra has not replaced its .hydra/ yet, which names the command)
            if (command := started_by(Path(output_dir))) in OTHER_COMMANDS:
                raise RunFolderError(
                    f"{output_dir} holds a run of crackseg-{command}; choose another hydra.run.dir"
                )
        return
    if skip_finished and in_multirun() and finished_status(Path(output_dir)) is not None:
        return
    refuse_used_folder(Path(output_dir), job_name)


def hydra_subdir(
    output_dir: str | None,
    resume: object,
    job_name: str | None = None,
    skip_finished: bool = False,
) -> str | None:
    """Where Hydra saves the composed config: nowhere if the folder already holds a run or
    another prediction's outputs, or if ``resume=RUN_DIR`` names it.

    That run's ``.hydra/`` is the config it was started with: resuming it (or starting it
    again) reads it, and a command refused for pointing at the folder must not have replaced
    it first. The folder is claimed here too, for a job logging config without
    :func:`job_log`. Without a job (the config printed) there is no folder to look into: what
    a new run gets.
    """
    from crackseg.deploy.outputs import earlier_outputs
    from crackseg.runs.ownership import claim_run_folder, is_a_retry, used_by_another_command
    from crackseg.runs.resume import resumed_folder
    from crackseg.runs.status import holds_run

    if output_dir is None:
        return ".hydra"
    resumed = resumed_folder(resume) is not None  # (a resume= of nothing refused unlocked)
    refuse_used_folder_before_lock(output_dir, job_name, skip_finished)
    claim_run_folder(output_dir)
    folder = Path(output_dir)
    # A training may start again where one failed; other commands leave any run's folder be,
    # but for one where the same command was refused before its work (its record replaced).
    if job_name in (None, "train"):
        used = holds_run(folder)
    else:
        used = used_by_another_command(folder) and not is_a_retry(folder, job_name)
    keep = resumed or used or bool(earlier_outputs(folder))
    return None if keep else ".hydra"


def _local_jobs(default: int) -> int:
    from crackseg.runs.gpus import local_jobs

    return local_jobs(default)


def if_equal(value: object, other: object, then: object, otherwise: object) -> object:
    """``then`` where ``value`` equals ``other``, else ``otherwise``."""
    return then if value == other else otherwise


def register_resolvers() -> None:
    """Register once per process (Hydra resolves job configs in launcher workers too)."""
    resolvers = {
        "crackseg.local_jobs": (_local_jobs, True),
        "crackseg.dirname": (job_dirname, False),
        "crackseg.job_folder": (job_folder, False),
        "crackseg.run_dir": (run_dir, False),
        "crackseg.hydra_subdir": (hydra_subdir, False),
        "crackseg.job_log": (job_log, False),
        "crackseg.any_segmented": (any_segmented, False),
        "crackseg.if_weak": (if_weak, False),
        "crackseg.if_equal": (if_equal, False),
        "crackseg.weak_adjustment": (weak_adjustment, False),
        "crackseg.severstal_epochs": (severstal_epochs, False),
        "crackseg.table4": (table4, False),
        "crackseg.table4_segmented": (table4_segmented, False),
    }
    for name, (function, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)


register_resolvers()
