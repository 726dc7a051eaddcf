"""Reading images and masks the way every layout needs them.

Files are read as bytes and decoded with ``cv2.imdecode(..., IMREAD_UNCHANGED)``:
``IMREAD_UNCHANGED`` keeps 16-bit data and alpha so they can be converted on purpose, and
it ignores the EXIF orientation, which masks (usually PNG) do not carry either, so image
and mask stay aligned. Reading the bytes ourselves also lets us catch truncated files:
OpenCV decodes a truncated JPEG without an error (grey rows at the bottom), and such an
image would silently train the network on garbage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from crackseg.data.rle import RunLengthMask
from crackseg.errors import ConfigError, DataError, describe_files, plural

log = logging.getLogger(__name__)

#: OpenCV's refusals of an image too large to decode, by the limit named in their text, and
#: the environment variable that raises each (OpenCV reads it once, at its first decoding).
OPENCV_SIZE_LIMITS = {
    "CV_IO_MAX_IMAGE_PIXELS": ("more pixels", "OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30),
    "CV_IO_MAX_IMAGE_WIDTH": ("wider", "OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 20),
    "CV_IO_MAX_IMAGE_HEIGHT": ("taller", "OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 20),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: A mask whose largest value is below this is a label map (0 background, 1 a defect, as
#: label tools store them; 2 where JPEG's noise reached it), not grey levels: any value above 0
#: marks the defect, whatever ``data.binarize_threshold``.
LABEL_MAP_LIMIT = 3

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8"
# A JPEG marker inside entropy-coded data: 0xFF followed by anything but a stuffed zero,
# a restart marker (D0-D7) or another fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

# OpenCV's own thread pool is off: a process that used it and then forks (a DataLoader's
# workers, forked from a run or from a sweep's joblib worker) leaves the child a pool without
# its threads, where a cv2 call (cvtColor) can wait for ever. The data is read by several
# workers or threads of crackseg's own instead.
cv2.setNumThreads(0)


def is_image_file(path: Path) -> bool:
    """True for the image types the layouts accept (hidden files such as ``._x.jpg`` excluded)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def left_out_files(folder: Path) -> list[Path]:
    """The files of ``folder``, sorted, that are not images crackseg reads (hidden ones such
    as ``.DS_Store`` aside)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not is_image_file(p) and p.name[0] != "."
    )


def list_image_files(
    folder: Path,
    *,
    name_left_out: bool = False,
    subfolders_read: Collection[str] = (),
    subfolders_advice: str = ", their images left out",
) -> list[Path]:
    """The image files in ``folder``, sorted, broken symlinks (dangling, or a loop) included:
    reading them then reports them as unreadable, where skipping them would hide them.
    ``name_left_out``: name what is left out in a warning, the other files and the
    subfolders (not read, ``subfolders_advice`` said of them; but for ``subfolders_read``, a
    layout's own, DAGM's ``Label``)."""
    images = sorted(
        p for p in folder.iterdir() if is_image_file(p) and (p.is_file() or _is_broken_link(p))
    )
    if name_left_out:
        others = left_out_files(folder)
        if others:
            log.warning(
                "%s: %s left out, not %s images: %s",
                folder,
                plural(len(others), "file"),
                "/".join(IMAGE_EXTENSIONS),
                describe_files(others),
            )
        subfolders = sorted(
            p
            for p in folder.iterdir()
            if p.is_dir() and p.name[0] != "." and p.name not in subfolders_read
        )
        if subfolders:
            log.warning(
                "%s: %s not read%s: %s",
                folder,
                plural(len(subfolders), "subfolder"),
                subfolders_advice,
                describe_files(subfolders),
            )
    return images


def list_input_images(path: Path) -> list[Path]:
    """A command's ``input``: one image, or every image in a folder (sorted by name, not
    recursive; the other files named in a warning); broken symlinks are listed, to be
    reported as unreadable. One image given by its name keeps to a folder's rule: a file of
    another extension is refused, as a folder leaves it out."""
    kinds = "/".join(IMAGE_EXTENSIONS)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path} is not an image crackseg reads (by its extension: {kinds})")
        return [path]
    if not path.is_dir():
        raise DataError(f"input {path} does not exist")
    images = list_image_files(path, name_left_out=True, subfolders_advice=" (give each as input)")
    if not images:
        raise DataError(f"no images ({kinds}) found in {path} (its subfolders are not read)")
    return images


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _jpeg_complete(data: bytes) -> bool:
    """Walk the JPEG segments and report whether the end-of-image marker is reached.

    Checking only the last two bytes would reject files with trailing data (some cameras
    append a trailer) and is fooled by nothing; walking the segments skips EXIF thumbnails
    (which hold their own FF D9) and follows the scans up to the real end.
    """
    n = len(data)
    pos = 2
    while pos < n:
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            match = _JPEG_MARKER.search(data, pos)
            if match is None:
                return False
            pos = match.start()
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return False
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if pos + 2 > n:
            return False
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to the next marker
            match = _JPEG_MARKER.search(data, pos)
            if match is None:
                return False
            pos = match.start()
    return False


def _check_complete(data: bytes, path: Path) -> None:
    """Raise DataError for a JPEG or PNG whose end is missing, or a PNG whose critical
    chunks fail their checksums (libpng would refuse it too, after printing a line of its
    own)."""
    if data.startswith(_JPEG_MAGIC):
        if not _jpeg_complete(data):
            raise DataError(f"truncated JPEG file (no end-of-image marker): {path}")
    elif data.startswith(_PNG_MAGIC):
        _check_png_chunks(data, path)


def _check_png_chunks(data: bytes, path: Path) -> None:
    """Walk a PNG's chunks (length, type, data, CRC-32 of type and data) up to ``IEND``; an
    ancillary chunk (its type in lower case first: text, a time stamp) is not checked, as
    libpng drops a damaged one and decodes the image."""
    pos = len(_PNG_MAGIC)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        kind = data[pos + 4 : pos + 8]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        critical = not kind[0] & 0x20
        if critical and zlib.crc32(data[pos + 4 : end]) != crc:
            name = kind.decode("latin-1")
            raise DataError(f"damaged PNG file (its {name} chunk fails its checksum): {path}")
        if kind == b"IEND":
            return
        pos = end + 4
    raise DataError(f"truncated PNG file (no IEND chunk): {path}")


#: Whether this process has said that a 16-bit image holds few bits (said once).
_said_few_bits = False


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale 16-bit data to 8 bits so thresholds such as the mask's > 127 keep their meaning.

    A 16-bit image whose values fit in 12 bits (a 10- or 12-bit camera's) reads dark, as the
    file says; the first one is named in a warning."""
    global _said_few_bits
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        top = int(array.max())
        if 0 < top < 4096 and not _said_few_bits:
            _said_few_bits = True
            log.warning(
                "%s is 16 bit but its values fit in 12 (up to %d of 65535): it is read as "
                "stored, dark; convert such images to 8 bit first if their camera wrote 12",
                path,
                top,
            )
        return np.round(array / 257.0).astype(np.uint8)
    raise DataError(f"unsupported pixel type {array.dtype} (8 or 16 bit expected): {path}")


