"""How a training run starts or continues in its folder.

A folder that holds a run (crackseg.runs.status) is written into again only to resume that
same run: ``resume=RUN_DIR``, or ``resume=auto`` (what every job of a multirun does, so
re-running a sweep, or a requeued cluster job, continues its unfinished jobs from their
checkpoints), and only with the settings it was started with. A run that failed before
saving a checkpoint (a config or data error) holds nothing to resume: its folder may be
started again, and what the earlier attempt wrote there (but its log) is removed first.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from crackseg.atomic import remove_partial_writes
from crackseg.errors import CracksegError, DataError, RunFolderError
from crackseg.models.checkpoint import checkpoint_run_config, load_checkpoint_file
from crackseg.run_files import (
    CHECKPOINT_DIR,
    CSV_LOG_DIR,
    RUN_OUTPUTS,
    STATUS_FILE,
    SWEEP_FILE,
)
from crackseg.runs.config_changes import PATH_KEYS, config_differences
from crackseg.runs.hardware import (
    FLOAT16,
    check_accelerator,
    check_deterministic,
    resolve_precision,
    trains_float16,
)
from crackseg.runs.hydra_run import (
    OTHER_COMMANDS,
    in_multirun,
    override_key,
    saved_hydra_file,
    started_by,
    typed_overrides,
)
from crackseg.runs.ownership import accept_run_folder, is_rank_zero, refuse_files_of_others
from crackseg.runs.provenance import write_run_info
from crackseg.runs.status import (
    finished_status,
    holds_run,
    holds_sweep,
    resume_checkpoint,
    write_status,
)
from crackseg.setting_rules import as_override

if TYPE_CHECKING:
    from crackseg.data.datamodule import CrackDataModule

log = logging.getLogger(__name__)


def resumed_folder(resume: object) -> Path | None:
    """The run folder ``resume=RUN_DIR`` names; None for a new run or ``resume=auto``. An
    empty one (an unset shell variable) is refused, not read as the current folder."""
    if resume in (None, "auto"):
        return None
    if str(resume) == "":
        raise RunFolderError(
            "resume= is empty: name the run folder (resume=RUN_DIR), or leave it out"
        )
    if isinstance(resume, bool) or not isinstance(resume, str | int):  # Hydra typed it
        typed = str(resume).lower() if isinstance(resume, bool) else resume
        raise RunFolderError(f"resume= takes a run folder (resume=RUN_DIR) or auto, not {typed}")
    return Path(str(resume))  # (a folder named by digits alone: Hydra's int)


def check_resume_folder(run_dir: Path) -> None:
    """``resume=RUN_DIR`` must name a run's folder; checked before anything is written."""
    if not run_dir.exists():
        raise RunFolderError(f"resume={run_dir}: no such folder")
    if not run_dir.is_dir():
        if run_dir.suffix == ".ckpt":  # in checkpoints/ of its run, or (SLURM's) in the run
            folder = run_dir.absolute().parent
            run = as_override("resume", folder.parent if folder.name == CHECKPOINT_DIR else folder)
            raise RunFolderError(
                f"resume={run_dir} is a checkpoint: resume= takes its run's folder ({run})"
            )
        raise RunFolderError(f"resume={run_dir} is not a folder")
    if holds_sweep(run_dir):
        raise RunFolderError(
            f"resume={run_dir} holds a sweep ({SWEEP_FILE}): run the sweep's command again "
            f"with hydra.sweep.dir={run_dir}, or resume one of its jobs' folders"
        )
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise RunFolderError(f"resume={run_dir} is not a run folder (no .hydra/config.yaml)")
    command = started_by(run_dir)
    if command in OTHER_COMMANDS:
        raise RunFolderError(
            f"resume={run_dir} holds a crackseg-{command} run, not a training: nothing to resume"
        )


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


def decide_fresh_or_resumed(
    cfg: DictConfig, multirun: bool, task_overrides: list[str]
) -> tuple[DictConfig, Path | None]:
    """Whether the run starts afresh or continues, decided before anything is written: the
    config to train with and the checkpoint to continue from (None: a fresh start).

    Refuses a folder that holds another run, a finished run,
    and a resumption with changed settings. The other processes of a multi-process run
    (started by rank 0 into its folder) follow rank 0's decision without checking again.
    """
    output_dir = Path(cfg.paths.output_dir)
    resume = cfg.get("resume")
    resumed = resumed_folder(resume)
    if not is_rank_zero():
        if resumed is not None:
            checkpoint = resume_checkpoint(output_dir)
            return _started_config(output_dir, checkpoint), checkpoint
        return cfg, resume_checkpoint(output_dir) if resume == "auto" or multirun else None
    if resumed is not None:
        if multirun:
            check_sweep_resume(resume)
        return _resume_run_dir(resumed, output_dir, task_overrides)
    if not holds_run(output_dir):
        refuse_files_of_others(output_dir)
        return cfg, None
    if resume != "auto" and not multirun:
        _refuse_a_folder_holding_a_run(output_dir)
    return _continue_in_folder(cfg, output_dir)


