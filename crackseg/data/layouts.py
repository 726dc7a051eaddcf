"""Dataset layouts on disk, turned into lists of :class:`~crackseg.data.samples.Sample`.

Known layouts:

- ``crack_segmentation``: the public crack_segmentation dataset (about 11 300 crack images of
  448x448 merged from twelve public crack datasets such as CFD, CRACK500, GAPs384, DeepCrack,
  Eugen Miller, Volker, Rissbilder; collected by Khanh Ha; each source keeps its own licence,
  mostly research use only). ``images/`` and ``masks/`` with matching file stems, crack-free
  images named ``noncrack*``; either flat or under ``train/``, ``test/`` (and ``val/``).
  The CrackForest sample in ``shared/data/cfd`` (Shi et al., IEEE T-ITS 2016, non-commercial
  research use) has this layout too.
- ``ksdd2``: KolektorSDD2 (Božič, Tabernik, Skočaj, "Mixed supervision for surface-defect
  detection", Computers in Industry 2021; CC BY-NC-SA 4.0): ``train/`` and ``test/`` holding
  ``NAME.png`` with ``NAME_GT.png``; an image is positive iff its mask marks a pixel.
- ``segdec``: the layout of the published SegDecNet code for its crack data:
  ``{train,test}_{positive,negative}/`` holding ``NAME.jpg`` with ``NAME_GT.jpg``; the
  label comes from the folder.
- ``folder``: any ``image_dir``/``mask_dir`` pair, configured by options.
- ``ksdd``: KolektorSDD (Tabernik et al., J. Intell. Manuf. 2020; CC BY-NC-SA 4.0):
  folders ``kos01`` ... ``kos50`` holding ``PartK.jpg`` with its mask ``PartK_label.bmp``;
  positive when the mask marks a pixel; ``kos21_Part7`` is left out, as in the paper. A
  folder is one physical part: its group, which folds never split.
- ``dagm``: DAGM 2007 (Wieler, Hahn; research use), one class per run:
  ``ClassK/{Train,Test}/NAME.PNG`` with ``Label/NAME_label.PNG`` for defective images only
  (weak elliptical labels); an image without a label is a negative.
- ``severstal``: Severstal Steel Defect Detection (Kaggle 2019, competition use):
  ``train_images/NAME.jpg`` and ``train.csv`` (ImageId, ClassId, EncodedPixels); every
  defect class is defect, an image without a row a negative (crackseg.data.rle).

See docs/method.md §10 for the published settings of the paper's datasets.

Ids are the file stem for flat layouts and ``<folder>_<stem>`` where several folders are
read (``class<K>_<split>_<stem>`` for DAGM, whose file names repeat from class to class), so
they are unique in the dataset and safe to use in file names.
"""

from __future__ import annotations

import csv
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from crackseg.data.data_settings import (
    BINARIZE_THRESHOLD,
    MADE_FROM_NOTHING,
    check_data_makers,
    data_maker,
)
from crackseg.data.io import (
    IMAGE_EXTENSIONS,
    left_out_files,
    list_image_files,
    looks_like_a_photograph,
    map_threads,
    read_mask,
    read_native,
    warn_of_masks_like_photographs,
)
from crackseg.data.rle import read_run_length_csv
from crackseg.data.samples import SPLITS, TILE_GROUPS_FILE, Sample, tile_photo
from crackseg.errors import ConfigError, CracksegError, DataError, describe_files, plural
from crackseg.setting_rules import as_typed

log = logging.getLogger(__name__)


def files_by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """Map stems to files; two files with one stem (a.jpg, a.png) make the pairing ambiguous."""
    found: dict[str, list[Path]] = {}
    for path in files:
        found.setdefault(path.stem, []).append(path)
    clashes = [p for paths in found.values() if len(paths) > 1 for p in paths]
    if clashes:
        raise DataError(
            f"several files share one name, cannot pair them: {describe_files(clashes)}"
        )
    return {stem: paths[0] for stem, paths in found.items()}