def _mask_levels(array: np.ndarray) -> np.ndarray:
    """A mask's values as 0..255 grey levels, so that its threshold (127) keeps its meaning:
    a label map (largest value below :data:`LABEL_MAP_LIMIT`, e.g. 0/1) reads as 0/255, and
    16-bit data that holds 8-bit values (0/255 written in 16 bits) as those values."""
    top = array.max()
    if top == 0:  # empty, whatever its pixel type (a float TIFF of 0/1 with no 1)
        return np.zeros(array.shape, np.uint8)
    if 0 < top < LABEL_MAP_LIMIT:
        return np.where(array > 0, 255, 0).astype(np.uint8)
    if array.dtype == np.uint16 and top <= 255:
        return array.astype(np.uint8)
    return array


def _mask_through_alpha(array: np.ndarray) -> np.ndarray:
    """A mask with an alpha channel (grey + alpha, or colour + alpha) without it, its
    transparent pixels background: drawn on a transparent layer in one colour that is not
    black (white, red: every pixel holds it), the alpha is the mask; otherwise the colour
    of the pixels that are not transparent, anti-aliased edges and faint strokes included.
    Black strokes on a transparent layer cannot be told from an empty black mask with
    transparent parts: both read empty. A mask opaque throughout is its colour."""
    if array.ndim != 3 or array.shape[2] not in (2, 4) or array.dtype.kind != "u":
        return array
    colour, alpha = array[:, :, :-1], array[:, :, -1]
    if (alpha == np.iinfo(array.dtype).max).all():
        return colour[:, :, 0] if colour.shape[2] == 1 else colour
    colour = colour.max(axis=2)
    if colour.min() == colour.max() > 0:
        return alpha
    return np.where(alpha > 0, colour, 0).astype(array.dtype)


