"""What a prediction run writes per image and its tables, and the outputs of a prediction or
an export that no later command writes over.

Every file is written whole or not at all (crackseg.atomic); a failed write raises an
``OSError`` that names the file, which ends the run with one line and a failed status.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crackseg.errors import RunFolderError

#: What a prediction writes into its run folder: its tables and its folders of images.
PREDICTIONS_TABLE, CRACKS_TABLE = "predictions.csv", "cracks.csv"
OUTPUT_TABLES = (PREDICTIONS_TABLE, CRACKS_TABLE)
OUTPUT_FOLDERS = ("probabilities", "masks", "overlays")
#: What an export writes into its run folder: the model and the record of its check.
EXPORT_MODEL = "model.onnx"
EXPORT_RECORD = "export.json"


def earlier_outputs(folder: Path) -> list[str]:
    """The outputs of another prediction or export in ``folder`` (its files, its non-empty
    image folders)."""
    names = (*OUTPUT_TABLES, EXPORT_MODEL, EXPORT_RECORD)
    found = [name for name in names if (folder / name).exists()]
    return found + [
        f"{name}/"
        for name in OUTPUT_FOLDERS
        if (folder / name).is_dir() and any((folder / name).iterdir())
    ]


def refuse_earlier_outputs(folder: Path) -> None:
    """Refuse a folder holding another prediction's or export's outputs (one killed before
    it wrote its status, or any folder given as ``hydra.run.dir``): they would be
    overwritten."""
    if found := earlier_outputs(folder):  # a dataset's masks/ too: named as files, not outputs
        writer = "an export" if set(found) <= {EXPORT_MODEL, EXPORT_RECORD} else "a prediction"
        raise RunFolderError(
            f"{folder} already holds files by the names {writer} writes ({', '.join(found)}); "
            "choose another hydra.run.dir"
        )


#: Colour (RGB) and opacity of the crack tint in the overlays.
TINT = np.array([255, 0, 0], np.float32)
TINT_OPACITY = 0.55


def probability_image(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as 0..255 grey levels."""
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo (RGB or grey, HxWxC) with the mask's pixels tinted red."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    tinted = rgb.copy()
    blend = (1 - TINT_OPACITY) * rgb[mask].astype(np.float32) + TINT_OPACITY * TINT
    tinted[mask] = np.round(blend).astype(np.uint8)
    return tinted