def _mask_has_defect(path: Path, threshold: int) -> bool:
    return bool((read_mask(path) > threshold).any())


def _labels_from_masks(masks: list[Path], desc: str, threshold: int) -> list[bool]:
    """Whether each mask marks a pixel above ``threshold`` (``data.binarize_threshold``, as
    in training and :func:`check_samples`). Reads with a progress bar, gathering unreadable
    files into one error."""

    def job(path: Path) -> bool | str:
        try:
            return _mask_has_defect(path, threshold)
        except DataError as error:
            return _file_and_why(path, error)

    results = map_threads(job, masks, desc)
    if bad := [r for r in results if isinstance(r, str)]:
        raise DataError(f"masks that cannot be read: {describe_files(bad)}")
    return [bool(r) for r in results]


def check_data_found(root: Path, tile_source: Path | None = None) -> None:
    """Refuse a run's data that is not there: its ``root`` (missing, or empty), or, where
    the root is cut into tiles from the photographs in ``tile_source`` (``data.tile``) and
    holds none yet, those photographs."""
    if tile_source is None:
        if not root.exists():
            raise DataError(f"data root {root} does not exist (set data.root=PATH)")
        if root.is_dir() and not any(root.iterdir()):  # made before the data was unpacked
            raise DataError(f"data root {root} is empty (set data.root=PATH, or fill it)")
    elif not (root.is_dir() and any(root.iterdir())) and not tile_source.is_dir():
        raise DataError(
            f"data.tile.source {tile_source} does not exist (the photographs to tile; "
            "set data.tile.source=FOLDER, which experiment=cfd_tiles reads from CRACKSEG_CFD_DIR)"
        )


def check_config_data_found(data: Mapping[str, Any]) -> None:
    """Refuse a run whose ``data`` config reads data that is not on this machine
    (:func:`check_data_found`); data the run makes itself (synthetic, downloaded) is not
    looked for. Its blocks that make the data are checked first (:func:`check_data_makers`)."""
    check_data_makers(data)
    if data_maker(data) in MADE_FROM_NOTHING:
        return
    tile = data.get("tile")
    source = Path(str(tile["source"])).expanduser() if tile else None
    check_data_found(Path(str(data["root"])).expanduser(), source)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} does not exist or is not a folder: {path}")


def _no_images(root: Path, folders: list[Path]) -> DataError:
    looked = ", ".join(str(f) for f in folders)
    return DataError(
        f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under {root}; looked in: {looked}"
    )


def _crackforest_hint(root: Path) -> str:
    """For a folder holding CrackForest as distributed (its masks in MATLAB files)."""
    if (root / "image").is_dir() and (root / "groundTruth").is_dir():
        return "; CrackForest as distributed? convert it first: crackseg-data crackforest SRC DST"
    return ""


def _split_by_mask_suffix(
    files: Iterable[Path], mask_suffix: str
) -> tuple[dict[str, Path], dict[str, Path]]:
    """A folder holding both images and masks (``NAME.png``, ``NAME{mask_suffix}.png``):
    its images by stem and its masks by their image's stem."""
    files = list(files)
    masks = files_by_stem(p for p in files if p.stem.endswith(mask_suffix))
    images = files_by_stem(p for p in files if not p.stem.endswith(mask_suffix))
    return images, {stem[: -len(mask_suffix)]: path for stem, path in masks.items()}


def _unread_files(folder: Path, stems: set[str]) -> list[Path]:
    """The files of ``folder`` with one of ``stems`` of a kind crackseg does not read (a
    GIF): listing the folder left them out with a warning."""
    if not folder.is_dir():
        return []
    return [p for p in left_out_files(folder) if p.stem in stems]


def _left_out(kind: str, partner: str, unread: list[Path]) -> str:
    return (
        f"{kind} left out, as crackseg reads only {'/'.join(IMAGE_EXTENSIONS)} files, though "
        f"their {partner} are there: {describe_files(unread)}; convert them to one of those"
    )


