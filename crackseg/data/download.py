"""Fetching and unpacking a dataset archive, for datasets with a public address.

Used for KolektorSDD2 (Božič, Tabernik, Skočaj, Computers in Industry 2021; licence
CC BY-NC-SA 4.0, see https://www.vicos.si/resources/kolektorsdd2/). Off by default:
a run never reaches the network unless its data config asks for it.

Downloads go to ``<name>.part`` and are renamed only once the checksum holds, so an
interrupted download is resumed and a corrupt one never looks finished. A download is
checked against a pinned SHA-256; ``sha256=None`` downloads unchecked, knowingly, and logs
the archive's SHA-256 for pinning. Jobs of a sweep starting together on one data root take
turns: the first fetches and unpacks, the others then find the data there.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from crackseg.errors import DataError

log = logging.getLogger(__name__)

#: The data configs' value of a checksum nobody chose yet (OmegaConf's ``???`` cannot be
#: used: instantiating the data module would fail on it even when nothing is downloaded).
UNPINNED = "unpinned"

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_OWN_SUFFIXES = (".part",)
_MARKER_PREFIX = ".extracted-"


def sha256_of(path: Path | str) -> str:
    """SHA-256 of a file, read in chunks (archives are gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_sha256(sha256: str | None) -> str | None:
    """A pinned SHA-256 in lower case, or None to download unchecked; anything else (a value
    left ``unpinned``, a typo) is refused before a byte is downloaded."""
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if value == UNPINNED:
        raise DataError(
            "no SHA-256 given for the download: pin the archive's SHA-256, or pass None "
            "(null in a config) to download it unchecked"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DataError(f"a SHA-256 is 64 hexadecimal digits, not {sha256!r}")
    return value


def _name_from_url(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise DataError(f"cannot derive a file name from {url}; pass filename")
    return name


def _copy(source, target, total: int | None, initial: int, desc: str) -> None:
    with tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=None,
        leave=False,
    ) as bar:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            target.write(chunk)
            bar.update(len(chunk))


def _fetch_file_url(url: str, part: Path) -> None:
    source_path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not source_path.is_file():
        raise DataError(f"cannot download {url}: no such file {source_path}")
    offset = part.stat().st_size if part.exists() else 0
    total = source_path.stat().st_size
    if offset > total:  # not a prefix of this file: start again
        offset = 0
    with source_path.open("rb") as source, part.open("r+b" if offset else "wb") as target:
        source.seek(offset)
        target.seek(offset)
        target.truncate()
        _copy(source, target, total, offset, part.name)


def _fetch_http(url: str, part: Path) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "crackseg"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds everything
            return
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from exc
    with response:
        resumed = offset > 0 and response.status == 206
        if offset and not resumed:
            log.info("server ignored the range request; downloading %s from the start", url)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with part.open("ab" if resumed else "wb") as target:
                _copy(response, target, total, offset, part.name)
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(f"download of {url} interrupted ({exc}); run again to resume") from exc


def download_archive(
    url: str, dest_dir: Path | str, sha256: str | None, filename: str | None = None
) -> Path:
    """Download ``url`` into ``dest_dir`` once, resuming a partial download, and verify it
    against ``sha256`` (None: unchecked, with a warning giving the SHA-256 to pin)."""
    expected = checked_sha256(sha256)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / (filename or _name_from_url(url))
    part = final.with_name(final.name + ".part")
    if final.is_file():
        if expected is None:
            _warn_unverified(final)
            return final
        got = sha256_of(final)
        if got == expected:
            log.info("%s already downloaded and verified", final)
            return final
        log.warning("%s has SHA-256 %s, expected %s; downloading it again", final, got, expected)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    log.info("downloading %s to %s", url, final)
    if scheme == "file":
        _fetch_file_url(url, part)
    elif scheme in ("http", "https"):
        _fetch_http(url, part)
    else:
        raise DataError(f"cannot download {url}: only http, https and file URLs are supported")
    got = sha256_of(part)
    if expected is not None and got != expected:
        part.unlink()
        raise DataError(
            f"checksum mismatch for {url}: expected SHA-256 {expected}, got {got}; "
            "the download was deleted"
        )
    os.replace(part, final)
    if expected is None:
        _warn_unverified(final, got)
    return final


def _warn_unverified(path: Path, digest: str | None = None) -> None:
    digest = digest or sha256_of(path)
    log.warning(
        "no checksum given, so %s cannot be verified; its SHA-256 is %s (pin it in the "
        "data config as sha256 to verify later downloads)",
        path,
        digest,
    )


def _inside(dest: Path, name: str) -> bool:
    target = (dest / name).resolve()
    return target == dest or dest in target.parents


def _marker(archive: Path, dest_dir: Path) -> Path:
    return dest_dir / f"{_MARKER_PREFIX}{archive.name}"


def extract_archive(
    archive: Path | str, dest_dir: Path | str, strip_top_folder: bool = False
) -> Path:
    """Unpack a zip or tar archive once; refuse members that would land outside ``dest_dir``.

    A marker file written after the last member makes a second call a no-op; without
    it (an interrupted extraction) everything is unpacked again. ``strip_top_folder``
    moves the contents of a single folder wrapping the whole archive up into ``dest_dir``,
    so the dataset root is the same whether or not the publisher wrapped it.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir.resolve()
    marker = _marker(archive, dest_dir)
    if marker.exists():
        log.info("%s already extracted into %s", archive, dest_dir)
        return dest_dir
    if not archive.is_file():
        raise DataError(f"archive not found: {archive}")
    log.info("extracting %s into %s", archive, dest_dir)
    if zipfile.is_zipfile(archive):
        names = _extract_zip(archive, dest)
    elif tarfile.is_tarfile(archive):
        names = _extract_tar(archive, dest)
    else:
        raise DataError(f"not a zip or tar archive: {archive}")
    if strip_top_folder:
        _strip_top_folder(dest, names)
    marker.write_text(f"{archive.name}\n", encoding="utf-8")
    return dest_dir


def _strip_top_folder(dest: Path, names: list[str]) -> None:
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) != 1:
        return
    wrapper = dest / tops.pop()
    if not wrapper.is_dir():
        return
    moving = dest / f"{_MARKER_PREFIX}unwrapping"  # a child may share the wrapper's name
    if moving.exists():
        shutil.rmtree(moving)
    wrapper.rename(moving)
    for child in sorted(moving.iterdir()):
        target = dest / child.name
        if target.is_dir():  # left by an earlier, interrupted run of this same step
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        child.rename(target)
    moving.rmdir()


def _extract_zip(archive: Path, dest: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            escaping = [m.filename for m in members if not _inside(dest, m.filename)]
            if escaping:
                raise DataError(
                    f"refusing {archive}: members would be written outside {dest}: "
                    f"{', '.join(escaping[:5])}"
                )
            for member in tqdm(
                members, desc=f"extracting {archive.name}", disable=None, leave=False
            ):
                zf.extract(member, dest)
            return [m.filename for m in members]
    except zipfile.BadZipFile as exc:
        raise DataError(f"corrupt zip archive {archive}: {exc}") from exc


def _extract_tar(archive: Path, dest: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            escaping = [m.name for m in members if not _inside(dest, m.name)]
            escaping += [
                m.name
                for m in members
                if (m.issym() or m.islnk())
                and not _inside(dest, str(PurePosixPath(m.name).parent / m.linkname))
            ]
            escaping += [m.name for m in members if m.isdev()]
            if escaping:
                raise DataError(
                    f"refusing {archive}: members would be written outside {dest} "
                    f"(or are devices/links): {', '.join(escaping[:5])}"
                )
            for member in tqdm(
                members, desc=f"extracting {archive.name}", disable=None, leave=False
            ):
                if hasattr(tarfile, "data_filter"):
                    tf.extract(member, dest, filter="data")
                else:  # pragma: no cover - Python without PEP 706
                    tf.extract(member, dest)
            return [m.name for m in members]
    except tarfile.TarError as exc:
        raise DataError(f"corrupt tar archive {archive}: {exc}") from exc


def _own_files(root: Path, archive_name: str | None = None) -> set[str]:
    names = {p.name for p in root.iterdir() if p.name.startswith(_MARKER_PREFIX)}
    names |= {p.name for p in root.iterdir() if p.suffix in _OWN_SUFFIXES}
    if archive_name:
        names.add(archive_name)
    return names


def prepare_dataset(root: Path | str, url: str | None, sha256: str | None) -> Path:
    """Make sure ``root`` holds the dataset, downloading and unpacking it if it does not.

    Returns ``root``: an archive whose content sits in one top folder is unwrapped, so
    the dataset is indexed at ``root`` either way. Without a ``url`` nothing is fetched.
    """
    root = Path(root).expanduser()
    if not url:
        return root
    archive_name = _name_from_url(url)
    if _holds_data(root, archive_name):  # read without waiting for any lock
        return root
    with _one_process_at_a_time(root):
        if _holds_data(root, archive_name):  # prepared by the process waited for
            return root
        with _removed_if_left_empty(root):
            archive = download_archive(url, root, sha256, archive_name)
        extract_archive(archive, root, strip_top_folder=True)
    return root


def _holds_data(root: Path, archive_name: str) -> bool:
    """Whether ``root`` holds the data: extracted by us, or put there by the user."""
    if not root.is_dir():
        return False
    done = any(root.glob(f"{_MARKER_PREFIX}*"))
    others = [p for p in root.iterdir() if p.name not in _own_files(root, archive_name)]
    return bool(others) and (done or not (root / archive_name).exists())


@contextmanager
def _one_process_at_a_time(root: Path) -> Iterator[None]:
    """An exclusive lock on preparing ``root``, waited for (jobs of a sweep on one machine).

    The lock file lies in the temporary folder, named after the root's absolute path, so
    the data root holds nothing but data and a refused download leaves no trace in it; the
    kernel drops the lock however its process ends. Jobs with temporary folders of their own
    (``TMPDIR`` per SLURM job) do not see each other's locks.
    """
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"crackseg-download-{key}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:  # another user's lock file: prepared unlocked, as before
        log.debug("preparing %s without a lock: %s", root, error)
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another process preparing %s", root)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextmanager
def _removed_if_left_empty(folder: Path) -> Iterator[None]:
    """``folder``, and the parents it lacks, removed again where the block fails leaving
    them empty (but for an empty part): a download refused (no network, a URL mistyped)
    leaves no empty data root behind, one that failed half-way its part to resume from."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        yield
    except BaseException:
        for made in missing:  # innermost first
            try:
                for part in made.glob("*.part"):  # opened before the first byte failed
                    if part.stat().st_size == 0:
                        part.unlink()
                made.rmdir()
            except OSError:  # not empty (or not made)
                break
        raise
