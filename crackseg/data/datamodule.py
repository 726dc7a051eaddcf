"""The LightningDataModule: splits, mixed supervision, balanced sampling, loaders."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from crackseg.data.augment import build_augmentation
from crackseg.data.dataset import CrackDataset, WeightMapConfig
from crackseg.data.io import image_size
from crackseg.data.layouts import check_samples, index_layout
from crackseg.data.sampler import BalancedNegativeSampler
from crackseg.data.samples import Sample, count_positives
from crackseg.data.splits import resolve_splits, segmented_from_file, write_split_csv
from crackseg.errors import ConfigError, DataError, describe_files

log = logging.getLogger(__name__)

#: Evaluation batches on a CPU hold about this many input pixels: the paper's network at
#: 640x232 predicts 18 % fewer images/s at batch 8 than at batch 1 (its activations outgrow
#: the caches), the narrow demo network at 128x128 27 % more (benchmarks/README.md).
CPU_EVAL_PIXELS = 2**17
MAX_CPU_EVAL_BATCH = 16
#: A GPU wants batches.
GPU_EVAL_BATCH = 16


def eval_batch_size(
    setting: int | str | None, batch_size: int, device_type: str, pixels: int
) -> int:
    """``data.eval_batch_size``: a number, null (the training batch size), or ``auto``: 16 on
    a GPU; on a CPU as many images of ``pixels`` (height x width) as make ~2^17 pixels,
    1 to 16."""
    if setting is None:
        return batch_size
    if str(setting) != "auto":
        return int(setting)
    if device_type == "cuda":
        return GPU_EVAL_BATCH
    return max(1, min(MAX_CPU_EVAL_BATCH, CPU_EVAL_PIXELS // max(1, pixels)))


def worker_start_method() -> str | None:
    """How loader workers are started: the platform's way (None), except inside a job of a
    local parallel sweep, whose joblib (loky) process makes loky's own start method the
    default, and that one cannot start a DataLoader's workers."""
    method = multiprocessing.get_start_method(allow_none=True)
    known = multiprocessing.get_all_start_methods()
    if method is None or method in known:
        return None
    return "fork" if "fork" in known else "spawn"


def choose_segmented(positives: list[Sample], num_segmented: int | None, seed: int) -> set[str]:
    """Ids of the training positives that keep their masks, chosen reproducibly.

    ``None`` keeps every mask. Positives without a mask on disk are weak whatever is asked.
    """
    with_mask = sorted(s.sample_id for s in positives if s.mask_path is not None)
    if num_segmented is None:
        return set(with_mask)
    if not 0 <= num_segmented <= len(with_mask):
        raise ConfigError(
            f"data.num_segmented={num_segmented} but the training split has "
            f"{len(with_mask)} positives with masks (use 0..{len(with_mask)} or null for all)"
        )
    order = np.random.default_rng(seed).permutation(len(with_mask))
    return {with_mask[i] for i in order[:num_segmented]}


