"""Prediction on new images: decision scores and segmentation maps at the input size."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from crackseg.atomic import atomic_write_text
from crackseg.data.io import is_image_file, read_image
from crackseg.data.labels import resize_image
from crackseg.errors import DataError, describe_files
from crackseg.pipeline import load_checkpoint
from crackseg.run_folder import refuse_used_folder

log = logging.getLogger(__name__)


def list_images(path: Path) -> list[Path]:
    """One image, or every image in a folder (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"input {path} does not exist")
    images = sorted(p for p in path.iterdir() if is_image_file(p))
    if not images:
        raise DataError(f"no images found in {path}")
    return images


def predict_folder(cfg: DictConfig) -> dict[str, Any]:
    """Write ``predictions.csv`` (decision score, label) and one probability PNG per image.

    Each image is resized to the checkpoint's input size; the probability map is resized
    back to the image's own size. ``decision_threshold`` labels an image a defect.
    """
    refuse_used_folder(Path(cfg.paths.output_dir))
    module = load_checkpoint(cfg.ckpt_path).eval()
    hp = module.hparams
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device == "auto" else "cpu")
    module.to(device)
    images = list_images(Path(cfg.input).expanduser())
    out = Path(cfg.paths.output_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, unreadable = [], []
    for path in tqdm(images, desc="predicting"):
        try:
            image = read_image(path, hp.input_channels)
        except DataError:
            unreadable.append(path)
            continue
        resized = resize_image(image, hp.input_height, hp.input_width)
        batch = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            score, seg = module(batch.float().div(255).to(device))
        probs = cv2.resize(seg[0, 0].cpu().numpy(), (image.shape[1], image.shape[0]))
        cv2.imwrite(str(out / "masks" / f"{path.stem}.png"), np.uint8(probs * 255 + 0.5))
        rows.append((path.name, float(score), int(float(score) >= cfg.decision_threshold)))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["image", "decision_score", "defect"])
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", table.getvalue())
    if unreadable:
        log.warning("could not read %s", describe_files(unreadable))
    log.info("predicted %d images into %s", len(rows), out)
    return {"images": len(rows), "unreadable": len(unreadable)}
