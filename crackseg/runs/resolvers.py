"""The OmegaConf resolvers the Hydra configs use, registered on import.

``${crackseg.run_dir:RESUME,DEFAULT}`` and ``${crackseg.hydra_subdir:OUTPUT_DIR,RESUME}`` (conf/
hydra/default.yaml) send a resumed run back into its own folder without rewriting its
``.hydra/``; ``${crackseg.job_log:OUTPUT_DIR,NAME}``, the job's log file, is what Hydra
resolves first once it has the job's folder, so the folder is claimed for this process
there, before the log file and ``.hydra/`` are written (crackseg.runs.folder);
``${crackseg.job_folder:NUM,OVERRIDE_DIRNAME}`` names multirun job folders
(``crackseg.dirname``, its name part, is what folders of earlier sweeps recorded);
``${crackseg.local_jobs:N}`` (conf/hydra/launcher/local_parallel.yaml) sizes a local
parallel sweep; ``${crackseg.any_segmented:NUM_SEGMENTED}`` turns gradient-flow adjustment
off for fully weak runs in conf/sweep/cfd_num_segmented.yaml. Every entry point
imports this module through crackseg.runs.lifecycle, and Hydra's launcher workers through the sweep
summary callback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

#: Longest job folder name part, in bytes; file systems refuse names over 255.
MAX_DIRNAME_BYTES = 200


def job_dirname(override_dirname: str, max_bytes: int = MAX_DIRNAME_BYTES) -> str:
    """Hydra's override_dirname, shortened with a hash suffix only if it would be too long.

    A long list of fixed overrides would otherwise make every job fail with "File name too
    long"; the full overrides stay in each job's .hydra/overrides.yaml.
    """
    raw = override_dirname.encode()
    if len(raw) <= max_bytes:
        return override_dirname
    digest = hashlib.sha1(raw).hexdigest()[:8]
    head = raw[: max_bytes - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def job_folder(num: int | str, override_dirname: str) -> str:
    """A multirun job's folder: ``<num>_<overrides>``, or ``<num>`` when none tells it apart."""
    name = job_dirname(override_dirname)
    return f"{num}_{name}" if name else str(num)


def _resumes_folder(resume: object) -> bool:
    return resume not in (None, "auto", "")


def run_dir(resume: object, default: str) -> str:
    """The run folder: the one named by ``resume=RUN_DIR``, else a new one.

    Hydra creates the folder right after; a ``resume=`` naming no run is refused first.
    """
    from crackseg.runs.folder import check_resume_folder

    if not _resumes_folder(resume):
        return default
    check_resume_folder(Path(str(resume)))
    return str(resume)


def job_log(output_dir: str, job_name: str) -> str:
    """The job's log file, in a folder this process holds (refused if another one does).

    Hydra creates the job's folder, then sets up logging (which opens this file), then saves
    ``.hydra/``: claiming here is the earliest point that knows the folder, whether it came
    from ``hydra.run.dir`` (typed or not) or from ``hydra.sweep.dir``/``subdir``.
    """
    from crackseg.runs.folder import claim_run_folder

    refuse_a_used_folder(output_dir, job_name)
    claim_run_folder(output_dir)
    return str(Path(output_dir) / f"{job_name}.log")


def refuse_a_used_folder(output_dir: str, job_name: str | None) -> None:
    """An evaluation, prediction or export refuses a folder holding a run or a prediction
    before it locks the folder, so the refused command creates nothing there (not even the
    lock file). One that another live process holds is refused by the lock, naming it."""
    from crackseg.runs.folder import held_by_another_process, refuse_used_folder

    if job_name in (None, "train") or held_by_another_process(output_dir):
        return
    refuse_used_folder(Path(output_dir))
    if job_name == "predict":
        from crackseg.deploy.predict_folder import refuse_earlier_predictions

        refuse_earlier_predictions(Path(output_dir))


def hydra_subdir(output_dir: str, resume: object, job_name: str | None = None) -> str | None:
    """Where Hydra saves the composed config: nowhere if the folder already holds a run or
    another prediction's outputs, or if ``resume=RUN_DIR`` names it.

    That run's ``.hydra/`` is the config it was started with: resuming it (or starting it
    again) reads it, and a command refused for pointing at the folder must not have replaced
    it first. The folder is claimed here too, for a job logging config without
    :func:`job_log`.
    """
    from crackseg.deploy.outputs import earlier_predictions
    from crackseg.runs.folder import claim_run_folder, holds_run, used_by_another_command

    refuse_a_used_folder(output_dir, job_name)
    claim_run_folder(output_dir)
    folder = Path(output_dir)
    # A training may start again where one failed; other commands leave any run's folder be.
    used = holds_run(folder) if job_name in (None, "train") else used_by_another_command(folder)
    keep = _resumes_folder(resume) or used or bool(earlier_predictions(folder))
    return None if keep else ".hydra"


def _local_jobs(default: int) -> int:
    from crackseg.runs.gpus import local_jobs

    return local_jobs(default)


def any_segmented(num_segmented: int | None) -> bool:
    """Whether a run keeps any pixel mask (``data.num_segmented`` not 0; null keeps all)."""
    return num_segmented is None or int(num_segmented) > 0


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
    }
    for name, (function, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)


register_resolvers()
