"""A multirun job's folder: its name, ``<num>_<the settings that tell it apart>`` (Hydra's
``override_dirname``, one path component however long), and, for a sweep run again into its
folder, the folder an earlier run gave the same job; a job a stopping sweep's worker takes
from its queue does not start. ``${crackseg.job_folder:...}`` in conf/hydra/default.yaml
(registered by crackseg.runs.resolvers)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

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
    ``.hydra/overrides.yaml``; compared as :func:`crackseg.runs.job_names.job_identity`
    says, so a setting a rerun may change does not count), so it is skipped or resumed
    there, not trained a second time beside it. The name alone would not do: it leaves out
    keys such as ``experiment``, and the keys left out of names changed between versions (a
    swept ``experiment`` is in them now), so every job folder is looked at, those of the
    same name first.
    """
    from crackseg.runs.job_names import job_identity, named_free_settings

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
    from crackseg.runs.job_names import job_identity

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
