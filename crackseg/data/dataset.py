"""A map-style dataset that reads one sample lazily and prepares its labels."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from crackseg.data.data_settings import WeightMapSettings
from crackseg.data.io import read_image, read_mask
from crackseg.data.labels import (
    BINARIZE_THRESHOLD,
    distance_weight_map,
    prepare_mask,
    resize_image,
)
from crackseg.data.samples import Sample


class CrackDataset(Dataset):
    """Images and masks read from disk on access, so memory does not grow with the dataset.

    An item is a dict: ``image`` [C,H,W] float in [0,1], ``mask`` [1,H,W] float in [0,1]
    (soft: binarised, dilated, then resized; crackseg.data.labels.prepare_mask),
    ``weight`` [1,H,W] float, ``label`` float (1 = defect), ``segmented`` bool (False for
    weak positives, whose ``mask`` is all zero unless ``weak_masks`` loads it), ``mask_known``
    bool (whether ``mask`` is the sample's mask: negatives, segmented positives, and with
    ``weak_masks`` the weak positives that have one on disk) and ``index``.
    ``segmented_ids`` lists the positives whose masks are used; None means all with a mask.
    ``weak_masks`` loads the weak positives' masks too, for a decision target taken from them
    (``loss.decision_target=mask_max_all``); they stay weak: ``segmented`` is False, so they
    add no segmentation loss.
    An item is asked for by index, or by ``(index, seed)``: the seed then drives the random
    augmentation of that item (the training sampler draws it), so it is reproducible.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        height: int,
        width: int,
        dilate: int = 1,
        binarize_threshold: int = BINARIZE_THRESHOLD,
        segmented_ids: set[str] | None = None,
        weak_masks: bool = False,
        weight_map: WeightMapSettings | None = None,
        transform: A.BasicTransform | A.Compose | None = None,
    ) -> None:
        self.samples = list(samples)
        self.channels = channels
        self.height = height
        self.width = width
        self.dilate = dilate
        self.binarize_threshold = binarize_threshold
        self.segmented_ids = segmented_ids
        self.weak_masks = weak_masks
        self.weight_map = weight_map
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def is_segmented(self, sample: Sample) -> bool:
        if not sample.is_positive:
            return True
        if sample.mask_path is None:
            return False
        return self.segmented_ids is None or sample.sample_id in self.segmented_ids

    def mask_known(self, sample: Sample) -> bool:
        """Whether the item's ``mask`` is the sample's own (else all zero, unknown)."""
        if not sample.is_positive:
            return True
        return self.is_segmented(sample) or (self.weak_masks and sample.mask_path is not None)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        """Image HxWxC uint8, soft float32 mask HxW at the input size, whether the sample is
        segmented, and whether the mask is its own (``segmented`` and ``mask_known`` items).

        A positive whose mask is empty is weak, mask unknown: the mask contradicts the label
        (``data.check_files`` finds these before training, and says so).
        """
        sample = self.samples[index]
        image = resize_image(read_image(sample.image_path, self.channels), self.height, self.width)
        segmented, known = self.is_segmented(sample), self.mask_known(sample)
        if sample.is_positive and known:
            mask = prepare_mask(
                read_mask(sample.mask_path),
                self.height,
                self.width,
                dilate_kernel=self.dilate,
                threshold=self.binarize_threshold,
            )
            if not mask.any():
                segmented = known = False
        else:
            mask = np.zeros((self.height, self.width), np.float32)
        return image, mask, segmented, known

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        image, mask, segmented, known = self.load(index)
        if self.weight_map is not None:
            weight = distance_weight_map(
                mask,
                self.weight_map.max_weight,
                self.weight_map.power,
                self.weight_map.per_component,
            )
        else:
            weight = np.ones(mask.shape, np.float32)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask, weight=weight)
            image, mask, weight = out["image"], out["mask"], out["weight"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255,
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float(),
            "weight": torch.from_numpy(np.ascontiguousarray(weight))[None].float(),
            "label": torch.tensor(float(sample.is_positive)),
            "segmented": torch.tensor(segmented),
            "mask_known": torch.tensor(known),
            "index": torch.tensor(index),
        }