def _refuse_a_folder_holding_a_run(output_dir: Path) -> None:
    """A single run typed into a folder that holds one (not ``resume=auto``) is refused,
    with what it holds."""
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


def _continue_in_folder(cfg: DictConfig, output_dir: Path) -> tuple[DictConfig, Path | None]:
    """A sweep's job (or ``resume=auto``) in a folder holding its run from before: it goes on
    from the run's newest checkpoint where the run did not finish and ran with the same
    settings (refused otherwise), or starts again where it saved no checkpoint."""
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
    try:
        return _started_config(run_dir, checkpoint), checkpoint
    except CracksegError:  # its checkpoint cannot be read: the run's failure, in its status
        accept_run_folder(output_dir)
        raise


def _started_config(run_dir: Path, checkpoint: Path | None) -> DictConfig:
    """The config a run was started with (its ``.hydra/``), marked as resuming it, its
    relative paths anchored in the folder it was started from, so that it resumes from any.
    With a ``checkpoint``, in the precision it trained in: ``trainer.precision: auto`` made
    concrete anew on another machine (one without bf16) would go on in another."""
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved.resume = str(run_dir)
    trained = checkpoint_run_config(checkpoint) if checkpoint is not None else None
    precision = OmegaConf.select(trained, "trainer.precision", default=None) if trained else None
    if precision is not None and "trainer" in saved:
        saved.trainer.precision = precision
        log.info("precision: %s, as the run trained so far", precision)
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


def recorded_run_config(cfg: DictConfig) -> str:
    """The config a checkpoint records of its run (YAML, resolved), its relative paths made
    absolute from the folder the run was started in, so that crackseg-eval and -predict run
    from any folder know the data it trained on (and its held-out test split)."""
    recorded = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    anchor_relative_paths(recorded, Path.cwd())
    return OmegaConf.to_yaml(recorded)


def resolve_machine_settings(cfg: DictConfig) -> None:
    """Settings that depend on the machine (``trainer.precision: auto``), made concrete
    before anything compares, records or reports the config."""
    if "trainer" in cfg:
        check_accelerator(cfg.trainer.accelerator, cfg.trainer.get("devices", 1))
        check_deterministic(cfg)
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)


def start_training_run(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """The run takes its folder: the config to train with and the checkpoint to continue
    from (None: a fresh start, whose folder then says it is running).

    A stopped run continues from its newest checkpoint (``resume=``); nothing is read from
    the data yet, and Lightning is not needed yet.
    """
    multirun, overrides = in_multirun(), typed_overrides()
    resumed = resumed_folder(cfg.get("resume")) is not None
    if not resumed:  # (resume=RUN_DIR: the run's own config, read from its folder below)
        resolve_machine_settings(cfg)
    cfg, checkpoint = decide_fresh_or_resumed(cfg, multirun, overrides)
    accept_run_folder(cfg.paths.output_dir)
    if checkpoint is None and is_rank_zero():
        remove_earlier_attempt(Path(cfg.paths.output_dir))
        # At once, not after the seconds of checks and imports before record_start: a run
        # killed in them (kill -9) still holds its folder, which no other run then takes.
        write_status(Path(cfg.paths.output_dir), "running")
    _refuse_float16_resumed_without_gpu(cfg)
    if resumed:
        resolve_machine_settings(cfg)  # the run's own config, as its folder holds it
    return cfg, checkpoint


def remove_earlier_attempt(output_dir: Path) -> None:
    """A run started again in its folder (one whose earlier attempt left no checkpoint to
    continue from) starts in a folder holding none of that attempt's outputs, which would
    be taken for its own: a best checkpoint saved by a validation inside the first epoch,
    TensorBoard events, a history. The earlier attempt's log, and its error in it, stay."""
    if not (output_dir / STATUS_FILE).exists():
        return  # a new folder (one holding a run's outputs but no status was refused)
    removed = [name for name in (*RUN_OUTPUTS, CSV_LOG_DIR) if (output_dir / name).exists()]
    for name in removed:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        log.info("%s: removed what its earlier attempt wrote (%s)", output_dir, ", ".join(removed))


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


def check_resumed_data(datamodule: CrackDataModule, checkpoint: Path) -> None:
    """The data a run resumes on must split as it did when the run started: its split is
    made now (Lightning's setup then keeps it) and checked against the one the checkpoint
    recorded (:meth:`CrackDataModule.load_state_dict`, which Lightning calls again)."""
    if is_rank_zero():  # data a run makes itself (synthetic, downloaded), made again if gone
        datamodule.prepare_data()
    if not Path(datamodule.root).expanduser().is_dir():
        raise DataError(
            f"the run's data root {datamodule.root} does not exist: put the data back there "
            "to resume the run"
        )
    datamodule.setup("fit")
    # mapped, not read: the weights are Lightning's to load
    state = load_checkpoint_file(checkpoint, mmap=True).get(type(datamodule).__qualname__)
    if state:
        datamodule.load_state_dict(state)
