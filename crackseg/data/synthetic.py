"""Synthetic cracked-concrete images: the embedded default dataset of the demo.

The real crack datasets are large downloads, so ``make train`` and the tests run on images
generated here from a seed, written once in the crack_segmentation layout (``images/`` and
``masks/``, same file names). The task is meant to be fair: textured, unevenly lit, tinted
backgrounds; thin branching cracks of varying width and contrast (some faint); and crack-like
distractors that are not in the mask (stains, straight joints, scratches, pores, pebbles) on
positives and negatives alike, so neither global darkness nor "any dark line" gives the answer.
A small network still learns it in a few CPU minutes. Each sample comes from its own child RNG
``default_rng([seed, index, is_positive])``: the set is deterministic and sample i does not
depend on how many others there are.

Crack width: SegDecNet segments at 1/8 resolution, so a crack much thinner than the 8 px
output stride cannot reach a good Dice however well it is detected (upsampled 1/8 maps are
bands about 8-12 px wide). At 128 px, cracks of 4.5-9 px (tapering to ~3 px at the ends and
on branches) keep Dice >= 0.5 within reach of the small demo network; widths scale with size.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from crackseg.atomic import folder_built_beside, folder_destination, remove_abandoned_builds
from crackseg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MARKER = "synthetic.json"
GENERATOR = "crackseg.synthetic/2"  # bump when the images change, so old folders are not reused
CRACK_WIDTH = (4.5, 9.0)  # full width range (px) at 128 px image size, see above


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise whose features are about `cell` px wide."""
    gh, gw = max(2, round(h / cell) + 2), max(2, round(w / cell) + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _stroke(field: np.ndarray, pts: np.ndarray, radii: np.ndarray) -> None:
    """Raise `field` to (half-width - distance) of a polyline with varying half-width.

    ``field >= 0`` is then exactly the pixels whose centre lies inside the stroke; values just
    below 0 give the anti-aliased rim. Work is done per segment in its bounding box.
    """
    h, w = field.shape
    pad = float(radii.max()) + 1.5
    for i in range(len(pts) - 1):
        a, b, r0, r1 = pts[i], pts[i + 1], radii[i], radii[i + 1]
        x0, y0 = (np.floor(np.minimum(a, b) - pad)).astype(int)
        x1, y1 = (np.ceil(np.maximum(a, b) + pad)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if x0 > x1 or y0 > y1:
            continue
        xs = np.arange(x0, x1 + 1, dtype=np.float32)[None, :] - a[0]
        ys = np.arange(y0, y1 + 1, dtype=np.float32)[:, None] - a[1]
        d = b - a
        t = np.clip((xs * d[0] + ys * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        dist = np.hypot(xs - t * d[0], ys - t * d[1])
        box = field[y0 : y1 + 1, x0 : x1 + 1]
        np.maximum(box, r0 + t * (r1 - r0) - dist, out=box)


def _walk(rng: np.random.Generator, start, heading: float, n: int, step: float) -> np.ndarray:
    """A meandering, jagged random-walk polyline of n steps (n+1 points) from `start`."""
    headings = heading + np.cumsum(rng.normal(0.0, 0.22, n)) + rng.normal(0.0, 0.5, n)
    moves = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)]).astype(np.float32)


def _crack(rng: np.random.Generator, field: np.ndarray, scale: float) -> None:
    """Draw one crack (main line through the image plus 0-3 thinner branches) into `field`."""
    h, w = field.shape
    step = max(1.5, 4.0 * scale)
    centre = rng.uniform(0.15, 0.85, 2) * (w, h)
    heading = rng.uniform(0, 2 * np.pi)
    half = max(4, int(rng.uniform(0.3, 0.65) * max(h, w) / step))
    pts = np.vstack(
        [
            _walk(rng, centre, heading + np.pi, half, step)[::-1],
            _walk(rng, centre, heading, half, step)[1:],
        ]
    )
    n = len(pts)
    knots = np.interp(np.arange(n), np.linspace(0, n - 1, 6), rng.normal(0, 1, 6))
    along = np.clip(1 + 0.2 * knots, 0.85, 1.15)  # width wanders along the crack
    taper = np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.15 * n), 0.35, 1.0)
    radii = np.maximum(0.5 * rng.uniform(*CRACK_WIDTH) * scale * along * np.sqrt(taper), 0.7)
    _stroke(field, pts, radii)
    for _ in range(rng.integers(0, 4)):
        i = int(rng.integers(n // 10, n - n // 10))
        local = np.arctan2(*(pts[min(i + 1, n - 1)] - pts[i])[::-1])
        turn = rng.choice([-1, 1]) * rng.uniform(0.45, 1.2)
        m = max(3, int(rng.uniform(0.2, 0.5) * n))
        branch = _walk(rng, pts[i], float(local + turn), m, step)
        r = radii[i] * rng.uniform(0.5, 0.8) * np.linspace(1.0, 0.45, m + 1)
        _stroke(field, branch, np.maximum(r, 0.6))


def _line_through(rng: np.random.Generator, h: int, w: int, angle: float) -> np.ndarray:
    """End points of a straight line at `angle` through a random point, long enough to cross."""
    centre = rng.uniform(0.1, 0.9, 2) * (w, h)
    d = np.array([np.cos(angle), np.sin(angle)]) * (h + w)
    return np.stack([centre - d, centre + d]).astype(np.float32)


def _distractors(
    rng: np.random.Generator, h: int, w: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Darkening and brightening layers of things that are not cracks (same for both classes)."""
    dark = np.zeros((h, w), np.float32)
    bright = np.zeros((h, w), np.float32)
    if rng.random() < 0.35:  # joint: straight, wide, regular, edge to edge
        field = np.full((h, w), -9.0, np.float32)
        axis = rng.integers(0, 4) * np.pi / 2
        angle = axis + rng.normal(0, 0.05) if rng.random() < 0.7 else rng.uniform(0, np.pi)
        _stroke(field, _line_through(rng, h, w, angle), np.full(2, rng.uniform(3.5, 5.5) * scale))
        dark += rng.uniform(0.25, 0.6) * np.clip(field / 1.5 + 1.0, 0, 1)
    stains = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(0, 4)):  # soft dark blobs, some elongated
        c = tuple(int(v) for v in rng.uniform(0, 1, 2) * (w, h))
        axes = tuple(int(v) for v in rng.uniform(4, 22, 2) * scale * (1, rng.uniform(0.25, 1)))
        cv2.ellipse(stains, c, axes, rng.uniform(0, 180), 0, 360, rng.uniform(0.1, 0.4), -1)
    sigma = rng.uniform(2, 6) * scale
    dark += cv2.GaussianBlur(stains, (0, 0), sigma)
    for _ in range(rng.integers(0, 5)):  # scratches: very thin short straight strokes
        field = np.full((h, w), -9.0, np.float32)
        a = rng.uniform(0, 1, 2) * (w, h)
        angle = rng.uniform(0, 2 * np.pi)
        b = a + rng.uniform(8, 35) * scale * np.array([np.cos(angle), np.sin(angle)])
        _stroke(field, np.stack([a, b]).astype(np.float32), np.full(2, 0.5))
        line = np.clip(field + 1.0, 0, 1)
        if rng.random() < 0.6:
            bright += rng.uniform(15, 45) * line
        else:
            dark += rng.uniform(0.08, 0.2) * line
    spots = np.zeros((h, w), np.float32)  # pores (small, dark) and pebbles (bigger, either sign)
    for _ in range(rng.poisson(25 * h * w / 128**2)):
        c = tuple(int(v) for v in rng.uniform(0, 1, 2) * (w, h))
        cv2.circle(spots, c, max(1, int(rng.uniform(0.5, 1.8) * scale)), rng.uniform(0.1, 0.4), -1)
    for _ in range(rng.integers(0, 5)):
        c = tuple(int(v) for v in rng.uniform(0, 1, 2) * (w, h))
        cv2.circle(spots, c, int(rng.uniform(1.5, 4.5) * scale) + 1, rng.uniform(-0.3, 0.3), -1)
    dark += cv2.GaussianBlur(spots, (0, 0), 0.7 * scale)
    return dark, bright


def render_sample(
    rng: np.random.Generator, height: int, width: int, positive: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image HxWx3 uint8, mask HxW uint8 0/255) for one sample."""
    h, w = height, width
    scale = min(h, w) / 128.0
    texture = sum(
        rng.uniform(*amp) * _smooth_noise(rng, h, w, cell * scale)
        for cell, amp in ((60.0, (4, 14)), (12.0, (3, 9)), (4.0, (2, 7)), (1.5, (0, 6)))
    )
    grey = rng.uniform(70, 190) + texture
    dark, bright = _distractors(rng, h, w, scale)
    mask = np.zeros((h, w), np.uint8)
    if positive:
        field = np.full((h, w), -9.0, np.float32)
        for _ in range(1 if rng.random() < 0.65 else 2):
            _crack(rng, field, scale)
        field += 0.45 * _smooth_noise(rng, h, w, 1.5 * scale)  # ragged edges
        mask[field >= 0] = 255
        profile = np.clip(1 - np.exp(-(field + 0.7)), 0, 1)  # darkest on the centre line
        depth = rng.uniform(0.2, 0.7) * (1 + 0.2 * _smooth_noise(rng, h, w, 20 * scale))
        dark = 1 - (1 - np.clip(dark, 0, 0.9)) * (1 - np.clip(depth * profile, 0, 0.9))
    grey = grey * (1 - np.clip(dark, -0.5, 0.9)) + bright
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - w / 2) / max(h, w), (yy - h / 2) / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    gain = 1 + rng.uniform(0, 0.5) * (u * np.cos(angle) + v * np.sin(angle))
    gain -= rng.uniform(0, 0.8) * (u**2 + v**2) - rng.uniform(-0.1, 0.1)
    grey = grey * gain + rng.normal(0, rng.uniform(2, 7), (h, w))
    tint = 1 + rng.normal(0, 0.025, 3)
    image = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    return image, mask


def _matches(root: Path, params: dict) -> bool:
    """True if `root` holds this very dataset; False if there is nothing there (or empty)."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    marker = root / MARKER
    advice = "delete it or pick another root"
    if not marker.is_file():
        raise DataError(f"{root} exists but is not a synthetic dataset (no {MARKER}): {advice}")
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{marker} is unreadable ({err}): {advice}") from err
    found = found if isinstance(found, dict) else {}
    if found != params:
        diff = ", ".join(
            f"{k}={found.get(k)!r} (asked {params.get(k)!r})"
            for k in sorted(set(found) | set(params))
            if found.get(k) != params.get(k)
        )
        raise DataError(f"{root} holds a synthetic dataset made with {diff}: {advice}")
    return True


def generate_synthetic_dataset(
    root: str | Path,
    num_positives: int = 200,
    num_negatives: int = 200,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
) -> Path:
    """Write the dataset under `root` once and return `root`.

    Files: root/images/<name>.png and root/masks/<name>.png (0/255), ``crack_00000.png``...
    for positives and ``noncrack_00000.png``... for negatives (all-zero masks). The marker
    ``root/synthetic.json`` (written last) records the parameters: same parameters return at
    once, different ones raise DataError rather than mixing sets. Generation happens in a
    hidden sibling folder renamed into place, so an interrupted run never looks complete.
    """
    root = Path(root).expanduser()
    params = {
        "generator": GENERATOR,
        "num_positives": int(num_positives),
        "num_negatives": int(num_negatives),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
    }
    if _matches(root, params):
        remove_abandoned_builds(folder_destination(root))  # a sweep's job killed building it
        return root
    if min(height, width) < 8 or min(num_positives, num_negatives, seed) < 0:
        raise ConfigError(f"synthetic data needs sizes >= 8, counts and seed >= 0: {params}")
    start = time.perf_counter()
    target = folder_destination(root).absolute()
    with folder_built_beside(target) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        kinds = ((1, num_positives, "crack"), (0, num_negatives, "noncrack"))
        for positive, count, prefix in kinds:
            for i in range(count):
                rng = np.random.default_rng([seed, i, positive])
                image, mask = render_sample(rng, height, width, bool(positive))
                name = f"{prefix}_{i:05d}.png"
                for folder, array in (("images", image), ("masks", mask)):
                    if not cv2.imwrite(str(tmp / folder / name), array):
                        raise DataError(f"could not write {tmp / folder / name} (disk full?)")
        (tmp / MARKER).write_text(json.dumps(params, indent=2) + "\n")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            tmp.rename(target)
        except OSError:
            if not _matches(root, params):  # another process may have just finished the same set
                raise
    what = f"{num_positives} crack + {num_negatives} non-crack images, {height}x{width}"
    seconds = time.perf_counter() - start
    logger.info(
        "Generated synthetic dataset in %s: %s, seed %d (%.1f s)", root, what, seed, seconds
    )
    return root
