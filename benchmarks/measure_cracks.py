"""Time crack measurement (crackseg.deploy.measure) on the masks a prediction gives.

    python benchmarks/measure_cracks.py [--cfd FOLDER] [--repeats N] [--quick]

Prints one row per kind of mask, the best of ``--repeats`` runs: the 80 CrackForest masks
(480x320, ``--cfd``: ``$CRACKSEG_CFD_DIR`` or ../shared/data/cfd; left out where absent),
and masks drawn here at photograph sizes: specks (a noisy prediction, every region measured,
as ``min_crack_pixels=1``), wavy cracks, a stain 400 px wide, and a photograph marked whole
(a flooded prediction). ``--quick`` draws them at a quarter of each side, once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from crackseg.data.io import read_mask
from crackseg.deploy.measure import measure_cracks
from crackseg.models.precision import cpu_model

REPO = Path(__file__).resolve().parents[1]


def specks(height: int, width: int) -> np.ndarray:
    """Blobs of a few pixels, one per 300 pixels: a prediction's noise."""
    dots = np.random.default_rng(0).random((height, width)) > 0.997
    return ndimage.binary_dilation(dots, iterations=2)


def wavy_cracks(height: int, width: int) -> np.ndarray:
    """20 wavy cracks 6 px wide across the photograph, apart from each other."""
    mask = np.zeros((height, width), bool)
    columns = np.arange(width)
    spacing = height // 21
    for k in range(1, 21):
        middle = k * spacing + (spacing / 4) * np.sin(columns / (50 + 10 * k))
        for offset in range(-3, 3):
            mask[(middle + offset).astype(int), columns] = True
    return mask


def stain(height: int, width: int) -> np.ndarray:
    """A region 400 px (a tenth of the height) wide, three quarters of the width long."""
    mask = np.zeros((height, width), bool)
    side = height // 10
    mask[height // 2 - side // 2 : height // 2 + side // 2, width // 8 : 7 * width // 8] = True
    return mask


def marked_whole(height: int, width: int) -> np.ndarray:
    return np.ones((height, width), bool)


DRAWN: dict[str, Callable[[int, int], np.ndarray]] = {
    "specks": specks,
    "20 wavy cracks": wavy_cracks,
    "a stain": stain,
    "marked whole": marked_whole,
}


def best_time(masks: list[np.ndarray], repeats: int) -> tuple[float, int]:
    """The least seconds over ``repeats`` to measure every mask, and the cracks found."""
    best, found = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        found = sum(len(measure_cracks(mask)) for mask in masks)
        best = min(best, time.perf_counter() - start)
    return best, found


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; one ``error:`` line and exit 2 for those it cannot run with."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfd", type=Path, help="the CrackForest folder (images/, masks/)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        fail(f"--repeats must be >= 1, not {args.repeats}")
    if args.cfd is not None and not (args.cfd / "masks").is_dir():
        fail(f"--cfd {args.cfd}: no masks/ folder there")
    if args.cfd is None:
        default = REPO.parent / "shared" / "data" / "cfd"
        args.cfd = Path(os.environ.get("CRACKSEG_CFD_DIR", default))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    repeats = 1 if args.quick else args.repeats
    height, width = (1000, 1500) if args.quick else (4000, 6000)

    print(f"crack measurement, best of {repeats}; {cpu_model()}")
    print(f"| {'masks':<28} | {'size':>9} | {'cracks':>6} | {'seconds':>8} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 8}|{'-' * 10}|")
    rows: list[tuple[str, str, list[np.ndarray]]] = []
    cfd_masks = sorted((args.cfd / "masks").glob("*.png"))
    if cfd_masks:
        masks = [read_mask(path) > 0 for path in cfd_masks]
        rows.append((f"{len(masks)} CrackForest masks", "480x320", masks))
    else:
        print(f"(no CrackForest masks in {args.cfd / 'masks'}: that row is left out)")
    for name, draw in DRAWN.items():
        size = (height // 4, width // 4) if name == "specks" else (height, width)
        rows.append((name, f"{size[1]}x{size[0]}", [draw(*size)]))
    for name, size, masks in rows:
        seconds, found = best_time(masks, repeats)
        print(f"| {name:<28} | {size:>9} | {found:>6} | {seconds:>8.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
