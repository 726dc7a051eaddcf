"""The OmegaConf resolvers the Hydra configs use, registered on import.

``${crackseg.run_dir:RESUME,DEFAULT}`` and ``${crackseg.hydra_subdir:OUTPUT_DIR,RESUME}`` (conf/
hydra/default.yaml) send a resumed run back into its own folder without rewriting its
``.hydra/``; ``${crackseg.job_log:OUTPUT_DIR,NAME}``, the job's log file, is what Hydra
resolves first once it has the job's folder, so the folder is claimed for this process
there, before the log file and ``.hydra/`` are written (crackseg.runs.ownership);
``${crackseg.job_folder:NUM,OVERRIDE_DIRNAME,SWEEP_DIR,OVERRIDES}`` names multirun job folders
(``crackseg.dirname``, its name part, is what folders of earlier sweeps recorded);
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
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
from collections.abc import Sequence
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

#: Longest job folder name part, in bytes; file systems refuse names over 255.
MAX_DIRNAME_BYTES = 200
#: What stands for ``/`` in a job folder's name (``ckpt_path=/a/b.ckpt`` names the folder
#: ``N_ckpt_path=_a_b.ckpt``): one folder right under the sweep's, never a tree of them nor
#: one outside it (``..``). Not Hydra's ``kv_sep`` (``=``) nor ``item_sep`` (``,``).
SLASH_STANDIN = "_"


def job_dirname(override_dirname: str, max_bytes: int = MAX_DIRNAME_BYTES) -> str:
    """Hydra's override_dirname as one path component: each ``/`` replaced, shortened with a
    hash suffix only if it would be too long.

    A long list of fixed overrides would otherwise make every job fail with "File name too
    long"; the full overrides stay in each job's .hydra/overrides.yaml. A name without ``/``
    is kept as it is, so a sweep run again finds its earlier job folders (:func:`job_folder`).
    """
    name = override_dirname.replace("/", SLASH_STANDIN)
    raw = name.encode()
    if len(raw) <= max_bytes:
        return name
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
    head = raw[: max_bytes - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def job_folder(
    num: int | str,
    override_dirname: str,
    sweep_dir: str | None = None,
    overrides: Sequence[str] | None = None,
) -> str:
    """A multirun job's folder: ``<num>_<overrides>``, or ``<num>`` when none tells it apart;
    one path component (:func:`job_dirname`), never ``.`` or ``..`` nor hidden.

    The number is the job's place in the grid, which changes when the grid grows
    (``seed=0,1,2`` to ``seed=0,1,2,3,4``): run again into ``sweep_dir``, a job takes the
    folder an earlier run of the sweep gave the same ``overrides`` (its
    ``.hydra/overrides.yaml``; compared as :func:`crackseg.sweep.job_names.job_identity`
    says, so a setting a rerun may change does not count), so it is skipped or resumed
    there, not trained a second time beside it. The name alone would not do: it leaves out
    keys such as ``experiment``, and the keys left out of names changed between versions (a
    swept ``experiment`` is in them now), so every job folder is looked at, those of the
    same name first.
    """
    from crackseg.sweep.job_names import job_identity, named_free_settings

    if sweep_dir:
        refuse_job_of_a_stopping_sweep(Path(sweep_dir))
    name = job_dirname(override_dirname)
    if sweep_dir and overrides is not None:
        wanted = job_identity(str(o) for o in overrides)
        free = named_free_settings(name)  # a swept model.compile=a,b tells jobs apart too
        jobs = [f for f in Path(sweep_dir).iterdir() if f.name.partition("_")[0].isdigit()]
        for folder in sorted(jobs, key=lambda f: (f.name.partition("_")[2] != name, f.name)):
            same_free = named_free_settings(folder.name.partition("_")[2]) == free
            if folder.is_dir() and same_free and _identity_of(folder) == wanted:
                return folder.name
    return f"{num}_{name}" if name else str(num)


#: The mark a stopping local parallel sweep leaves in its folder, holding its pid, so that
#: its queued jobs do not start (crackseg.runs.multirun.stop_side_by_side_jobs_together).
SWEEP_STOPPING = ".stopping"


def refuse_job_of_a_stopping_sweep(sweep_dir: Path) -> None:
    """A job that a local parallel sweep's worker takes from its queue while the sweep stops
    (crackseg.runs.multirun.stop_side_by_side_jobs_together) ends before Hydra makes its
    folder: it stays not started, as the jobs never taken."""
    try:
        stopping_pid = int((sweep_dir / SWEEP_STOPPING).read_text())
        os.kill(stopping_pid, 0)  # a mark left by a sweep killed before its end: none
    except (OSError, ValueError):
        return
    if stopping_pid != os.getpid():  # the sweep's own process names its folders on
        raise KeyboardInterrupt(f"{sweep_dir} is stopping: this job does not start")


#: The identities of the job folders read so far, by folder and the time its overrides were
#: written (a folder made again in this process is read again).
_identities: dict[tuple[Path, int], list[str]] = {}


def _identity_of(job: Path) -> list[str] | None:
    """The overrides an earlier job ran with, as :func:`job_folder` compares them; None
    where they cannot be read."""
    from crackseg.runs.hydra_run import saved_overrides
    from crackseg.sweep.job_names import job_identity

    try:
        key = (job, (job / ".hydra" / "overrides.yaml").stat().st_mtime_ns)
    except OSError:
        return None
    if key not in _identities:
        saved = saved_overrides(job)
        if saved is None:
            return None
        _identities[key] = job_identity(saved)
    return _identities[key]


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
    if _one_of_several_processes():
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
    atexit.register(_remove_if_empty, Path(folder).absolute(), made)
    _new_run_folders[default] = folder
    return folder


def forget_new_run_folders() -> None:
    """The command has ended: a next one in this process (a test, a notebook) gets a
    folder of its own from :func:`new_run_folder`."""
    _new_run_folders.clear()


def _one_of_several_processes() -> bool:
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
    from crackseg.runs.hydra_run import in_multirun
    from crackseg.runs.ownership import (
        held_by_another_process,
        refuse_files_of_others,
        refuse_used_folder,
    )
    from crackseg.runs.status import finished_status, holds_run

    if job_name is None or held_by_another_process(output_dir):
        return
    if job_name == "train":
        if not holds_run(Path(output_dir)):  # as crackseg.runs.resume.prepare_training_run
            refuse_files_of_others(Path(output_dir))
        return
    if skip_finished and in_multirun() and finished_status(Path(output_dir)) is not None:
        return
    refuse_used_folder(Path(output_dir))


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
    from crackseg.runs.ownership import claim_run_folder, used_by_another_command
    from crackseg.runs.resume import resumed_folder
    from crackseg.runs.status import holds_run

    if output_dir is None:
        return ".hydra"
    refuse_used_folder_before_lock(output_dir, job_name, skip_finished)
    claim_run_folder(output_dir)
    folder = Path(output_dir)
    # A training may start again where one failed; other commands leave any run's folder be.
    used = holds_run(folder) if job_name in (None, "train") else used_by_another_command(folder)
    keep = resumed_folder(resume) is not None or used or bool(earlier_outputs(folder))
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