def _unpaired(
    unpaired: list[tuple[str, Path]], partner_dir: Path, partners: str, suffix: str = ""
) -> DataError:
    """Images or masks (each with its stem) whose partner was not read from ``partner_dir``
    (``partners``: "images" or "masks", named ``STEM{suffix}``): one there of a kind
    crackseg does not read (a GIF, left out with a warning) is named as such, rather than
    said to be missing."""
    own = "masks" if partners == "images" else "images"
    unread = _unread_files(partner_dir, {f"{stem}{suffix}" for stem, _ in unpaired})
    found = {p.stem.removesuffix(suffix) for p in unread}
    lonely = [path for stem, path in unpaired if stem not in found]
    problems = [_left_out(partners, own, unread)] if unread else []
    if lonely:
        partner = "an image" if partners == "images" else "a mask"
        problems.append(f"{own} without {partner}: {describe_files(lonely)}")
    return DataError("; ".join(problems))


def _pair_stems(
    images: dict[str, Path],
    masks: dict[str, Path],
    may_lack_mask: Callable[[str], bool],
    image_dir: Path,
    mask_dir: Path,
    mask_suffix: str = "",
) -> list[tuple[str, Path, Path | None]]:
    """Pair images and masks by stem; only an image ``may_lack_mask`` accepts (a negative)
    may be without one, and every mask needs its image (the folders they were read from, a
    mask named ``STEM{mask_suffix}``, name what was left out)."""
    missing = [(s, images[s]) for s in sorted(images) if s not in masks and not may_lack_mask(s)]
    if missing:
        raise _unpaired(missing, mask_dir, "masks", mask_suffix)
    orphans = [(s, masks[s]) for s in sorted(masks) if s not in images]
    if orphans:
        raise _unpaired(orphans, image_dir, "images")
    return [(s, images[s], masks.get(s)) for s in sorted(images)]


#: ``splits`` of the crack_segmentation layout: the split folders (train/, val/, test/) where
#: there are any, else the flat images/ and masks/ (auto); the one or the other.
CRACK_SEGMENTATION_SPLITS = ("auto", "flat", "folders")


def _crack_segmentation(
    root: Path, negative_prefix: str = "noncrack", splits: str = "auto"
) -> dict[str, list[Sample]]:
    """The archive holds both: the whole set flat, and a train/test split of it beside."""
    if splits not in CRACK_SEGMENTATION_SPLITS:
        raise ConfigError(
            f"layout 'crack_segmentation' option splits must be one of "
            f"{', '.join(CRACK_SEGMENTATION_SPLITS)}, not {splits!r}"
        )
    split_dirs = [s for s in SPLITS if (root / s / "images").is_dir()]
    flat = (root / "images").is_dir()
    if split_dirs and splits != "flat":
        folders = {s: root / s for s in split_dirs}
        if flat:
            log.warning(
                "crack_segmentation: reading the split folders %s of %s; the flat images/ "
                "beside them is not read (++data.layout_options.splits=flat reads it, as the "
                "seed run does; crackseg-data: --splits flat)",
                ", ".join(f"{s}/" for s in split_dirs),
                root,
            )
    elif flat and splits != "folders":
        folders = {"all": root}
    else:
        looked = {"flat": ["images"], "folders": ["train/images", "test/images"]}.get(
            splits, ["images", "train/images", "test/images"]
        )
        raise DataError(
            f"no images/ folder found: looked in {', '.join(str(root / p) for p in looked)}"
            f"{_crackforest_hint(root)}"
        )
    groups = _tile_groups(root)
    result: dict[str, list[Sample]] = {}
    for split, base in folders.items():
        image_dir, mask_dir = base / "images", base / "masks"
        images = files_by_stem(list_image_files(image_dir, name_left_out=True))
        if not images:
            raise _no_images(root, [image_dir])
        masks = (
            files_by_stem(list_image_files(mask_dir, name_left_out=True))
            if mask_dir.is_dir()
            else {}
        )
        prefix = "" if split == "all" else f"{split}_"
        pairs = _pair_stems(
            images, masks, lambda s: s.startswith(negative_prefix), image_dir, mask_dir
        )
        result[split] = [
            Sample(
                prefix + stem,
                image,
                mask,
                not stem.startswith(negative_prefix),
                group=groups.get(tile_photo(stem) or ""),
            )
            for stem, image, mask in pairs
        ]
    return result