def read_native(path: Path | str, *, mask: bool = False) -> np.ndarray:
    """Decode a file to uint8 HxW or HxWxC (C = 3, RGB order), alpha dropped.

    The channel count is kept as stored, which the tiling tool needs to write tiles
    like their source; training code uses :func:`read_image` instead. With ``mask``, an
    alpha channel makes transparent pixels background (:func:`_mask_through_alpha`), a
    label map (0/1, in 8 or 16 bits, as label tools often store them) reads as 0/255 and a
    16-bit file of 8-bit values as those values (:func:`_mask_levels`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise DataError(f"empty file: {path}")
    _check_complete(data, path)
    try:
        with opencv_quiet():
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DataError(f"cannot decode image {path}: {_decoding_refusal(exc)}") from exc
    if array is None or array.size == 0:
        raise DataError(f"cannot decode image (unreadable or truncated): {path}")
    if mask:
        array = _mask_levels(_mask_through_alpha(array))
    array = _to_uint8(array, path)
    if array.ndim == 3:
        channels = array.shape[2]
        if channels in (1, 2):  # grey, or grey + alpha
            array = array[:, :, 0]
        elif channels == 3:
            array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
        elif channels == 4:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
        else:
            raise DataError(f"unsupported channel count {channels}: {path}")
    return np.ascontiguousarray(array)


#: Decodings under way with OpenCV's log silenced (threads of one process share its level),
#: and the level to give back when the last ends.
_quiet = {"depth": 0, "level": None}
_quiet_lock = threading.Lock()


@contextlib.contextmanager
def opencv_quiet():
    """OpenCV's own log silenced: it prints a file it cannot decode over several lines of
    its internals, beside crackseg's one line naming the file. Its level is the process's:
    the first of overlapping decodings silences it, the last gives it back."""
    levels = cv2.utils.logging
    with _quiet_lock:
        if _quiet["depth"] == 0:
            _quiet["level"] = levels.getLogLevel()
            levels.setLogLevel(levels.LOG_LEVEL_SILENT)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                levels.setLogLevel(_quiet["level"])


def _decoding_refusal(error: cv2.error) -> str:
    """What OpenCV's refusal to decode means, without its source file and line: for an
    image over one of its size limits, the limit and how to raise it."""
    text = str(getattr(error, "err", "") or error)
    for limit, (over, variable, default) in OPENCV_SIZE_LIMITS.items():
        if limit in text:
            value = os.environ.get(variable, str(default))
            return f"{over} than OpenCV decodes ({variable}={value}; set it higher to read it)"
    return text


def read_image(path: Path | str, channels: int) -> np.ndarray:
    """Read an image as HxWxC uint8 RGB (C = 1 or 3), whatever its storage format."""
    if channels not in (1, 3):
        raise ConfigError(f"input channels must be 1 or 3, got {channels}")
    array = read_native(path)
    if channels == 1:
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
        return array[:, :, None]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array


def read_mask(path: Path | str | RunLengthMask) -> np.ndarray:
    """Read a mask as HxW uint8; colour masks take the channel maximum (any marked pixel).

    A :class:`~crackseg.data.rle.RunLengthMask` (Severstal's masks live in a CSV) is decoded.
    """
    if isinstance(path, RunLengthMask):
        return path.decode()
    array = read_native(path, mask=True)
    if array.ndim == 3:
        array = array.max(axis=2)
    return array


#: A mask is dark where there is no defect and bright where there is one, with a few grey
#: pixels where JPEG blurred its edges; a file with at least this share of its pixels mid-grey
#: (:data:`MID_GREY`) is a photograph in a mask's place, or a map of probabilities.
PHOTOGRAPH_SHARE = 0.25
MID_GREY = (32, 224)


def looks_like_a_photograph(mask: np.ndarray) -> bool:
    """Whether a mask read by :func:`read_mask` holds grey levels as a photograph does."""
    grey = np.count_nonzero((mask >= MID_GREY[0]) & (mask < MID_GREY[1]))
    return mask.size > 0 and grey >= PHOTOGRAPH_SHARE * mask.size


def warn_of_masks_like_photographs(paths: list[str]) -> None:
    """Name in one warning the masks that :func:`looks_like_a_photograph` (none: nothing)."""
    if paths:
        log.warning(
            "%s with the grey levels of a photograph, not of a mask (a quarter or more of the "
            "pixels mid-grey: the images in the masks' place, or maps of probabilities?): %s",
            plural(len(paths), "mask"),
            describe_files(paths),
        )


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(_PNG_MAGIC) and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return None


def _jpeg_size(handle) -> tuple[int, int] | None:
    """Find the frame header without decoding; None if the file is not a plain JPEG."""
    if handle.read(2) != _JPEG_MAGIC:
        return None
    while True:
        byte = handle.read(1)
        while byte == b"\xff":
            marker = handle.read(1)
            if marker != b"\xff":
                break
        else:
            return None
        if not marker:
            return None
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD7:
            continue
        raw = handle.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack(">H", raw)[0]
        if code in _JPEG_SOF:
            body = handle.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack(">HH", body[1:5])
            return height, width
        if code in (0xD9, 0xDA):
            return None
        handle.seek(length - 2, 1)


def image_size(path: Path | str) -> tuple[int, int]:
    """Return (H, W) from the PNG or JPEG header when possible, else by decoding."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = _png_size(handle.read(24))
            if size is None:
                handle.seek(0)
                size = _jpeg_size(handle)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size is not None and size[0] > 0 and size[1] > 0:
        return size
    array = read_native(path)
    return array.shape[0], array.shape[1]


#: Threads that read or write images side by side (OpenCV decodes and encodes without the GIL).
IO_THREADS = 4


def map_threads(func: Callable, items: list, desc: str, **progress: Any) -> list:
    """``func`` over ``items`` in :data:`IO_THREADS` threads, in order, with a progress bar
    (``progress``: tqdm's options; by default it disappears when done)."""
    if not items:
        return []
    progress = {"leave": False, "disable": None, **progress}
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        return list(tqdm(pool.map(func, items), total=len(items), desc=desc, **progress))
