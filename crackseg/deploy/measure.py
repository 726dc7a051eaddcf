"""Length and width of each crack in a binary mask.

A crack is a connected region of the mask (8-connectivity); regions smaller than
``min_pixels`` are specks and are dropped. Per crack:

- **length**: along its skeleton (scikit-image's ``skeletonize`` with Lee's method, which
  follows a thin diagonal crack to its ends where Zhang's erodes it to fragments), its
  spurs pruned (:func:`prune_spurs`: a side branch no longer than the crack is wide, which
  a bump on a ragged edge grows, is no crack of its own), along its middle line smoothed:
  the steps between neighbouring skeleton pixels (a diagonal step counted only where no
  horizontal + vertical pair already joins the two pixels), between the pixels' positions
  after Taubin's smoothing along the skeleton (``SMOOTHING_ROUNDS``; ends and junctions
  stay put), so that neither the staircase of a slanted crack (pixel to pixel, 8% long at
  22.5 degrees) nor the wiggle a ragged edge gives the skeleton (up to 20%) counts as
  length, while its bends keep theirs; plus, at each end of the skeleton, the part of the crack
  thinning removed: how far the crack goes on straight ahead of the end, to its last
  pixel's edge, and at least ``d - 0.5`` where ``d`` is the distance transform there (the
  distance from the end pixel's centre to the nearest background pixel's centre is the
  distance to the crack's edge plus half a pixel). Exact for straight cracks along an axis
  (either axis, any width) or a diagonal, within 1% at any other angle (2% for some
  placements on the pixel grid) and along a curve of radius 10 px or more (within 3% down
  to 5 px); a right-angled corner keeps its length.
- **width** at a skeleton pixel: the Euclidean distance transform
  (``scipy.ndimage.distance_transform_edt``) of the crack enlarged 2x (each pixel a 2x2
  block of half-pixels), its largest value over the pixel's block, in half-pixels. The
  skeleton runs along the middle, and whatever the parity of the width one of a middle
  pixel's four half-pixels lies a quarter pixel from the middle line: its distance to the
  nearest background half-pixel's centre is the distance to the edge plus a quarter pixel,
  so the value in half-pixels is the width edge to edge in pixels. Exact for an
  axis-aligned crack of any width (1, 2, 3, ... px); for slanted cracks within about half
  a pixel of the width their pixels cover (area over length). Where the crack is wider
  than ``2 * EXACT_HALF_WIDTH`` px, ``2d - 0.5`` from the plain distance transform ``d``
  (within half a pixel), so that a wide region costs no more than its own distance transform.
  Mean and maximum over the skeleton.

A region more than ``4 * EXACT_HALF_WIDTH`` px wide somewhere (most often a model's flooded
mask) is thinned on a grid of blocks (:func:`_measure_wide_region`): thinning passes over a
region once per pixel of its half-width, a minute and a half for a 6000x4000 photograph
marked whole; so, 2 s for the whole measurement, most of it the distance transform. Its
skeleton then follows the region at the blocks'
resolution: a simple shape's length is within about a block's side at each end, but detail
finer than a block (branches closer than that, small holes) is lost; its widths are taken
from the full-resolution distance transform, near its middle line.

Millimetres are pixels times ``pixel_size_mm`` (the side of one pixel on the surface).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage.morphology import skeletonize

#: 8-connectivity: pixels touching at a corner belong to one crack.
EIGHT_CONNECTED = np.ones((3, 3), bool)
#: A pixel's 8 neighbours in order around it (row, column offsets), from the one above.
RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


@dataclass(frozen=True)
class Crack:
    """One crack, in pixels; ``x``, ``y``, ``box_width``, ``box_height`` its bounding box."""

    pixels: int
    length: float
    mean_width: float
    max_width: float
    x: int
    y: int
    box_width: int
    box_height: int


#: Rounds of Taubin's smoothing of the skeleton's middle line (a step of ``SMOOTHING_LAMBDA``
#: towards the mean of each pixel's two neighbours, then one of ``SMOOTHING_MU`` away): it
#: damps the pixel-scale zigzag, a slanted crack's staircase and the wiggle a ragged edge
#: gives the middle line, and keeps bends longer than about 13 px, which plain averaging
#: would shrink (a tight curve, by up to 16%).
SMOOTHING_ROUNDS = 40
SMOOTHING_LAMBDA = 0.5
SMOOTHING_MU = -0.53
#: A closed loop of the skeleton shorter than this many pixels, with no end or junction to
#: hold it, is not smoothed: smoothing would shrink it to a point.
SHORTEST_SMOOTHED_LOOP = 16


def skeleton_length(skeleton: np.ndarray, smoothing: int = 0) -> float:
    """Length of the paths through a one-pixel-wide skeleton: the sum of its steps between
    neighbouring pixels (:func:`_skeleton_steps`), from pixel centre to pixel centre, or
    between the pixels' positions after ``smoothing`` rounds (:func:`_smoothed_positions`)."""
    positions, steps = _skeleton_steps(skeleton)
    if smoothing > 0 and len(steps):
        positions = _smoothed_positions(positions, steps, smoothing)
    between = positions[steps[:, 0]] - positions[steps[:, 1]]
    return float(np.hypot(between[:, 0], between[:, 1]).sum())