def _tile_groups(root: Path) -> dict[str, str]:
    """``photo -> group`` of tiles cut from photographs that came in groups (their
    :data:`TILE_GROUPS_FILE`, written by crackseg-data tile); none where there is none."""
    path = root / TILE_GROUPS_FILE
    if not path.is_file():
        if any(root.glob("**/images/*kos[0-9][0-9]_Part*")):
            log.warning(
                "%s holds tiles of KolektorSDD cut without %s: folds keep each photograph's "
                "tiles together, not each kosNN folder's; cut them again to keep folders whole",
                root,
                TILE_GROUPS_FILE,
            )
        return {}
    try:
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return {row["photo"]: row["group"] for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error) as error:
        raise DataError(f"unreadable {path} ({error}); cut the tiles again") from None


def _first_folder_inside(path: Path, folder: Path) -> set[str]:
    """The subfolder of ``folder`` that ``path`` lies in (``masks`` of images/masks/gt),
    none where it lies elsewhere."""
    try:
        parts = path.resolve().relative_to(folder.resolve()).parts
    except ValueError:
        return set()
    return {parts[0]} if parts else set()


def _ksdd2(
    root: Path, binarize_threshold: int, mask_suffix: str = "_GT"
) -> dict[str, list[Sample]]:
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DataError(f"no train/ or test/ folder found in {root}")
    result: dict[str, list[Sample]] = {}
    for split in splits:
        folder = root / split
        images, masks = _split_by_mask_suffix(
            list_image_files(folder, name_left_out=True), mask_suffix
        )
        if not images:
            raise _no_images(root, [folder])
        pairs = _pair_stems(images, masks, lambda s: False, folder, folder, mask_suffix)
        labels = _labels_from_masks(
            [m for _, _, m in pairs], f"labelling {split} masks", binarize_threshold
        )
        result[split] = [
            Sample(f"{split}_{stem}", image, mask, label)
            for (stem, image, mask), label in zip(pairs, labels, strict=True)
        ]
    return result


def _segdec(root: Path, mask_suffix: str = "_GT") -> dict[str, list[Sample]]:
    result: dict[str, list[Sample]] = {}
    looked = []
    for split in SPLITS:
        samples: list[Sample] = []
        present = False
        for kind in ("positive", "negative"):
            folder = root / f"{split}_{kind}"
            looked.append(folder)
            if not folder.is_dir():
                continue
            present = True
            images, masks = _split_by_mask_suffix(
                list_image_files(folder, name_left_out=True), mask_suffix
            )
            positive = kind == "positive"
            pairs = _pair_stems(
                images, masks, lambda s, neg=not positive: neg, folder, folder, mask_suffix
            )
            samples += [Sample(f"{folder.name}_{s}", i, m, positive) for s, i, m in pairs]
        if present:
            result[split] = sorted(samples, key=lambda s: s.sample_id)
    if not result:
        raise DataError(f"no {{train,test}}_{{positive,negative}}/ folders found in {root}")
    if not any(result.values()):
        raise _no_images(root, [f for f in looked if f.is_dir()])
    return result


