"""The paper's published split files (Python pickles) turned into a ``split.csv``.

One pickle per dataset, number of segmented positives N and training size (docs/datasets.md):
``KSDD2/split_N.pyb`` holds (train, test); ``KSDD/split_TRAIN_N.pyb`` and ``DAGM/split_N.pyb``
hold (train, test), each a list over folds; ``STEEL/split_TRAIN_N.pyb`` holds (train, test,
validation). KSDD's folds are numbered from 0, DAGM's are its classes, 1 to 10, as the
paper's ``--FOLD`` numbers them: fold K is ``ClassK``, the list's item K-1. Every sample is
a pair (name, is_segmented); a KSDD name is a folder, which the split file names as a group
(all of its parts).

A pickle runs code when it is loaded if it names a class or a function. The loader here looks
none up: a file may name only the four of :data:`_STAND_INS` (numpy's scalar and dtype, and
how protocol 2 writes bytes), each answered by a stand-in of crackseg's own that reads the
value from its bytes (``numpy.bool_`` flags, ``numpy.str_`` names, as a script using numpy
writes them); any other name is refused. Nothing in the file runs, and what comes out must
be lists, tuples, sets, strings, numbers and booleans.
"""

from __future__ import annotations

import csv
import io
import pickle
import re
import reprlib
import struct
from pathlib import Path
from typing import Any

from crackseg.atomic import atomic_path
from crackseg.data.io import IMAGE_EXTENSIONS
from crackseg.data.layouts import dagm_sample_id
from crackseg.errors import DataError

#: ``--dataset`` -> the names of the parts the pickle holds, in its order.
PARTS = {
    "ksdd": ("train", "test"),
    "dagm": ("train", "test"),
    "ksdd2": ("train", "test"),
    "severstal": ("train", "test", "val"),
}
#: Datasets whose parts are lists over folds.
FOLDED = ("ksdd", "dagm")
#: The number of a dataset's first fold (DAGM's folds are its classes, Class1 first).
FIRST_FOLD = {"ksdd": 0, "dagm": 1}
#: The columns written: what ``data.split_file`` reads (crackseg.data.splits).
COLUMNS = ("split", "sample_id", "segmented")
_PLAIN = (list, tuple, set, frozenset, str, int, float, bool)
#: A published split file's name: ``split_N.pyb`` or ``split_TRAIN_N.pyb``.
PUBLISHED_NAME = re.compile(r"split_(?:(?P<train>\d+)_)?(?P<n>\d+)\.pyb")


class _Refused(pickle.UnpicklingError):
    """The file asks for something that could run code."""


class _Dtype:
    """Stands in for a numpy dtype in a split file: its type code (``b1``, ``<i8``'s ``i8``,
    ``U8``) and byte order, all :func:`_numpy_scalar` needs."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        self.code, self.order = str(code), "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _numpy_scalar(dtype: Any, raw: Any = b"") -> bool | int | float | str:
    """A numpy scalar (a ``numpy.bool_`` flag, a ``numpy.str_`` name) read from its bytes by
    its type code, as the plain Python value; no numpy code runs."""
    if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
        raise _Refused("it holds a numpy scalar that is no plain value")
    kind, little = dtype.code[:1], dtype.order != ">"
    order = "little" if little else "big"
    if kind == "b":
        return any(raw)
    if kind in ("i", "u"):
        return int.from_bytes(raw, order, signed=kind == "i")
    if kind == "f" and len(raw) in (2, 4, 8):
        return struct.unpack(("<" if little else ">") + {2: "e", 4: "f", 8: "d"}[len(raw)], raw)[0]
    if kind == "U":
        return raw.decode("utf-32-le" if little else "utf-32-be").rstrip("\0")
    if kind == "S":
        return raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
    raise _Refused(f"it holds a numpy scalar of type {dtype.code}")


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """How pickle protocol 2 writes bytes (a numpy scalar's): ``_codecs.encode(TEXT, 'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("it calls _codecs.encode otherwise than to write bytes")
    return text.encode("latin1")


#: The names a split file may ask for, each answered by a stand-in of crackseg's own: numpy
#: scalars (flags and names written by a script that used numpy) and how protocol 2 writes
#: their bytes.
_STAND_INS = {
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1,
}


class _PlainValuesUnpickler(pickle.Unpickler):
    """Builds containers and scalars only (numpy's read by stand-ins, :data:`_STAND_INS`):
    any other class or function is refused unlooked-up. What the stand-ins make is kept
    within a few times the file's size: a file calling them over and over on one long
    string would fill the memory."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._budget = 4 * len(data) + 65536

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise _Refused(f"it names {module}.{name}")

        def charged(*args: Any) -> Any:
            made = stand_in(*args)
            self._budget -= len(made) if isinstance(made, str | bytes) else 16
            if self._budget < 0:
                raise _Refused("its numpy values make far more than the file holds")
            return made

        return charged

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it refers to an outside object (a persistent id)")


def load_plain_pickle(path: Path | str) -> Any:
    """The pickle's content, if it is made of lists, tuples, sets, strings, numbers and
    booleans only; DataError (one line, naming the file) for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        content = _PlainValuesUnpickler(data).load()
    except _Refused as exc:
        raise DataError(
            f"{path} is refused: {exc}; a split file holds only lists, tuples, sets, "
            "strings, numbers and booleans, and nothing in it was run"
        ) from None
    except Exception as exc:  # truncated or garbled: nothing of it ran
        raise DataError(f"{path} is not a readable pickle: {exc or type(exc).__name__}") from None
    _check_plain(content, path)
    return content


def _check_plain(content: Any, path: Path) -> None:
    stack, opened = [content], set()
    while stack:
        item = stack.pop()
        if not isinstance(item, _PLAIN):
            raise DataError(
                f"{path} is refused: it holds a {type(item).__name__}; a split file holds only "
                "lists, tuples, sets, strings, numbers and booleans"
            )
        if isinstance(item, list | tuple | set | frozenset) and id(item) not in opened:
            opened.add(id(item))  # once: a list holding itself would be opened for ever
            stack.extend(item)


def _shape_error(path: Path, dataset: str, what: str) -> DataError:
    parts = ", ".join(PARTS[dataset])
    folds = ", each a list over folds" if dataset in FOLDED else ""
    return DataError(f"{path} is not a {dataset} split: {what} (expected ({parts}){folds})")


def _pairs(items: Any, path: Path, dataset: str, part: str) -> list[tuple[str, bool]]:
    """The (name, is_segmented) pairs of one part; a set of them (DAGM's) in name order."""
    if not isinstance(items, list | tuple | set | frozenset):
        raise _shape_error(path, dataset, f"{part} is a {type(items).__name__}, not a list")
    pairs = []
    for item in items:
        name = item[0] if isinstance(item, list | tuple) and item else None
        if isinstance(name, int) and name.bit_length() > 64:  # too long to be written out
            raise _shape_error(path, dataset, f"{part} holds a {name.bit_length()}-bit name")
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str | int)
            or isinstance(item[0], bool)
            or item[1] not in (True, False)
        ):
            # (a whole fold's list, where the file is another dataset's: shortened)
            held = reprlib.repr(item)
            raise _shape_error(path, dataset, f"{part} holds {held}, not (name, is_segmented)")
        pairs.append((str(item[0]), bool(item[1])))
    return sorted(pairs) if isinstance(items, set | frozenset) else pairs


