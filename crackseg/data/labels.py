"""Label preparation (docs/method.md §4): binarise, dilate, resize, weight map (their 1/8
size for the loss: crackseg.models.losses.downsample_to_output)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from crackseg.data.data_settings import BINARIZE_THRESHOLD


def binarize(mask: np.ndarray, threshold: int = BINARIZE_THRESHOLD) -> np.ndarray:
    """Defect above ``threshold``: masks are often JPEGs, with artefacts."""
    return mask > threshold


def dilate(mask: np.ndarray, kernel_size: int) -> np.ndarray:
    """Grey dilation with a k×k square kernel; k <= 1 leaves the mask as it is."""
    if kernel_size <= 1:
        return mask
    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(mask.dtype)


def _resize_each_axis(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging along an axis that shrinks, linear along one that grows: in one pass
    where both axes go the same way, else one axis at a time (a 448x448 photograph to
    640x232 grows in height and shrinks in width)."""
    rows, columns = array.shape[:2]
    if (height <= rows) == (width <= columns):
        interpolation = cv2.INTER_AREA if height <= rows else cv2.INTER_LINEAR
        return cv2.resize(array, (width, height), interpolation=interpolation)
    interpolation = cv2.INTER_AREA if height < rows else cv2.INTER_LINEAR
    array = cv2.resize(array, (columns, height), interpolation=interpolation)
    interpolation = cv2.INTER_AREA if width < columns else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interpolation)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an image as its mask is resized (:func:`resize_mask`), so the two stay aligned;
    keeps a channel axis."""
    if image.shape[:2] == (height, width):
        return image
    resized = _resize_each_axis(image, height, width)
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a binary mask to a soft float32 mask in [0, 1]: area averaging along an axis
    that shrinks, linear along one that grows (:func:`_resize_each_axis`).

    Not binarised again, as in the published code, so that a crack thinner than the scale
    factor keeps its (partial) coverage instead of vanishing; the weight map treats every
    covered pixel (> 0) as defect and the 1/8 targets stay soft. The published code resizes
    linearly along both axes, which skips a 1 px crack when shrinking by 2 or more; area
    averaging keeps it.
    """
    return _resize_each_axis(mask.astype(np.float32), height, width)


def prepare_mask(
    raw_mask: np.ndarray,
    height: int,
    width: int,
    dilate_kernel: int = 1,
    threshold: int = BINARIZE_THRESHOLD,
) -> np.ndarray:
    """Stored mask -> soft float32 mask in [0, 1] at the input size (docs/method.md §4, 1-3)."""
    mask = binarize(raw_mask, threshold).astype(np.uint8)
    mask = dilate(mask, dilate_kernel)
    return resize_mask(mask, height, width)


def distance_weight_map(
    mask: np.ndarray, max_weight: float = 1.0, power: float = 2.0, per_component: bool = False
) -> np.ndarray:
    """Defect pixels get ``Max * (d / d_max) ** P``, background pixels 1.

    d is the Euclidean distance to the nearest background pixel; d_max is the largest d in
    the image, or in the pixel's connected component with ``per_component`` (so thin cracks
    beside a thick one are not drowned).
    """
    mask = mask.astype(bool)
    weights = np.ones(mask.shape, np.float32)
    if not mask.any():
        return weights
    distance = ndimage.distance_transform_edt(mask)
    if per_component:
        components, count = ndimage.label(mask, structure=np.ones((3, 3)))
        d_max = ndimage.maximum(distance, components, index=np.arange(1, count + 1))
        d_max = np.concatenate([[1.0], np.asarray(d_max, np.float64)])[components]
    else:
        d_max = distance.max()
    weights[mask] = (
        max_weight * (distance[mask] / np.broadcast_to(d_max, mask.shape)[mask]) ** power
    )
    return weights
