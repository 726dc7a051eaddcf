"""Writes that never leave a truncated file where a good one was.

Everything a run folder holds is written to a temporary file beside its destination,
flushed to disk and renamed over it: a crash, a kill or a full disk mid-write leaves the
previous file (or none), never half of one.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import io
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

#: In the name of a temporary file; what a kill mid-write leaves is removed on resuming.
PARTIAL = ".partial-"
#: The start of every temporary file's name: short, so that beside any file name that fits
#: the file system (255 bytes) there is room for the temporary one.
TEMPORARY_PREFIX = f".write{PARTIAL}"
#: The longest suffix (in UTF-8 bytes) a temporary name keeps; a longer one is no format.
MAX_TEMPORARY_SUFFIX_BYTES = 16


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed half-way left under ``folder``."""
    leftovers = [p for p in Path(folder).rglob(f".*{PARTIAL}*") if p.is_file()]
    for path in leftovers:
        path.unlink()
    return leftovers


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` if the block completes.

    The temporary name is short whatever ``path``'s length: ``.write.partial-``, 8 random
    characters and the suffix (one of up to 16 bytes), so writers that pick a format by
    extension (matplotlib) work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if len(path.suffix.encode()) <= MAX_TEMPORARY_SUFFIX_BYTES else ""
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a plain open() would not
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        # A write that fails after its open (a full disk) names no file, others name the
        # temporary one: name the file the user knows instead.
        named = error.filename is None or Path(error.filename).name.startswith(TEMPORARY_PREFIX)
        if error.errno is None or not named:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def folder_destination(dst: str | Path) -> Path:
    """The folder a destination names: a symbolic link's target, which a folder built
    beside it (:func:`folder_built_beside`) can be renamed onto; a link cannot."""
    path = Path(dst).expanduser()
    return path.resolve() if path.is_symlink() else path


#: The end of the name of the lock file beside a folder being built, held while it is.
BUILD_LOCK_SUFFIX = ".lock"
#: Errors of ``flock`` on a file system that has none (some FUSE, SMB and Lustre mounts).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def folder_built_beside(dst: str | Path) -> Iterator[Path]:
    """A new hidden folder beside ``dst`` to build a whole folder in (a dataset), then rename
    onto ``dst`` in one step; removed afterwards unless the caller renamed it into place.

    The builder holds a lock file beside the folder while it builds, naming its host, so
    the folders of builders on this host that were killed (SIGKILL, out of memory: no
    ``finally`` ran) are told from those of builders at work (jobs of a sweep building one
    dataset together) and removed (:func:`remove_abandoned_builds`). Where the file system
    has no locks, the folder is built without one, and left if its builder is killed."""
    parent = Path(dst).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(dst)
        # the lock first: its folder is made once it is held and names this host
        lock_fd, lock_name = tempfile.mkstemp(
            prefix=_build_prefix(dst), suffix=BUILD_LOCK_SUFFIX, dir=parent
        )
    except OSError as error:  # named as the folder the user knows, not the temporary one
        raise OSError(error.errno, error.strerror, str(dst)) from error
    lock = Path(lock_name)
    tmp = lock.with_name(lock.name.removesuffix(BUILD_LOCK_SUFFIX))
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            os.write(lock_fd, socket.gethostname().encode())
        except OSError as error:
            if error.errno not in _NO_FLOCK:
                raise
            lock.unlink(missing_ok=True)  # no lock: the folder is never taken for abandoned
        tmp.mkdir(0o777 & ~_UMASK)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(lock_fd)


def _build_prefix(dst: str | Path) -> str:
    return f".{Path(dst).name}{PARTIAL}"


def remove_abandoned_builds(dst: str | Path) -> list[Path]:
    """Remove the folders that builders of ``dst`` on this host left when they were killed:
    those whose lock file names this host and is held by no process. Those of other hosts
    (whose locks a shared file system may not show here), and those without a lock file,
    are left."""
    parent = Path(dst).absolute().parent
    host = socket.gethostname().encode()
    removed = []
    pattern = f"{glob.escape(_build_prefix(dst))}*{BUILD_LOCK_SUFFIX}"
    for lock in sorted(parent.glob(pattern)):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:  # gone meanwhile (its builder ended), or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.read(fd, 256) != host:  # another host's, or not locked by its builder yet
                continue
            folder = lock.with_name(lock.name.removesuffix(BUILD_LOCK_SUFFIX))
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(folder)
            log.info("removed %s, left by a build that was killed", folder)
        except OSError:  # held: a builder at work (or a file system without locks)
            continue
        finally:
            os.close(fd)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text for people (a report, JSON) in UTF-8; see :func:`escape_undecodable_names`."""
    with atomic_path(path) as tmp:
        tmp.write_text(escape_undecodable_names(text), encoding="utf-8")


def escape_undecodable_names(text: str) -> str:
    """``text`` with the bytes of file names that are not UTF-8 (Linux allows any bytes in a
    name; Python holds the others as surrogates) as backslash escapes, which any reader
    shows: ``caf\\xe9.png`` for Latin-1's ``café.png``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_csv(
    path: str | Path,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    names_as_bytes: bool = False,
) -> None:
    """A table, whole or not at all, in UTF-8 with file names that are not UTF-8 escaped
    (:func:`escape_undecodable_names`); or, with ``names_as_bytes``, with those names' own
    bytes, for a table crackseg reads back (a split file), where a name must come back as
    it was."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    if names_as_bytes:
        atomic_write_bytes(path, table.getvalue().encode("utf-8", "surrogateescape"))
    else:
        atomic_write_text(path, table.getvalue())


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 grey (HxW) or RGB (HxWx3) image as PNG bytes (OpenCV stores BGR)."""
    import cv2  # here: the run-folder code importing this module needs no image library

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} image of shape {image.shape} as PNG")
    return encoded.tobytes()


def atomic_write_png(path: str | Path, image: np.ndarray) -> None:
    """The one image writer of a run folder: whole or not at all (see :func:`encode_png`)."""
    atomic_write_bytes(path, encode_png(image))


def atomic_save_figure(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure (its format by ``path``'s suffix), then free its memory."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=dpi)
    finally:
        figure.clear()
    return path
