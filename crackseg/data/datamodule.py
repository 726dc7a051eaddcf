"""The LightningDataModule: builds the training and evaluation loaders of a run's split."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from crackseg.data.augment import build_augmentation
from crackseg.data.data_settings import (
    DATA_MAKERS,
    AugmentSettings,
    InputSize,
    LabelSettings,
    LoaderSettings,
    SamplingSettings,
    SourceSettings,
    SplitSettings,
    data_maker,
    settings_groups,
)
from crackseg.data.dataset import CrackDataset
from crackseg.data.io import image_size
from crackseg.data.layouts import check_data_found, check_samples, index_layout
from crackseg.data.loader_workers import (
    StopSafeDataLoader,
    init_loader_worker,
    worker_start_method,
)
from crackseg.data.sampler import BalancedNegativeSampler
from crackseg.data.samples import SPLITS, Sample, count_positives
from crackseg.data.splits import DataSplit, split_samples
from crackseg.data.supervision import segmented_positives
from crackseg.errors import DataError
from crackseg.setting_rules import plain_settings

log = logging.getLogger(__name__)

#: Evaluation batches on a CPU hold about this many input pixels: the paper's network at
#: 640x232 predicts 18 % fewer images/s at batch 8 than at batch 1 (its activations outgrow
#: the caches), the narrow demo network at 128x128 27 % more (benchmarks/README.md).
CPU_EVAL_PIXELS = 2**17
MAX_CPU_EVAL_BATCH = 16
#: A GPU wants batches.
GPU_EVAL_BATCH = 16
#: The key of the split's identity in the module's checkpoint state.
SPLIT_STATE = "split"


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
    """Builds a run's loaders: the training loader with the frequency-of-use sampler, and
    the validation and test loaders.

    The settings come in groups (crackseg.data.data_settings), each the dataclass or None
    for its defaults: ``source`` (where the images are; ``prepare_data`` makes the synthetic
    set, downloads or tiles there first, once per machine), ``input_size``, ``split``,
    ``labels`` (which positives keep masks, dilation, the weight map), ``sampling``,
    ``loader`` and ``augment``. :meth:`from_config` builds them from the flat ``data``
    config. ``setup`` chooses the split and the segmented positives (:attr:`data_split`).
    """

    def __init__(
        self,
        source: SourceSettings,
        input_size: InputSize | None = None,
        split: SplitSettings | None = None,
        labels: LabelSettings | None = None,
        sampling: SamplingSettings | None = None,
        loader: LoaderSettings | None = None,
        augment: AugmentSettings | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.input_size = input_size or InputSize()
        self.split = split or SplitSettings()
        self.labels = labels or LabelSettings()
        self.sampling = sampling or SamplingSettings()
        self.loader = loader or LoaderSettings()
        self.augment = augment or AugmentSettings()
        self.root = Path(source.root).expanduser()
        #: The split and the segmented positives, once set up.
        self.data_split: DataSplit | None = None
        #: How the training images reached the input size (recorded in checkpoints).
        self.input_scaling: dict[str, Any] | None = None
        self._sampler: BalancedNegativeSampler | None = None
        self._resume_state: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls, data_cfg: Mapping[str, Any], loss_cfg: Mapping[str, Any] | None = None
    ) -> CrackDataModule:
        """The DataModule a ``data`` config describes, with the weight map of the ``loss``
        config's weighted segmentation loss (None, as for an evaluation: no weight map).

        The keys are the flat ``data.*`` settings users type; a ``_target_`` (configs saved
        before the groups carry one) is ignored.
        """
        return cls(**settings_groups(plain_settings(data_cfg), plain_settings(loss_cfg)))

    # -- preparation -------------------------------------------------------------------
    @property
    def makes_its_data(self) -> bool:
        """Whether :meth:`prepare_data` makes the data (synthetic, downloaded, tiled)."""
        return self._maker is not None

    @property
    def _maker(self) -> str | None:
        source = self.source
        return data_maker({name: getattr(source, name) for name in DATA_MAKERS})

    def prepare_data(self) -> None:
        source, maker = self.source, self._maker
        if maker == "synthetic":
            from crackseg.data.synthetic import generate_synthetic_dataset

            generate_synthetic_dataset(self.root, **source.synthetic)
        elif maker == "download":
            from crackseg.data.download import prepare_dataset

            prepare_dataset(self.root, source.download["url"], source.download.get("sha256"))
        elif maker == "tile":
            from crackseg.data.tiles import prepare_tiles

            tiling = dict(source.tile)
            prepare_tiles(self.root, tiling.pop("source"), **tiling)

    def setup(self, stage: str | None = None) -> None:
        if self.data_split is not None:
            return
        check_data_found(self.root)
        indexed = index_layout(
            self.source.layout,
            self.root,
            binarize_threshold=self.labels.binarize_threshold,
            **self.source.layout_options,
        )
        splits = split_samples(indexed, self.split)
        if self.source.check_files:  # every split at once: an error lists all its files
            every = [sample for samples in splits.values() for sample in samples]
            checked = iter(check_samples(every, self.labels.binarize_threshold))
            splits = {name: [next(checked) for _ in samples] for name, samples in splits.items()}
        self._refuse_unusable_splits(splits, stage)
        size = self.input_size
        self.input_scaling = input_scaling(splits["train"], size.height, size.width)
        split_file = None if self.split.all_as_test else self.split.split_file
        segmented = segmented_positives(
            splits["train"],
            self.labels,
            split_file,
            self.split.split_seed,
            training=stage in (None, "fit"),
        )
        self.data_split = DataSplit(splits, frozenset(segmented))
        for name in SPLITS:
            pos, neg = count_positives(splits[name])
            log.info("%s split: %d positives, %d negatives", name, pos, neg)

    def _refuse_unusable_splits(self, splits: dict[str, list[Sample]], stage: str | None) -> None:
        """A split the ``stage`` needs that is empty, or a training split without a defect,
        is refused with the remedy; a training split without a negative is warned about."""
        if not splits["train"] and stage in (None, "fit"):
            raise DataError(f"the training split of {self.root} is empty")
        if stage in (None, "fit") and not any(s.is_positive for s in splits["train"]):
            raise DataError(
                f"the training split of {self.root} holds no defect image, only "
                f"{len(splits['train'])} negatives: nothing to learn the defect from (are the "
                "images labelled as the layout expects?)"
            )
        if not splits["test"]:  # every run ends tested: its metrics and report
            if self.split.all_as_test:
                raise DataError(f"no images to evaluate in {self.root}")
            hint = (
                f"data.split_file={self.split.split_file} names no test image of it"
                if self.split.split_file
                else "give the data a test/ folder or raise data.test_fraction"
            )
            raise DataError(
                f"the test split of {self.root} is empty: nothing to test the run on; {hint}"
            )
        if stage in (None, "fit") and all(s.is_positive for s in splits["train"]):
            log.warning(
                "the training split of %s holds no negative image: the decision head sees "
                "defects only, and a test split without negatives has no AUC or AP (in a "
                "folder layout, crack-free images are named noncrack*, or "
                "data.layout_options.label_from_mask=true labels images by their masks)",
                self.root,
            )
        if not splits[self.val_split] and stage in ("fit", "validate"):
            # Lightning would skip validation and both thresholds would stay at 0.5.
            hint = (
                "validate_on_test=true validates on it: give the data a test split"
                if self.split.validate_on_test
                else "raise data.val_fraction to carve validation images from the training "
                "split, or give the data a val/ folder"
            )
            raise DataError(
                f"the {'test' if self.split.validate_on_test else 'validation'} split of "
                f"{self.root} is empty, and the thresholds and the best weights are chosen on "
                f"it: {hint}"
            )

    # -- datasets ----------------------------------------------------------------------
    def _dataset(self, split: str, training: bool = False) -> CrackDataset:
        """Evaluation datasets keep every mask undilated: Dice is measured on the true mask."""
        assert self.data_split is not None, "call setup() first"
        size, labels = self.input_size, self.labels
        transform = None
        if training:
            transform = build_augmentation(self.augment, square=size.height == size.width)
        return CrackDataset(
            self.data_split.splits[split],
            channels=size.channels,
            height=size.height,
            width=size.width,
            dilate=labels.dilate if training else 1,
            binarize_threshold=labels.binarize_threshold,
            segmented_ids=self.data_split.segmented_ids if training else None,
            weak_masks=labels.weak_masks and training,
            weight_map=labels.weight_map if training else None,
            transform=transform,
        )

    @property
    def val_split(self) -> str:
        return "test" if self.split.validate_on_test else "val"

    def dataset(self, split: str) -> CrackDataset:
        """A split's dataset ('train', 'val' or 'test') without augmentation, as evaluation
        reads it (the weak ranking reads the training split so)."""
        return self._dataset(split)

    def train_sampler(self) -> BalancedNegativeSampler:
        assert self.data_split is not None, "call setup() first"
        samples = self.data_split.splits["train"]
        sampler = BalancedNegativeSampler(
            [i for i, s in enumerate(samples) if s.is_positive],
            [i for i, s in enumerate(samples) if not s.is_positive],
            frequency_of_use=self.sampling.frequency_sampling,
            neg_per_pos=self.sampling.neg_per_pos,
            seed=self.sampling.seed,
            augmentation_seeds=True,
        )
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            sampler.restore(state, self.loader.batch_size)
        return sampler

    # -- resuming ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the split's identity (:meth:`DataSplit.identity`), so
        a run resumed on data changed since is refused, and the sampler's state
        (crackseg.data.sampler), so a checkpoint written mid-epoch (SIGTERM, Ctrl-C)
        resumes after the batches done."""
        state: dict[str, Any] = {}
        if self.data_split is not None:
            state[SPLIT_STATE] = self.data_split.identity(self.root)
        if self._sampler is not None and self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            finished = done >= self.trainer.num_training_batches
            state |= self._sampler.checkpoint_state(done, finished)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called after :meth:`setup` when a run resumes: its split must be the one the run
        trained on (a checkpoint from before the split was recorded is taken as it is)."""
        recorded = state_dict.get(SPLIT_STATE)
        changes = self.data_split.changes_since(recorded) if recorded and self.data_split else []
        if changes:
            raise DataError(
                f"the data in {self.root} changed since the run started, and so did its split "
                f"({'; '.join(changes)}): put the data back as it was to resume the run, or "
                "start a new one"
            )
        if "sampler" in state_dict:
            self._resume_state = state_dict
            # Lightning warns about mid-epoch checkpoints of loaders it cannot fast-forward;
            # this module fast-forwards its sampler itself.
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended"
            )

    # -- loaders -----------------------------------------------------------------------
    @property
    def _device_type(self) -> str:
        trainer = self.trainer
        return trainer.strategy.root_device.type if trainer is not None else "cpu"

    @property
    def eval_batch_size(self) -> int:
        """Validation and test batch size; ``auto`` chooses by the device the run uses."""
        pixels = self.input_size.height * self.input_size.width
        loader = self.loader
        return eval_batch_size(loader.eval_batch_size, loader.batch_size, self._device_type, pixels)

    def _loader(self, dataset: CrackDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        workers = self.loader.num_workers
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # a process group, and with it communication threads (see worker_start_method)
        distributed = dist.is_available() and dist.is_initialized()
        seeded = bool(int(os.environ.get("PL_SEED_WORKERS", 0)))
        start = worker_start_method(distributed) if workers > 0 else None
        return StopSafeDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            # Pinned host memory lets batches reach a GPU asynchronously (non-blocking copies).
            pin_memory=self._device_type == "cuda",
            multiprocessing_context=start,
            worker_init_fn=partial(init_loader_worker, rank=rank, seeded=seeded),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        self._sampler = self.train_sampler()
        dataset = self._dataset("train", training=True)
        return self._loader(dataset, self.loader.batch_size, sampler=self._sampler)

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