def _folder(
    root: Path,
    binarize_threshold: int,
    image_dir: str = "images",
    mask_dir: str = "masks",
    mask_suffix: str = "",
    mask_ext: str | None = None,
    negative_prefix: str = "noncrack",
    label_from_mask: bool = False,
) -> dict[str, list[Sample]]:
    images_path, masks_path = root / image_dir, root / mask_dir
    _require_dir(images_path, "image folder")
    same_dir = images_path.resolve() == masks_path.resolve()
    if same_dir and not mask_suffix:
        raise ConfigError(
            f"image_dir and mask_dir are both {images_path}: set mask_suffix (e.g. '_GT') "
            "so masks can be told from images"
        )
    if mask_ext is not None and not mask_ext.startswith("."):
        mask_ext = "." + mask_ext
    files = list_image_files(
        images_path,
        name_left_out=True,
        subfolders_read=_first_folder_inside(masks_path, images_path),
    )
    if same_dir:
        files = [p for p in files if not p.stem.endswith(mask_suffix)]
    images = files_by_stem(files)
    if not images:
        raise _no_images(root, [images_path])
    available = (
        set(list_image_files(masks_path, name_left_out=not same_dir))
        if masks_path.is_dir()
        else set()
    )
    pairs: list[tuple[str, Path, Path | None]] = []
    missing: list[str] = []
    names_of_masks = {f"{stem}{mask_suffix}" for stem in images}
    for stem in sorted(images):
        image = images[stem]
        mask = masks_path / f"{stem}{mask_suffix}{mask_ext or image.suffix}"
        if mask in available:
            available.discard(mask)
            pairs.append((stem, image, mask))
        elif label_from_mask or not stem.startswith(negative_prefix):
            missing.append(f"{image} (expected {mask})")
        else:
            pairs.append((stem, image, None))
    if missing:
        other_kinds = sorted({m.suffix for m in available if m.stem in names_of_masks})
        hint = (
            f"; the masks are {'/'.join(other_kinds)} files: set "
            f"data.layout_options.mask_ext={other_kinds[0].lstrip('.')}"
            if other_kinds and mask_ext is None
            else ""
        )
        raise DataError(f"images without a mask: {describe_files(missing)}{hint}")
    if same_dir:
        available = {p for p in available if p.stem.endswith(mask_suffix)}
    if available:
        orphans = [(p.stem.removesuffix(mask_suffix), p) for p in sorted(available)]
        raise _unpaired(orphans, images_path, "images")
    if label_from_mask:
        labels = _labels_from_masks([m for _, _, m in pairs], "labelling masks", binarize_threshold)
    else:
        labels = [not stem.startswith(negative_prefix) for stem, _, _ in pairs]
    return {
        "all": [
            Sample(stem, image, mask, label)
            for (stem, image, mask), label in zip(pairs, labels, strict=True)
        ]
    }


#: KolektorSDD's sample the paper leaves out (docs/datasets.md).
KSDD_LEFT_OUT = ("kos21_Part7",)


#: The name of a KolektorSDD part folder.
KSDD_FOLDER = re.compile(r"kos\d+")


