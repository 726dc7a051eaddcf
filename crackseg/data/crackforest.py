"""The public CrackForest dataset as it is distributed (``image/NNN.jpg`` and, beside them,
``groundTruth/NNN.mat``, MATLAB files whose ``groundTruth.Segmentation`` marks a crack
pixel 2 and the background 1) turned into the crack_segmentation layout crackseg reads and
tiles: ``images/NNN.jpg``, unchanged, and ``masks/NNN.png``, 0 background and 255 crack.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from crackseg.atomic import atomic_write_png
from crackseg.data.io import IMAGE_EXTENSIONS, list_image_files, read_native
from crackseg.data.layouts import files_by_stem
from crackseg.errors import DataError, describe_files, plural
from crackseg.setting_rules import as_override

log = logging.getLogger(__name__)

IMAGE_FOLDER = "image"
MASK_FOLDER = "groundTruth"
#: The values of ``groundTruth.Segmentation``.
BACKGROUND, CRACK = 1, 2


def crackforest_mask(path: Path) -> np.ndarray:
    """The crack mask of one ``groundTruth/NNN.mat``: uint8, 255 where it marks a crack."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as error:  # scipy's answer to a MATLAB v7.3 (HDF5) file
        raise DataError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which crackseg does not read: save it "
            "again in MATLAB with save(NAME, 'groundTruth', '-v7')"
        ) from error
    except (MatReadError, ValueError, TypeError, OSError) as error:
        raise DataError(f"{path} is not a MATLAB file crackseg can read: {error}") from error
    truth = mat.get("groundTruth")
    while isinstance(truth, np.ndarray) and truth.dtype == object and truth.size == 1:
        truth = truth.item()  # a cell around the struct
    if isinstance(truth, np.ndarray) and truth.dtype == object:
        raise DataError(f"{path} holds {truth.size} annotations of the photograph; one expected")
    segmentation = getattr(truth, "Segmentation", None)
    if not isinstance(segmentation, np.ndarray) or segmentation.ndim != 2:
        raise DataError(f"{path} holds no groundTruth.Segmentation image, as CrackForest's do")
    values = set(np.unique(segmentation).tolist())
    if not values <= {BACKGROUND, CRACK}:
        shown = ", ".join(f"{v:g}" for v in sorted(values)[:5])
        raise DataError(
            f"{path}: groundTruth.Segmentation holds {shown}, not CrackForest's "
            f"{BACKGROUND} (background) and {CRACK} (crack)"
        )
    return np.where(segmentation == CRACK, 255, 0).astype(np.uint8)


def _converted_already(src: Path) -> DataError:
    """A folder in the crack_segmentation layout (CrackForest converted, or the sample in
    shared/data/cfd) needs no converting: the error says how it is read as it is."""
    root, tiles = as_override("data.root", src), f"CRACKSEG_CFD_DIR={shlex.quote(str(src))}"
    return DataError(
        f"{src} holds images/ and masks/: it is in the crack_segmentation layout already, "
        f"which crackseg reads as it is (data=crack_segmentation {root}; its tiles: {tiles} "
        "crackseg-train experiment=cfd_tiles)"
    )


def convert_crackforest(src: Path, dst: Path) -> int:
    """Write CrackForest in ``src`` into ``dst`` (images/, masks/) and return how many
    photographs it holds. Every photograph needs its mask, of its size."""
    images_dir, masks_dir = src / IMAGE_FOLDER, src / MASK_FOLDER
    if not src.is_dir():
        what = "does not exist" if not src.exists() else "is not a folder"
        raise DataError(f"CrackForest folder {src} {what}")
    if not images_dir.is_dir() or not masks_dir.is_dir():
        if (src / "images").is_dir() and (src / "masks").is_dir():
            raise _converted_already(src)
        raise DataError(
            f"{src} is not CrackForest as distributed: it needs {IMAGE_FOLDER}/ and "
            f"{MASK_FOLDER}/ (github.com/cuilimeng/CrackForest-dataset)"
        )
    # CrackForest's are .jpg; two of one name (001.jpg, 001.png) would share one mask
    images = sorted(files_by_stem(list_image_files(images_dir, name_left_out=True)).values())
    if not images:
        raise DataError(f"no photograph ({'/'.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    missing = [p.name for p in images if not (masks_dir / f"{p.stem}.mat").is_file()]
    if missing:
        raise DataError(f"photographs without a {MASK_FOLDER}/NAME.mat: {describe_files(missing)}")
    photographed = {p.stem for p in images}
    if unused := sorted(
        p.name for p in masks_dir.glob("*.mat") if p.stem not in photographed and p.name[0] != "."
    ):
        log.warning(
            "%s in %s left out, no photograph in %s of the same name: %s",
            plural(len(unused), "mask"),
            masks_dir,
            images_dir,
            describe_files(unused),
        )
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for image in images:
        mask = crackforest_mask(masks_dir / f"{image.stem}.mat")
        photo = read_native(image)  # a photograph that cannot be read is named, not copied
        if photo.shape[:2] != mask.shape:
            raise DataError(
                f"{image} is {photo.shape[0]}x{photo.shape[1]} (height x width) but its "
                f"mask {mask.shape[0]}x{mask.shape[1]}"
            )
        shutil.copyfile(image, dst / "images" / image.name)
        atomic_write_png(dst / "masks" / f"{image.stem}.png", mask)
    return len(images)