def _sample_id(dataset: str, part: str, name: str, fold: int | None) -> str:
    """The id crackseg's layout gives the sample a published split names."""
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
    if dataset == "ksdd":
        return stem  # a folder: the split file names the group, all of its parts
    if dataset == "dagm":
        return dagm_sample_id(fold, part, stem)  # fold K is ClassK
    if dataset == "ksdd2":
        return f"{part}_{stem}"  # the train/ or test/ folder it lies in
    return stem


def published_split(path: Path | str, dataset: str, fold: int | None = None) -> dict[str, list]:
    """``split -> [(sample_id, segmented), ...]`` of a published split file."""
    path = Path(path)
    if dataset not in PARTS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(PARTS)}")
    if dataset in FOLDED and fold is None:
        raise DataError(
            f"a {dataset} split file holds every fold: choose one with --fold"
            + (" (fold K is ClassK)" if dataset == "dagm" else "")
        )
    if dataset not in FOLDED and fold is not None:
        raise DataError(f"a {dataset} split file holds no folds: drop --fold")
    content = load_plain_pickle(path)
    names = PARTS[dataset]
    if not isinstance(content, list | tuple) or len(content) != len(names):
        raise _shape_error(path, dataset, f"it holds a {type(content).__name__}")
    result: dict[str, list] = {}
    for name, part in zip(names, content, strict=True):
        if dataset in FOLDED:
            first = FIRST_FOLD[dataset]
            if not isinstance(part, list | tuple) or not first <= fold < first + len(part):
                count = len(part) if isinstance(part, list | tuple) else 0
                raise DataError(
                    f"{path} holds {count} folds: --fold must be {first}..{first + count - 1}"
                )
            part = part[fold - first]
        pairs = _pairs(part, path, dataset, name)
        if dataset == "dagm" and (odd := [n for n, _ in pairs if not _is_image_name(n)]):
            # DAGM's split files name image files (0001.PNG): another dataset's split else
            raise _shape_error(path, dataset, f"{name} names {odd[0]!r}, not an image file")
        result[name] = [(_sample_id(dataset, name, n, fold), flag) for n, flag in pairs]
    return result


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def write_published_split(split: dict[str, list], output: Path | str) -> None:
    """Write ``split.csv`` (split, sample_id, segmented) for ``data.split_file``."""
    seen: set[str] = set()
    with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for name, rows in split.items():
            for sample_id, segmented in rows:
                if sample_id in seen:
                    raise DataError(f"the split names {sample_id!r} twice")
                seen.add(sample_id)
                writer.writerow([name, sample_id, int(segmented)])


def settings_of_split_file(path: Path | str, dataset: str, split: dict[str, list]) -> list[str]:
    """The settings a run on a published split file takes beside ``data.split_file``, which
    it must agree with: its N (``data.num_segmented``) and Severstal's training size
    (``data.train_positives``, which sets the published epochs), read from the file's
    published name. An N above the samples the file marks is the published "all" (DAGM's
    ``split_1000.pyb``): null. A file named otherwise gives N = 0 where it marks no training
    sample (the weak run, which null would not be), else nothing: the run names what it
    needs."""
    name = PUBLISHED_NAME.fullmatch(Path(path).name)
    marked = sum(bool(flag) for _, flag in split["train"])
    if name is None:
        return [] if marked else ["data.num_segmented=0"]
    settings = [] if int(name["n"]) > marked else [f"data.num_segmented={int(name['n'])}"]
    if dataset == "severstal" and name["train"] is not None:
        settings.append(f"data.train_positives={int(name['train'])}")
    return settings
