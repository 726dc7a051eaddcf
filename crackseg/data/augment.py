"""Training-time augmentation with albumentations, applied jointly to image, mask and weights."""

from __future__ import annotations

import logging

import albumentations as A

from crackseg.data.data_settings import AugmentSettings

log = logging.getLogger(__name__)


def build_augmentation(settings: AugmentSettings, square: bool) -> A.Compose | None:
    """The geometric transforms move the mask and the weight map with the image.

    A 90° rotation would change the shape of a non-square input, so it is used only when
    ``square`` (the input height equals its width).
    """
    if not settings.enabled:
        return None
    transforms: list[A.BasicTransform] = [
        A.HorizontalFlip(p=settings.hflip),
        A.VerticalFlip(p=settings.vflip),
    ]
    if settings.rotate90 > 0 and square:
        transforms.append(A.RandomRotate90(p=settings.rotate90))
    elif settings.rotate90 > 0:
        log.info("90-degree rotations left out: the input is not square")
    transforms.append(
        A.RandomBrightnessContrast(
            brightness_limit=settings.brightness_limit,
            contrast_limit=settings.contrast_limit,
            p=settings.brightness_contrast,
        )
    )
    return A.Compose(transforms, additional_targets={"weight": "mask"})
