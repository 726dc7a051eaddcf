"""Training-time augmentation with albumentations, applied jointly to image, mask and weights."""

from __future__ import annotations

import logging

import albumentations as A

log = logging.getLogger(__name__)


def build_augmentation(
    *,
    enabled: bool = False,
    hflip: float = 0.5,
    vflip: float = 0.5,
    rotate90: float = 0.5,
    brightness_contrast: float = 0.5,
    brightness_limit: float = 0.2,
    contrast_limit: float = 0.2,
    square: bool = True,
) -> A.Compose | None:
    """The geometric transforms move the mask and the weight map with the image.

    A 90° rotation would change the shape of a non-square input, so it is used only when
    ``square`` (the input height equals its width).
    """
    if not enabled:
        return None
    transforms: list[A.BasicTransform] = [A.HorizontalFlip(p=hflip), A.VerticalFlip(p=vflip)]
    if rotate90 > 0 and square:
        transforms.append(A.RandomRotate90(p=rotate90))
    elif rotate90 > 0:
        log.info("90-degree rotations left out: the input is not square")
    transforms.append(
        A.RandomBrightnessContrast(
            brightness_limit=brightness_limit, contrast_limit=contrast_limit, p=brightness_contrast
        )
    )
    return A.Compose(transforms, additional_targets={"weight": "mask"})