def read_ranked_ids(path: str | Path) -> list[str]:
    """The sample ids of a ranking, in file order: ``weak_ranking.csv`` (written by
    crackseg.evaluation.weak_ranking) or any CSV with a ``sample_id`` column."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "sample_id" not in reader.fieldnames:
            raise ValueError(f"{path} has no sample_id column")
        return [row["sample_id"] for row in reader if row["sample_id"]]


def extra_segmented_ids(
    positives: list[Sample], segmented: set[str], ranking: str | Path, count: int
) -> set[str]:
    """The first ``count`` weak positives of a ranking (``weak_ranking.csv``), to train as
    segmented: their masks were drawn after a run ranked them as the most uncertain."""
    path = Path(ranking).expanduser()
    try:
        ranked = read_ranked_ids(path)
    except OSError as error:
        reason = error.strerror or error
        raise DataError(f"data.extra_segmented.ranking: cannot read {path}: {reason}") from error
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        message = f"data.extra_segmented.ranking: {path} is not a ranking: {error}"
        raise DataError(message) from error
    with_mask = {s.sample_id for s in positives if s.mask_path is not None}
    unknown = [i for i in ranked if i not in with_mask]
    if unknown:
        raise DataError(
            f"data.extra_segmented.ranking names images that are not training positives with "
            f"a mask: {describe_files(unknown)}"
        )
    chosen = [i for i in ranked if i not in segmented][:count]
    if len(chosen) < count:
        raise DataError(
            f"data.extra_segmented.count={count} but {path} ranks only {len(chosen)} weak positives"
        )
    log.info("segmented besides the %d chosen at random: %d from %s", len(segmented), count, path)
    return set(chosen)


def input_scaling(samples: list[Sample], height: int, width: int) -> dict[str, Any] | None:
    """How training images reached the network's input size: ``native`` when every one of
    them already has it (tiles), else ``resize``, with the most common source size.

    Read from the file headers; prediction on new photographs applies the same scaling.
    """
    if not samples:
        return None
    sizes = Counter(image_size(s.image_path) for s in samples)
    (source_h, source_w), _ = sizes.most_common(1)[0]
    mode = "native" if set(sizes) == {(height, width)} else "resize"
    return {"mode": mode, "source_height": source_h, "source_width": source_w}


class CrackDataModule(pl.LightningDataModule):
    """Owns the train/validation/test split and the frequency-of-use sampler.

    ``split_seed`` fixes the split and which positives keep masks (so runs that sweep
    ``seed`` share one split); ``seed`` drives the sampler.

    ``layout`` and ``layout_options`` say how the files under ``root`` are organised
    (``crackseg.data.layouts``). ``synthetic`` (a dict of generator arguments) makes the
    embedded synthetic dataset under ``root`` first; ``download`` (url, sha256) fetches an
    archive there; ``tile`` (source and ``crackseg-data tile`` settings) cuts large
    photographs into tiles there. All happen in ``prepare_data``, once per machine.
    """

    def __init__(
        self,
        root: str,
        name: str = "dataset",
        layout: str = "crack_segmentation",
        layout_options: dict[str, Any] | None = None,
        synthetic: dict[str, Any] | None = None,
        download: dict[str, Any] | None = None,
        tile: dict[str, Any] | None = None,
        input_channels: int = 3,
        input_height: int = 640,
        input_width: int = 232,
        batch_size: int = 1,
        eval_batch_size: int | str | None = "auto",
        num_workers: int = 0,
        dilate: int = 1,
        binarize_threshold: int = 127,
        num_segmented: int | None = None,
        frequency_sampling: bool = True,
        neg_per_pos: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_file: str | None = None,
        num_folds: int | None = None,
        fold: int | None = None,
        train_positives: int | None = None,
        check_files: bool = True,
        validate_on_test: bool = False,
        weighted_seg: bool = False,
        weighted_seg_max: float = 1.0,
        weighted_seg_p: float = 2.0,
        weighted_seg_per_component: bool = False,
        augment: dict[str, Any] | None = None,
        all_as_test: bool = False,
        extra_segmented: dict[str, Any] | None = None,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if input_channels not in (1, 3):
            raise ConfigError(f"data.input_channels must be 1 or 3, not {input_channels}")
        self.root = Path(root).expanduser()
        self.name = name
        self.layout = layout
        self.layout_options = dict(layout_options or {})
        self.synthetic = dict(synthetic) if synthetic else None
        self.download = dict(download) if download else None
        self.tile = dict(tile) if tile else None
        self.input_channels = input_channels
        self.input_height = input_height
        self.input_width = input_width
        self.batch_size = batch_size
        self.eval_batch_size_setting = eval_batch_size
        self.num_workers = num_workers
        self.dilate = dilate
        self.binarize_threshold = binarize_threshold
        self.num_segmented = num_segmented
        self.frequency_sampling = frequency_sampling
        self.neg_per_pos = neg_per_pos
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_file = split_file
        self.num_folds = num_folds
        self.fold = fold
        self.train_positives = train_positives
        self.check_files = check_files
        self.validate_on_test = validate_on_test
        self.weight_map = (
            WeightMapConfig(weighted_seg_max, weighted_seg_p, weighted_seg_per_component)
            if weighted_seg
            else None
        )
        self.augment = dict(augment or {})
        self.all_as_test = all_as_test
        self.extra_segmented = dict(extra_segmented or {})
        self.split_seed = split_seed
        self.seed = seed
        self.splits: dict[str, list[Sample]] | None = None
        self.segmented_ids: set[str] = set()
        self._sampler: BalancedNegativeSampler | None = None
        self._resume_state: dict[str, Any] | None = None
        #: How the training images reached the input size (recorded in checkpoints).
        self.input_scaling: dict[str, Any] | None = None

    # -- preparation -------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from crackseg.data.synthetic import generate_synthetic_dataset

            generate_synthetic_dataset(self.root, **self.synthetic)
        elif self.download is not None:
            from crackseg.data.download import prepare_dataset

            prepare_dataset(self.root, self.download["url"], self.download.get("sha256"))
        elif self.tile is not None:
            from crackseg.data.tools import prepare_tiles

            tiling = dict(self.tile)
            prepare_tiles(self.root, tiling.pop("source"), **tiling)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if not self.root.exists():
            raise DataError(f"data root {self.root} does not exist (set data.root=PATH)")
        indexed = index_layout(self.layout, self.root, **self.layout_options)
        if self.all_as_test:
            # Someone else's labelled folder, evaluated as a whole with a checkpoint's thresholds.
            everything = sorted(
                (s for samples in indexed.values() for s in samples), key=lambda s: s.sample_id
            )
            splits = {"train": [], "val": [], "test": everything}
        else:
            splits = resolve_splits(
                indexed,
                self.val_fraction,
                self.test_fraction,
                self.split_seed,
                self.split_file,
                num_folds=self.num_folds,
                fold=self.fold,
                train_positives=self.train_positives,
            )
        if self.check_files:
            splits = {
                name: check_samples(samples, self.binarize_threshold, desc=f"checking {name}")
                for name, samples in splits.items()
            }
        if not splits["train"] and stage in (None, "fit"):
            raise DataError(f"the training split of {self.root} is empty")
        if not splits["test"] and self.all_as_test:
            raise DataError(f"no images to evaluate in {self.root}")
        self.input_scaling = input_scaling(splits["train"], self.input_height, self.input_width)
        train_positives = [s for s in splits["train"] if s.is_positive]
        # A split file that marks segmented positives (a published split) decides them.
        recorded = None
        if self.split_file is not None and not self.all_as_test:
            recorded = segmented_from_file(self.split_file, train_positives, self.num_segmented)
        if recorded is not None:
            self.segmented_ids = recorded
        else:
            self.segmented_ids = choose_segmented(
                train_positives, self.num_segmented, self.split_seed
            )
        if self.extra_segmented.get("ranking"):
            self.segmented_ids |= extra_segmented_ids(
                train_positives,
                self.segmented_ids,
                self.extra_segmented["ranking"],
                int(self.extra_segmented.get("count", 10)),
            )
        self.splits = splits
        for name in ("train", "val", "test"):
            pos, neg = count_positives(splits[name])
            log.info("%s split: %d positives, %d negatives", name, pos, neg)

    # -- datasets ----------------------------------------------------------------------
    def _dataset(self, split: str, training: bool = False) -> CrackDataset:
        """Evaluation datasets keep every mask undilated: Dice is measured on the true mask."""
        assert self.splits is not None, "call setup() first"
        transform = None
        if training:
            transform = build_augmentation(
                **self.augment, square=self.input_height == self.input_width
            )
        return CrackDataset(
            self.splits[split],
            channels=self.input_channels,
            height=self.input_height,
            width=self.input_width,
            dilate=self.dilate if training else 1,
            binarize_threshold=self.binarize_threshold,
            segmented_ids=self.segmented_ids if training else None,
            weight_map=self.weight_map if training else None,
            transform=transform,
        )

    @property
    def val_split(self) -> str:
        return "test" if self.validate_on_test else "val"

    def dataset(self, split: str) -> CrackDataset:
        """The evaluation dataset of a split ('train', 'val' or 'test'), without augmentation."""
        return self._dataset(split)

    def train_sampler(self) -> BalancedNegativeSampler:
        samples = self.splits["train"]
        sampler = BalancedNegativeSampler(
            [i for i, s in enumerate(samples) if s.is_positive],
            [i for i, s in enumerate(samples) if not s.is_positive],
            frequency_of_use=self.frequency_sampling,
            neg_per_pos=self.neg_per_pos,
            seed=self.seed,
            augmentation_seeds=True,
        )
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            sampler.load_state_dict(state["sampler"])
            sampler.resume_at(sampler.epoch, state["batches_done"] * self.batch_size)
        return sampler

    # -- resuming ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the sampler (and its epoch), and the batches done in it.

        A checkpoint written mid-epoch (SIGTERM, Ctrl-C) resumes after those batches, with
        the same samples and augmentations an uninterrupted run would have seen.
        """
        if self._sampler is None or self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"sampler": self._sampler.state_dict(), "batches_done": progress.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_state = state_dict
            # Lightning warns about mid-epoch checkpoints of loaders it cannot fast-forward;
            # this module fast-forwards its sampler itself.
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended"
            )

    @property
    def _device_type(self) -> str:
        trainer = self.trainer
        return trainer.strategy.root_device.type if trainer is not None else "cpu"

    @property
    def eval_batch_size(self) -> int:
        """Validation and test batch size; ``auto`` chooses by the device the run uses."""
        pixels = self.input_height * self.input_width
        return eval_batch_size(
            self.eval_batch_size_setting, self.batch_size, self._device_type, pixels
        )

    def _loader(self, dataset: CrackDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        # Pinned host memory lets batches reach a GPU asynchronously (non-blocking copies).
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._device_type == "cuda",
            multiprocessing_context=worker_start_method() if self.num_workers > 0 else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        self._sampler = self.train_sampler()
        return self._loader(
            self._dataset("train", training=True), self.batch_size, sampler=self._sampler
        )

    def _eval_loader(self, split: str) -> DataLoader:
        """Each process evaluates its shard; the metrics gather them and drop the padding."""
        dataset = self._dataset(split)
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
        return self._loader(dataset, self.eval_batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # -- facts for the report ----------------------------------------------------------
    def split_counts(self) -> dict[str, tuple[int, int]]:
        """(positives, negatives) per split, as in the seed report's table."""
        assert self.splits is not None, "call setup() first"
        return {name: count_positives(samples) for name, samples in self.splits.items()}

    @property
    def num_segmented_train(self) -> int:
        return len(self.segmented_ids)

    def weak_train_indices(self) -> list[int]:
        """Positions in the training split of its weak positives (no mask used)."""
        assert self.splits is not None, "call setup() first"
        return [
            i
            for i, s in enumerate(self.splits["train"])
            if s.is_positive and s.sample_id not in self.segmented_ids
        ]

    def save_split(self, path: str | Path) -> None:
        """Write the split used (and which positives kept masks) to a CSV that reproduces it."""
        assert self.splits is not None, "call setup() first"
        marked = {
            name: [
                s
                if not s.is_positive or name != "train" or s.sample_id in self.segmented_ids
                else Sample(s.sample_id, s.image_path, None, True)
                for s in samples
            ]
            for name, samples in self.splits.items()
        }
        write_split_csv(path, marked)