def _ksdd(
    root: Path, binarize_threshold: int, mask_suffix: str = "_label"
) -> dict[str, list[Sample]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # what an extra folder holds is not named (the folder is, below): only a part's
    parts = [
        (folder, list_image_files(folder, name_left_out=bool(KSDD_FOLDER.fullmatch(folder.name))))
        for folder in folders
    ]
    if empty := [f for f, files in parts if not files and KSDD_FOLDER.fullmatch(f.name)]:
        raise _no_images(root, empty)  # a part folder (kos07) left empty: half unpacked
    without = [folder for folder, files in parts if not files]
    parts = [(folder, files) for folder, files in parts if files]
    if not parts:
        nested = [f for f in folders if any(p.is_dir() for p in f.glob("kos*"))]
        hint = f"; point data.root at {nested[0]}" if len(nested) == 1 else ""
        raise DataError(f"no part folders (kos01 ... kos50) with images found in {root}{hint}")
    if without:  # an archive's extra folder (__MACOSX/): no part of the dataset
        log.warning("KolektorSDD: left out, without an image: %s", describe_files(without))
    found: list[tuple[str, Path, Path, str]] = []
    for folder, files in parts:
        images, masks = _split_by_mask_suffix(files, mask_suffix)
        if not images:
            raise _no_images(root, [folder])
        if not masks:
            raise DataError(f"KolektorSDD folder without masks (NAME{mask_suffix}.bmp): {folder}")
        for stem, image, mask in _pair_stems(
            images, masks, lambda s: False, folder, folder, mask_suffix
        ):
            sample_id = f"{folder.name}_{stem}"
            if sample_id in KSDD_LEFT_OUT:
                log.info("KolektorSDD: %s left out, as in the paper", sample_id)
                continue
            found.append((sample_id, image, mask, folder.name))
    labels = _labels_from_masks(
        [m for _, _, m, _ in found], "labelling KolektorSDD masks", binarize_threshold
    )
    return {
        "all": [
            Sample(sample_id, image, mask, label, group=folder)
            for (sample_id, image, mask, folder), label in zip(found, labels, strict=True)
        ]
    }


def dagm_sample_id(class_id: int, split: str, stem: str) -> str:
    """A DAGM sample's id: ``class2_train_0001`` for ``Class2/Train/0001.PNG``."""
    return f"class{class_id}_{split}_{stem}"


def check_dagm_classes(root: Path, class_ids: Iterable[int | str]) -> None:
    """Refuse DAGM classes whose folder (``ClassK``) is not under ``root``."""
    missing = [str(k) for k in class_ids if not (root / f"Class{k}").is_dir()]
    if missing:
        present = sorted(p.name for p in root.glob("Class*") if p.is_dir())
        # an archive unpacked into a folder of its own: DAGM_2007/Class1, ...
        nested = sorted({p.parent for p in root.glob("*/Class*") if p.is_dir()})
        hint = f"; point data.root at {nested[0]}" if not present and len(nested) == 1 else ""
        raise DataError(
            f"no DAGM class folder for data.dagm_class={','.join(missing)} under {root} "
            f"(found: {', '.join(present) or 'none'}){hint}"
        )


def _dagm(root: Path, class_id: int = 1, label_suffix: str = "_label") -> dict[str, list[Sample]]:
    check_dagm_classes(root, [class_id])
    class_dir = root / f"Class{class_id}"
    result: dict[str, list[Sample]] = {}
    for split, folder_name in (("train", "Train"), ("test", "Test")):
        folder = class_dir / folder_name
        if not folder.is_dir():
            raise DataError(f"DAGM class without a {folder_name}/ folder: {folder}")
        label_dir = folder / "Label"
        if not label_dir.is_dir():
            raise DataError(f"DAGM class without Label/ (the defect labels): {label_dir}")
        images = files_by_stem(
            list_image_files(folder, name_left_out=True, subfolders_read={label_dir.name})
        )
        if not images:
            raise _no_images(root, [folder])
        labels = files_by_stem(list_image_files(label_dir))  # beside Labels.txt, as shipped
        unmatched = [path for stem, path in labels.items() if not stem.endswith(label_suffix)]
        if unmatched:
            raise DataError(
                f"DAGM labels not named NAME{label_suffix}: {describe_files(unmatched)}"
            )
        masks = {stem[: -len(label_suffix)]: path for stem, path in labels.items()}
        # no label file: a negative
        pairs = _pair_stems(images, masks, lambda s: True, folder, label_dir, label_suffix)
        # File names repeat from class to class: the id names the class, so that a split
        # file of one class cannot be read against another.
        result[split] = [
            Sample(dagm_sample_id(class_id, split, stem), image, mask, mask is not None)
            for stem, image, mask in pairs
        ]
    return result


def _severstal(
    root: Path,
    csv_name: str = "train.csv",
    image_dir: str = "train_images",
    height: int = 256,
    width: int = 1600,
) -> dict[str, list[Sample]]:
    images_path, csv_path = root / image_dir, root / csv_name
    _require_dir(images_path, "Severstal image folder")
    if not csv_path.is_file():
        raise DataError(f"Severstal masks file {csv_path} does not exist")
    images = files_by_stem(list_image_files(images_path, name_left_out=True))
    if not images:
        raise _no_images(root, [images_path])
    masks = read_run_length_csv(csv_path, height, width)
    by_name = {path.name: stem for stem, path in images.items()}
    missing = [
        f"{images_path / name} ({mask})" for name, mask in masks.items() if name not in by_name
    ]
    if missing:
        raise DataError(f"images named in {csv_path} but missing: {describe_files(missing)}")
    mask_of = {by_name[name]: mask for name, mask in masks.items()}
    return {
        "all": [
            Sample(stem, images[stem], mask_of.get(stem), stem in mask_of)
            for stem in sorted(images)
        ]
    }


_INDEXERS: dict[str, Callable[..., dict[str, list[Sample]]]] = {
    "crack_segmentation": _crack_segmentation,
    "ksdd2": _ksdd2,
    "segdec": _segdec,
    "folder": _folder,
    "ksdd": _ksdd,
    "dagm": _dagm,
    "severstal": _severstal,
}
#: The layouts ``data.layout`` and ``--layout`` name.
LAYOUTS = tuple(_INDEXERS)


#: The types of the layouts' options, by their annotation: what each accepts, as said.
_OPTION_TYPES = {
    "str": ((str,), "a string"),
    "str | None": ((str, type(None)), "a string or null"),
    "bool": ((bool,), "true or false"),
    "int": ((int,), "an integer"),
}


def layout_option_names(layout: str) -> list[str]:
    """The options a layout takes (``data.layout_options.*``), in its indexer's order."""
    if layout not in _INDEXERS:
        raise DataError(f"unknown dataset layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    parameters = inspect.signature(_INDEXERS[layout]).parameters
    return [p for p in parameters if p not in ("root", "binarize_threshold")]


def _check_option_type(layout: str, name: str, annotation: str, value: object) -> None:
    """A layout option of the type its layout reads (``negative_prefix=null`` ended in a
    TypeError deep in the indexing, ``label_from_mask=maybe`` was taken as true)."""
    accepted, what = _OPTION_TYPES.get(annotation, ((object,), ""))
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
        raise ConfigError(f"layout {layout!r} option {name} must be {what}, not {as_typed(value)}")


def index_layout(
    layout: str, root: Path | str, binarize_threshold: int = BINARIZE_THRESHOLD, **options
) -> dict[str, list[Sample]]:
    """List a dataset's samples per split as found on disk ("all" when it has no splits).

    Only file names are checked here (and masks read where the label depends on them: a
    mask marks a defect where a pixel is above ``binarize_threshold``, the
    ``data.binarize_threshold`` that training and :func:`check_samples` binarise with);
    :func:`check_samples` reads every file before training.
    """
    accepted = layout_option_names(layout)
    root = Path(root).expanduser()
    _require_dir(root, "dataset root")
    indexer = _INDEXERS[layout]
    parameters = inspect.signature(indexer).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"layout {layout!r} does not take {', '.join(unknown)}; it takes: {', '.join(accepted)}"
        )
    for name, value in options.items():
        _check_option_type(layout, name, str(parameters[name].annotation), value)
    if "binarize_threshold" in parameters:  # the layouts that label images from their masks
        options["binarize_threshold"] = binarize_threshold
    indexed = indexer(root, **options)
    ids = [s.sample_id for samples in indexed.values() for s in samples]
    if len(set(ids)) != len(ids):  # cannot happen with the id rules above; guard the invariant
        raise DataError(f"duplicate sample ids in {root}")
    for split, samples in indexed.items():
        indexed[split] = sorted(samples, key=lambda s: s.sample_id)
        log.info(
            "%s %s: %s (%d positive)",
            layout,
            split,
            plural(len(samples), "image"),
            sum(s.is_positive for s in samples),
        )
    return indexed


def _inspect(sample: Sample, threshold: int) -> tuple[list[str], tuple | None, bool | None, bool]:
    """Read one sample's files; return (bad files, size mismatch, mask has a defect, mask
    looks like a photograph)."""
    bad: list[str] = []
    image_shape = mask_shape = None
    has_defect = None
    photograph = False
    try:
        image_shape = read_native(sample.image_path).shape[:2]
    except CracksegError as error:
        bad.append(_file_and_why(sample.image_path, error))
    if sample.mask_path is not None:
        try:
            mask = read_mask(sample.mask_path)
            mask_shape = mask.shape
            has_defect = bool((mask > threshold).any())
            photograph = looks_like_a_photograph(mask)
        except CracksegError as error:
            bad.append(_file_and_why(sample.mask_path, error))
    mismatch = None
    if image_shape is not None and mask_shape is not None and image_shape != mask_shape:
        mismatch = (sample.mask_path, image_shape, mask_shape)
    return bad, mismatch, has_defect, photograph


def _file_and_why(path: object, error: CracksegError) -> str:
    """``PATH (why it cannot be read)``, from a reading error that ends with the path."""
    message, named = str(error), f": {path}"
    return f"{path} ({message.removesuffix(named)})" if message.endswith(named) else message


def check_samples(
    samples: list[Sample],
    binarize_threshold: int = BINARIZE_THRESHOLD,
    desc: str = "checking the files",
) -> list[Sample]:
    """Read every file once before training, so a bad file fails now and not at epoch 30.

    Unreadable files and mask/image size mismatches raise one DataError listing them all.
    A positive whose mask is empty keeps its image label but loses the mask (a weak
    positive): the mask contradicts the label, and training segmentation on an empty
    mask would teach the opposite of the label. This is logged, never silent.
    """
    results = map_threads(lambda s: _inspect(s, binarize_threshold), samples, desc)
    bad = [path for b, _, _, _ in results for path in b]
    if bad:
        raise DataError(f"files that cannot be read: {describe_files(bad)}")
    mismatches = [m for _, m, _, _ in results if m is not None]
    mismatched = [
        f"{path} ({mask_hw[0]}x{mask_hw[1]}, image {image_hw[0]}x{image_hw[1]})"
        for path, image_hw, mask_hw in mismatches
    ]
    if mismatched:
        turned = any(mask_hw == image_hw[::-1] for _, image_hw, mask_hw in mismatches)
        hint = (
            " (a mask turned a quarter: images are read as stored, their EXIF orientation "
            "ignored, so a mask drawn on the photo as a viewer shows it is turned)"
            if turned
            else ""
        )
        raise DataError(
            f"masks whose size differs from their image: {describe_files(mismatched)}{hint}"
        )
    checked: list[Sample] = []
    emptied: list[str] = []
    marked_negatives: list[str] = []
    photographs = [
        str(s.mask_path) for s, (*_, photo) in zip(samples, results, strict=True) if photo
    ]
    warn_of_masks_like_photographs(photographs)
    for sample, (_, _, has_defect, _) in zip(samples, results, strict=True):
        if sample.is_positive and has_defect is False:
            emptied.append(sample.sample_id)
            sample = replace(sample, mask_path=None)
        elif not sample.is_positive and has_defect:
            marked_negatives.append(sample.sample_id)
        checked.append(sample)
    if emptied:
        log.warning(
            "%s with an empty mask (no pixel > %d), used as weak (image label only): %s",
            plural(len(emptied), "positive"),
            binarize_threshold,
            describe_files(emptied),
        )
    if marked_negatives:
        log.warning(
            "%s with crack pixels in the mask, kept as negatives: %s",
            plural(len(marked_negatives), "negative"),
            describe_files(marked_negatives),
        )
    return checked