def _skeleton_steps(skeleton: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The skeleton's pixels (row, column) and its steps, as pairs of their indices: to a
    horizontal or vertical neighbour, and to a diagonal one not already joined through a
    shared horizontal or vertical neighbour (an L-shaped corner is two steps, not three)."""
    height, width = skeleton.shape
    rows, columns = np.nonzero(skeleton)
    index = np.full((height + 2, width + 2), -1)
    index[rows + 1, columns + 1] = np.arange(len(rows))
    s = index >= 0

    def shifted(grid: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return grid[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    centre = shifted(s, 0, 0)
    right, below, left = shifted(s, 0, 1), shifted(s, 1, 0), shifted(s, 0, -1)
    steps = []
    for (dy, dx), allowed in (
        ((0, 1), True),
        ((1, 0), True),
        ((1, 1), ~right & ~below),
        ((1, -1), ~left & ~below),
    ):
        taken = centre & shifted(s, dy, dx) & allowed
        steps.append(np.stack([shifted(index, 0, 0)[taken], shifted(index, dy, dx)[taken]], 1))
    return np.stack([rows, columns], 1).astype(float), np.concatenate(steps)


def _smoothed_positions(positions: np.ndarray, steps: np.ndarray, rounds: int) -> np.ndarray:
    """The skeleton pixels' positions after ``rounds`` of Taubin's smoothing along the
    skeleton (:data:`SMOOTHING_ROUNDS`). Only a pixel on a path moves (two neighbours): an end
    stays put, so the crack keeps its length to it, and so does a junction."""
    count = len(positions)
    pixel = np.concatenate([steps[:, 0], steps[:, 1]])  # each step seen from both of its ends
    neighbour = np.concatenate([steps[:, 1], steps[:, 0]])
    moves = np.bincount(pixel, minlength=count) == 2
    if not moves.any():
        return positions
    adjacency = sparse.csr_matrix((np.ones(len(pixel)), (pixel, neighbour)), shape=(count, count))
    _, piece = csgraph.connected_components(adjacency, directed=False)
    held = np.bincount(piece, weights=~moves)
    size = np.bincount(piece)
    moves &= ~((held[piece] == 0) & (size[piece] < SHORTEST_SMOOTHED_LOOP))  # a small loop
    moving = np.flatnonzero(moves)
    first = adjacency.indices[adjacency.indptr[moving]]  # a moving pixel's two neighbours
    second = adjacency.indices[adjacency.indptr[moving] + 1]
    smoothed = positions[:, 0] + 1j * positions[:, 1]  # (row, column) as one number: quicker
    for _ in range(rounds):
        for factor in (SMOOTHING_LAMBDA, SMOOTHING_MU):
            now = smoothed[moving]
            smoothed[moving] = now + factor * ((smoothed[first] + smoothed[second]) / 2 - now)
    return np.stack([smoothed.real, smoothed.imag], 1)


def _end_extension(skeleton: np.ndarray, distance: np.ndarray, region: np.ndarray) -> float:
    """The crack beyond the skeleton's ends, which thinning shortens. At an end: as far as
    the crack goes on straight ahead of it (away from its one neighbour), to the edge of
    its last pixel, and at least its half-width there (``d - 0.5``): Lee's thinning stops
    an even-width crack one pixel shorter at each end vertically than horizontally, so the
    half-width alone measured it 2 px short one way and exactly the other. A lone skeleton
    pixel (a dot) has both ends at once, its half-width each."""
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), EIGHT_CONNECTED.astype(np.uint8))
    neighbours = neighbours.astype(int) - 1
    lone = skeleton & (neighbours == 0)
    total = 2 * float((distance[lone] - 0.5).sum())
    for y, x in np.argwhere(skeleton & (neighbours == 1)):
        around = skeleton[y - 1 : y + 2, x - 1 : x + 2].copy()
        around[1, 1] = False
        ((ny, nx),) = np.argwhere(around)
        dy, dx = 1 - ny, 1 - nx  # away from the neighbour
        steps = 0
        while region[y + (steps + 1) * dy, x + (steps + 1) * dx]:  # padded: ends in background
            steps += 1
        ahead = steps * math.hypot(dy, dx) + 0.5
        total += max(ahead, float(distance[y, x]) - 0.5)
    return total


def measure_crack(region: np.ndarray) -> tuple[float, float, float]:
    """(length, mean width, max width) in pixels of one connected region, cropped to its
    bounding box; what lies outside the box (the image's border too) is background."""
    padded = np.pad(region, 1)  # thinning and distances need background all around
    distance = ndimage.distance_transform_edt(padded)
    if distance.max() > 2 * EXACT_HALF_WIDTH:
        return _measure_wide_region(padded, distance, int(distance.max() // EXACT_HALF_WIDTH))
    skeleton = _pruned_skeleton(padded, distance)
    widths = _widths(padded, skeleton, distance)
    length = skeleton_length(skeleton, SMOOTHING_ROUNDS)
    length += _end_extension(skeleton, distance, padded)
    return length, float(widths.mean()), float(widths.max())


def _pruned_skeleton(padded: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Lee's skeleton of a region with background all around, its spurs pruned."""
    # Lee's thinning keeps every connected region at least one pixel: never empty.
    # bool whatever the scikit-image release (before 0.23 Lee's method gave 0/255 uint8)
    skeleton = skeletonize(padded, method="lee").astype(bool, copy=False)
    return prune_spurs(skeleton, distance)


def _measure_wide_region(
    padded: np.ndarray, distance: np.ndarray, scale: int
) -> tuple[float, float, float]:
    """:func:`measure_crack` of a region more than ``4 * EXACT_HALF_WIDTH`` px wide somewhere
    (most often a flooded mask: no crack is so wide), padded with background, ``distance``
    its distance transform. Thinning passes over the whole region once per pixel of its
    half-width (a minute and a half for a 6000x4000 photograph marked whole), so it is
    thinned on a grid of ``scale`` x ``scale`` blocks instead (``scale`` its half-width over
    ``EXACT_HALF_WIDTH``; a block is crack where any of its pixels is), and its length is
    the blocks' times ``scale`` (for a simple shape within about ``scale`` px at each end;
    detail finer than a block is lost). Its widths are taken at full resolution, each at the
    pixel of a skeleton block farthest inside the crack."""
    region = padded[1:-1, 1:-1]
    height, width = region.shape
    rows, columns = -(-height // scale), -(-width // scale)
    grid = np.zeros((rows * scale, columns * scale), bool)
    grid[:height, :width] = region
    blocks = np.pad(grid.reshape(rows, scale, columns, scale).any(axis=(1, 3)), 1)
    block_distance = ndimage.distance_transform_edt(blocks)
    skeleton = _pruned_skeleton(blocks, block_distance)
    length = skeleton_length(skeleton, SMOOTHING_ROUNDS)
    length += _end_extension(skeleton, block_distance, blocks)
    # Each skeleton block's pixels (clipped to the region: past its edge, its last row or
    # column again), and the one of them farthest inside.
    block_rows, block_columns = np.nonzero(skeleton[1:-1, 1:-1])
    within = np.arange(scale)
    pixel_rows = np.minimum(block_rows[:, None] * scale + within, height - 1)[:, :, None]
    pixel_columns = np.minimum(block_columns[:, None] * scale + within, width - 1)[:, None, :]
    per_block = distance[1:-1, 1:-1][pixel_rows, pixel_columns].reshape(len(block_rows), -1)
    deepest = per_block.argmax(axis=1)
    at = np.zeros(padded.shape, bool)
    at[
        pixel_rows[:, :, 0][np.arange(len(deepest)), deepest // scale] + 1,
        pixel_columns[:, 0, :][np.arange(len(deepest)), deepest % scale] + 1,
    ] = True
    widths = _widths(padded, at, distance)
    return scale * length, float(widths.mean()), float(widths.max())


def _arms(skeleton: np.ndarray) -> np.ndarray:
    """How many separate runs of skeleton pixels surround each pixel (0 off the skeleton):
    1 at an end, 2 along a path, 3 or more where branches meet."""
    s = np.pad(skeleton, 1)
    height, width = skeleton.shape
    ring = [s[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in RING]
    starts = sum((~ring[i - 1] & ring[i]).astype(np.uint8) for i in range(len(ring)))
    return np.where(skeleton, starts, 0)


def prune_spurs(skeleton: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The skeleton without its spurs: a branch from an end to where branches meet that is
    at most as long as the crack is wide there plus a pixel (``2 d + 1``, ``d`` the distance
    transform at the meeting point). Each bump on a ragged edge grows one, which would count
    as crack (a straight crack 11 px wide, its edges ragged every pixel, measured 367 px
    for 200). Where several spurs meet, the shortest goes first and the rest are judged
    again: the two arms of a forked end keep the longer as the crack's end."""
    skeleton = np.pad(skeleton, 1)  # every pixel has 8 neighbours to look at
    distance = np.pad(distance, 1)
    limit = 2 * float(distance.max()) + 1  # no spur is longer
    while True:
        arms = _arms(skeleton)
        junctions = arms >= 3
        if not junctions.any():
            break
        meeting_points, _ = ndimage.label(junctions, structure=EIGHT_CONNECTED)
        shortest: dict[int, tuple[float, list[tuple[int, int]]]] = {}
        for y, x in np.argwhere(arms == 1):
            spur = _trace_to_junction(skeleton, junctions, (int(y), int(x)), limit)
            if spur is None:
                continue
            pixels, length, meeting = spur
            point = int(meeting_points[meeting])
            if length <= 2 * distance[meeting] + 1 and length < shortest.get(point, (limit,))[0]:
                shortest[point] = (length, pixels)
        if not shortest:
            break
        for _, pixels in shortest.values():
            skeleton[tuple(np.array(pixels).T)] = False
    return skeleton[1:-1, 1:-1]


def _trace_to_junction(
    skeleton: np.ndarray, junctions: np.ndarray, end: tuple[int, int], limit: float
) -> tuple[list[tuple[int, int]], float, tuple[int, int]] | None:
    """The pixels from ``end`` along the skeleton to a junction (not included), the length
    to it, and the junction; None where the way forks first, ends without one, or grows
    longer than ``limit``."""
    path, length = [end], 0.0
    seen = {end}
    while True:
        y, x = path[-1]
        ahead = [
            (y + dy, x + dx)
            for dy, dx in RING
            if skeleton[y + dy, x + dx] and (y + dy, x + dx) not in seen
        ]
        # a straight step before a diagonal one (two pixels side by side: a corner)
        ahead.sort(key=lambda p: abs(p[0] - y) + abs(p[1] - x))
        met = [p for p in ahead if junctions[p]]
        if met:
            return path, length + math.hypot(met[0][0] - y, met[0][1] - x), met[0]
        if not ahead:
            return None  # the whole piece is one path
        if len(ahead) > 2 or (len(ahead) == 2 and math.dist(*ahead) > 1):
            return None  # it forks without a junction: left as it is
        step = ahead[0]
        length += math.hypot(step[0] - y, step[1] - x)
        if length > limit:
            return None
        path.append(step)
        seen.add(step)


#: Half-widths (the distance transform at the skeleton, in pixels) up to which a width is
#: measured to the half-pixel; wider, ``2d - 0.5`` is within half a pixel of it.
EXACT_HALF_WIDTH = 32
#: The side, in pixels, of the blocks whose 2x-enlarged distance transform is taken at once:
#: over a whole region it would take ~64 bytes per pixel of its bounding box.
WIDTH_BLOCK = 512


def _widths(mask: np.ndarray, at: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The crack's width at the skeleton pixels ``at``, in pixels: to the half-pixel where
    it is at most ``2 * EXACT_HALF_WIDTH`` wide, ``2d - 0.5`` where it is wider."""
    wide = at & (distance > EXACT_HALF_WIDTH)
    widths = [2 * distance[wide] - 0.5]
    if (at & ~wide).any():
        widths.append(_half_pixel_widths(mask, at & ~wide, reach=EXACT_HALF_WIDTH))
    return np.concatenate(widths)


def _half_pixel_widths(mask: np.ndarray, at: np.ndarray, reach: float) -> np.ndarray:
    """At the pixels ``at``, the largest distance transform of ``mask`` enlarged 2x over the
    pixel's 2x2 block of half-pixels, in half-pixels: the crack's width where the pixel lies
    on its middle line. Block by block: the nearest background of every pixel of ``at``
    lies within ``reach`` (at least its distance transform), so a block widened by it gives
    its pixels the values of the whole."""
    height, width = mask.shape
    margin = math.ceil(reach) + 1
    widths = []
    for y0 in range(0, height, WIDTH_BLOCK):
        for x0 in range(0, width, WIDTH_BLOCK):
            core = np.s_[y0 : y0 + WIDTH_BLOCK, x0 : x0 + WIDTH_BLOCK]
            wanted = at[core]
            if not wanted.any():
                continue
            top, left = max(y0 - margin, 0), max(x0 - margin, 0)
            window = mask[top : y0 + WIDTH_BLOCK + margin, left : x0 + WIDTH_BLOCK + margin]
            halves = window.repeat(2, axis=0).repeat(2, axis=1)
            distance = ndimage.distance_transform_edt(halves)
            rows, columns = window.shape
            block = distance.reshape(rows, 2, columns, 2).max(axis=(1, 3))
            inner = block[
                y0 - top : y0 - top + wanted.shape[0], x0 - left : x0 - left + wanted.shape[1]
            ]
            widths.append(inner[wanted])
    return np.concatenate(widths)


def measure_cracks(mask: np.ndarray, min_pixels: int = 1) -> list[Crack]:
    """Every crack of ``mask`` (HxW, nonzero = crack) with at least ``min_pixels`` pixels,
    in the order of their top-left-most pixel."""
    labels, count = ndimage.label(mask > 0, structure=EIGHT_CONNECTED)
    cracks = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == index
        pixels = int(np.count_nonzero(region))
        if pixels < min_pixels:
            continue
        length, mean_width, max_width = measure_crack(region)
        ys, xs = box
        cracks.append(
            Crack(
                pixels=pixels,
                length=length,
                mean_width=mean_width,
                max_width=max_width,
                x=xs.start,
                y=ys.start,
                box_width=xs.stop - xs.start,
                box_height=ys.stop - ys.start,
            )
        )
    return cracks


@dataclass(frozen=True)
class CrackSummary:
    """An image's cracks together: their count, total length, the widest point of any,
    and the mean width over all of their skeletons (longer cracks weigh more)."""

    count: int
    total_length: float
    max_width: float
    mean_width: float


def summarise(cracks: list[Crack]) -> CrackSummary:
    if not cracks:
        return CrackSummary(0, 0.0, 0.0, 0.0)
    total = sum(c.length for c in cracks)
    weighted = sum(c.mean_width * c.length for c in cracks) / total if total > 0 else 0.0
    return CrackSummary(len(cracks), total, max(c.max_width for c in cracks), weighted)
