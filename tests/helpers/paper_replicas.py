"""Tiny replicas of the paper's datasets as distributed (docs/method.md §10), for tests.

- KolektorSDD: folders ``kosNN`` with ``PartK.jpg`` and ``PartK_label.bmp``; Part1 of every
  folder holds a vertical crack, the other parts are clean.
- DAGM 2007: ``ClassK/{Train,Test}/NNNN.PNG`` with ``Label/NNNN_label.PNG`` (an ellipse,
  as DAGM's weak labels) for every other image.
- Severstal: ``train_images/NAME.jpg`` (256x1600) and ``train.csv`` with run-length codes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an image file at ``path``, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _texture(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 160, shape, dtype=np.uint8)


def make_ksdd(root: Path, folders: int = 2, parts: int = 4, size=(96, 40)) -> Path:
    """``folders`` part folders of ``parts`` grey images each; Part1 is the defective one."""
    height, width = size
    for f in range(1, folders + 1):
        for k in range(parts):
            image = _texture(size, seed=100 * f + k)
            mask = np.zeros(size, np.uint8)
            if k == 1:
                mask[height // 4 : 3 * height // 4, width // 2 - 1 : width // 2 + 2] = 255
                image[mask > 0] = 20
            write_image(root / f"kos{f:02d}" / f"Part{k}.jpg", image)
            write_image(root / f"kos{f:02d}" / f"Part{k}_label.bmp", mask)
    return root


def make_dagm(root: Path, classes=(1, 2), images: int = 6, size: int = 64) -> Path:
    """Each class with ``images`` Train and ``images`` Test images; odd-numbered ones carry an
    elliptical label (DAGM's weak labels), the others none (negatives)."""
    for c in classes:
        for split in ("Train", "Test"):
            folder = root / f"Class{c}" / split
            (folder / "Label").mkdir(parents=True, exist_ok=True)
            for i in range(1, images + 1):
                image = _texture((size, size), seed=1000 * c + 10 * i + (split == "Test"))
                if i % 2:
                    label = np.zeros((size, size), np.uint8)
                    cv2.ellipse(
                        label, (size // 2, size // 2), (size // 4, size // 8), 30, 0, 360, 255, -1
                    )
                    image[label > 0] = 30
                    write_image(folder / "Label" / f"{i:04d}_label.PNG", label)
                write_image(folder / f"{i:04d}.PNG", image)
    return root


def severstal_codes(mask: np.ndarray) -> str:
    """Severstal's run-length code of a mask: 1-based, column-major, "start length ..."."""
    flat = (mask.T.reshape(-1) > 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=True))


def make_severstal(root: Path, positives: int = 4, negatives: int = 4) -> Path:
    """256x1600 grey JPEGs; the positives hold a defect band coded in train.csv (two classes
    for the first, to check that rows of one image are joined)."""
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i in range(positives + negatives):
        name = f"{i:04x}a{i}.jpg"
        image = _texture((256, 1600), seed=i)
        if i < positives:
            mask = np.zeros((256, 1600), np.uint8)
            mask[100:140, 200 + 100 * i : 400 + 100 * i] = 1
            image[mask > 0] = 25
            rows.append(f"{name},3,{severstal_codes(mask)}")
            if i == 0:
                second = np.zeros_like(mask)
                second[10:20, 1000:1100] = 1
                image[second > 0] = 25
                rows.append(f"{name},1,{severstal_codes(second)}")
        write_image(root / "train_images" / name, image)
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def make_ksdd2_like(root: Path, train: int = 10, test: int = 4, size=(64, 32)) -> Path:
    """KolektorSDD2's layout: ``train/`` and ``test/`` with ``NNNNN.png`` and ``NNNNN_GT.png``
    (numbered on from train to test); even numbers hold a defect."""
    for i in range(train + test):
        folder = root / ("train" if i < train else "test")
        image = np.dstack([_texture(size, seed=i)] * 3)
        mask = np.zeros(size, np.uint8)
        if i % 2 == 0:
            mask[10:30, 12:16] = 255
            image[mask > 0] = 20
        write_image(folder / f"{i:05d}.png", image)
        write_image(folder / f"{i:05d}_GT.png", mask)
    return root
