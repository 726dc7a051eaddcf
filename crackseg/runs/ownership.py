"""Who may write into a run folder.

One live process at a time writes into a run folder: it holds a lock on ``.lock`` there
(see :func:`claim_run_folder`), taken before Hydra writes anything into the folder.
A folder holds a run once training has started in it (``status.json`` or a checkpoint:
crackseg.runs.status). An evaluation, prediction or export writes only into a folder of
its own (:func:`accept_folder_of_its_own`); a training writes into one holding a run only
to resume it (crackseg.runs.resume).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

from crackseg.errors import RunFolderError
from crackseg.run_files import LOCK_FILE, RUN_OUTPUTS, STATUS_FILE, SWEEP_FILE
from crackseg.runs.hydra_run import OTHER_COMMANDS, started_by
from crackseg.runs.job_log import accept_job_logs
from crackseg.runs.status import holds_only_a_refusal, holds_run, holds_sweep, read_status

#: Where Lightning reads a process's rank from until its Trainer sets it, first set first
#: (lightning_fabric.utilities.rank_zero).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's rank in its run: Lightning's once Lightning is loaded (its Trainer sets
    it), before that the one Lightning reads from the environment, so that a command refused
    before training never waits for Lightning's import."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(rank_zero.rank_zero_only, "rank", None) if rank_zero is not None else None
    if rank is None:
        rank = next((int(os.environ[k]) for k in RANK_VARIABLES if k in os.environ), 0)
    return int(rank)


def is_rank_zero() -> bool:
    """Whether this is the first process of a run (:func:`process_rank`)."""
    return process_rank() == 0


#: The run folders this process holds: absolute path -> descriptor of the locked file.
_held: dict[str, int] = {}
#: Of those, the folders the command has accepted to write into (:func:`accept_run_folder`),
#: and those whose lock file holds this process's name.
_accepted: set[str] = set()
_named: set[str] = set()


def claim_run_folder(folder: str | Path) -> None:
    """Make this process the only one writing into ``folder`` until it releases it or ends.

    A lock on ``folder/.lock`` (:func:`lock_file`): a killed run never leaves its folder
    locked, even while its data loader workers are still ending. The holder writes its
    pid and host into the file, which a refused process names: at once in a folder that
    holds no run yet, else once it accepts the folder (:func:`accept_run_folder`), so a
    command refused there leaves even that file as it was. Only rank 0 of a
    multi-process run claims the folder; the other ranks write where rank 0 holds it.
    Claiming a folder this process holds already does nothing.
    """
    if not is_rank_zero():
        return
    key = os.path.abspath(folder)
    if key in _held:
        return
    Path(key).mkdir(parents=True, exist_ok=True)
    holder = ""
    for _ in range(20):  # a holder that has just taken the lock writes its name right after
        fd = lock_file(Path(key) / LOCK_FILE, 0o666)
        if fd is not None:
            _held[key] = fd
            if not used_by_another_command(Path(key)):
                _name_holder(key)
            return
        holder = (Path(key) / LOCK_FILE).read_text(errors="replace").strip()
        if holder:
            break
        time.sleep(0.05)
    raise RunFolderError(f"{key} is in use by {_describe_holder(holder)}; wait for it to end")


def _name_holder(key: str) -> None:
    """Write this process's pid and host into the lock file of a folder it holds."""
    fd = _held.get(key)
    if fd is None or key in _named:
        return
    me = json.dumps({"pid": os.getpid(), "host": platform.node()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me}\n".encode(), 0)
    _named.add(key)


def lock_file(path: Path, mode: int = 0o644, create: bool = True) -> int | None:
    """Open ``path`` (creating it unless ``create`` is false) and lock it for this process
    without waiting: the open descriptor (closing it drops the lock), or None when another
    process holds the lock.

    A POSIX record lock (``lockf``), not ``flock``: the kernel drops it when the process
    ends however it ends, and child processes (data loader workers) do not inherit it, so
    a killed process's lock is free at once although its workers may live on for a while.
    Record locks belong to the process: lock each file once per process.
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), mode)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return None
        raise
    return fd


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"another process (pid {holder['pid']} on host {holder['host']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def held_by_another_process(folder: str | Path) -> bool:
    """Whether a live process other than this one holds ``folder``; creates nothing."""
    key = os.path.abspath(folder)
    if key in _held:
        return False
    try:
        fd = lock_file(Path(key) / LOCK_FILE, create=False)
    except OSError:  # no lock file (or none this process may open): nobody holds it
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def accept_run_folder(folder: str | Path) -> None:
    """The command has checked its folder and works there: from now on it writes its log,
    its status and its outputs there. Before, a refused command writes nothing there."""
    _accepted.add(os.path.abspath(folder))
    _name_holder(os.path.abspath(folder))
    accept_job_logs(folder)


def is_accepted(folder: str | Path) -> bool:
    return os.path.abspath(folder) in _accepted


def release_run_folder(folder: str | Path) -> None:
    """Let another process write into ``folder`` (emptying the holder's name first)."""
    key = os.path.abspath(folder)
    _accepted.discard(key)
    fd = _held.pop(key, None)
    if fd is not None:
        if key in _named:
            _named.discard(key)
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the lock


def unlock_refused_folder(folder: str | Path) -> None:
    """A command refused its folder after locking it (``resume=RUN_DIR`` with another
    ``hydra.run.dir``): released, and the lock file removed where it is all the folder
    holds, so the refusal leaves nothing there."""
    if os.path.abspath(folder) not in _held:  # another process's lock, or none
        return
    lock = Path(folder) / LOCK_FILE
    with contextlib.suppress(OSError):
        if [path.name for path in Path(folder).iterdir()] == [LOCK_FILE]:
            lock.unlink()  # while still held
    release_run_folder(folder)


def unlock_every_folder() -> None:
    """A command refused before its run (a resolver's refusal, Hydra's): every folder it
    locked released as :func:`unlock_refused_folder` releases one."""
    for key in list(_held):
        unlock_refused_folder(key)


def used_by_another_command(folder: Path) -> bool:
    """Whether ``folder`` holds a run, or any run's status (a failed one's too): an
    evaluation, prediction or export never writes there."""
    return holds_run(folder) or (Path(folder) / STATUS_FILE).exists()


def refuse_a_sweeps_folder(folder: Path) -> None:
    """A run goes into a folder of its own, not a sweep's (beside its jobs, a run would count
    as one of them)."""
    if holds_sweep(folder):
        raise RunFolderError(
            f"{folder} holds a sweep ({SWEEP_FILE}); a run goes into a folder of its own: "
            "choose another hydra.run.dir"
        )


def refuse_files_of_others(folder: Path) -> None:
    """Refuse a folder that no crackseg command wrote (it has no status) holding files by
    the names a run writes: a folder of the user's given as ``hydra.run.dir``, whose
    ``report.md`` or ``metrics.json`` the run would overwrite."""
    folder = Path(folder)
    refuse_a_sweeps_folder(folder)
    if (folder / STATUS_FILE).exists():
        return
    if found := [name for name in RUN_OUTPUTS if (folder / name).exists()]:
        raise RunFolderError(
            f"{folder} holds files that are not a run's, which it would overwrite "
            f"({', '.join(found)}); choose another hydra.run.dir"
        )


def is_a_retry(folder: Path, command: str) -> bool:
    """Whether ``command`` starts again in a folder where it was refused before its work
    (a setting mistyped): the folder holds that refusal's record alone, which it replaces."""
    return holds_only_a_refusal(folder) and started_by(folder) == command


def refuse_used_folder(folder: Path, command: str) -> None:
    """Evaluations, predictions and exports only ever write into a folder of their own: not
    one holding a run, nor another prediction's outputs (one killed before it wrote its
    status), which they would overwrite or mix with theirs. A folder where the same
    ``command`` was refused before its work (a setting mistyped) may be used again."""
    from crackseg.deploy.outputs import refuse_earlier_outputs

    if used_by_another_command(folder) and not is_a_retry(folder, command):
        status = read_status(folder) or {}
        other = started_by(folder)
        held = f"a run of crackseg-{other}" if other in OTHER_COMMANDS else "a run"
        if status.get("status") == "failed" and not holds_run(folder):
            held = f"a command that failed ({status.get('error', 'see its log')})"
        raise RunFolderError(f"{folder} already holds {held}; choose another hydra.run.dir")
    refuse_files_of_others(folder)
    refuse_earlier_outputs(folder)


def accept_folder_of_its_own(folder: str | Path, command: str) -> None:
    """An evaluation's, prediction's or export's start (``command``: eval, predict, export):
    its folder refused where it holds a run or another prediction
    (:func:`refuse_used_folder`), else accepted."""
    refuse_used_folder(Path(folder), command)
    accept_run_folder(folder)
