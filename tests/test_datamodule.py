"""The DataModule: splits, mixed supervision, split.csv, augmentation, training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import datamodule_of

from crackseg.data.augment import build_augmentation
from crackseg.data.data_settings import AugmentSettings
from crackseg.errors import ConfigError, DataError
from crackseg.models.lit_segdec import SegDecModule


def test_flat_dataset_is_split_70_15_15_stratified(dataset_root):
    counts = datamodule_of(dataset_root).data_split.counts()
    assert counts == {"train": (14, 14), "val": (3, 3), "test": (3, 3)}


def test_a_run_with_nothing_to_test_on_is_refused_before_it_trains(dataset_root, tmp_path):
    """Every run ends tested; an empty test split would end it without metrics or report."""
    with pytest.raises(DataError, match=r"the test split of .* is empty: nothing to test"):
        datamodule_of(dataset_root, test_fraction=0.0)
    from helpers.paper_replicas import make_ksdd

    ksdd = make_ksdd(tmp_path / "ksdd", folders=3, parts=2)  # 3 folders, dealt whole
    folds = {"layout": "ksdd", "num_folds": 5, "val_fraction": 0.0}
    assert datamodule_of(ksdd, **folds, fold=2).data_split.counts()["test"] == (1, 1)
    expected = r"fold 4 of data.num_folds=5 is empty: .* the data holds 3; lower data.num_folds"
    with pytest.raises(DataError, match=expected):
        datamodule_of(ksdd, **folds, fold=4)


def test_a_split_file_without_test_images_is_named_as_the_cause(dataset_root, tmp_path):
    """Not "raise data.test_fraction", which a split file overrides."""
    split_file = tmp_path / "split.csv"
    datamodule_of(dataset_root).data_split.save(split_file)
    lines = split_file.read_text().splitlines(keepends=True)
    split_file.write_text("".join(line for line in lines if not line.startswith("test,")))
    expected = rf"nothing to test the run on; data.split_file={split_file} names no test image"
    with pytest.raises(DataError, match=expected):
        datamodule_of(dataset_root, split_file=str(split_file))


def test_a_training_split_without_negatives_is_warned_about(tmp_path, caplog):
    """Crack-free images the layout did not take as such train the decision head on
    defects alone: allowed (segmentation alone may be wanted), not unannounced."""
    from helpers.paper_replicas import write_image

    for i in range(8):
        write_image(tmp_path / "images" / f"wall_{i}.png", np.full((64, 128, 3), 90, np.uint8))
        mask = np.zeros((64, 128), np.uint8)
        mask[30:34, :] = 255
        write_image(tmp_path / "masks" / f"wall_{i}.png", mask)
    with caplog.at_level("WARNING"):
        datamodule_of(tmp_path, layout="folder", val_fraction=0.25, test_fraction=0.25)
    assert "holds no negative image: the decision head sees defects only" in caplog.text


@pytest.mark.parametrize("num_segmented,expected", [(0, 0), (5, 5), (None, 14)])
def test_num_segmented_keeps_that_many_masks(dataset_root, num_segmented, expected):
    datamodule = datamodule_of(dataset_root, num_segmented=num_segmented)
    assert datamodule.data_split.num_segmented == expected
    train = datamodule.train_dataloader().dataset
    flags = [train[i]["segmented"].item() for i in range(len(train))]
    labels = [s.is_positive for s in train.samples]
    assert sum(f and p for f, p in zip(flags, labels, strict=True)) == expected
    assert all(f for f, p in zip(flags, labels, strict=True) if not p)  # negatives count
    weak = [i for i, (f, p) in enumerate(zip(flags, labels, strict=True)) if p and not f]
    assert all(train[i]["mask"].sum() == 0 for i in weak)


def test_mask_max_all_reads_the_weak_positives_masks_and_keeps_them_weak(dataset_root):
    plain = datamodule_of(dataset_root, num_segmented=0).train_dataloader().dataset
    published = datamodule_of(dataset_root, num_segmented=0, decision_target="mask_max_all")
    weak = published.train_dataloader().dataset
    positives = [i for i, s in enumerate(plain.samples) if s.is_positive]
    assert positives
    for i in positives:
        without, with_mask = plain[(i, 0)], weak[(i, 0)]
        assert not without["segmented"] and not with_mask["segmented"]  # no segmentation loss
        assert not without["mask_known"] and without["mask"].sum() == 0
        assert with_mask["mask_known"] and with_mask["mask"].sum() > 0
    negative = next(i for i, s in enumerate(plain.samples) if not s.is_positive)
    assert weak[(negative, 0)]["mask_known"] and weak[(negative, 0)]["mask"].sum() == 0
    # evaluation datasets read every mask anyway
    assert published.dataset("test").weak_masks is False


def test_num_segmented_is_reproducible_and_bounded(dataset_root):
    first = datamodule_of(dataset_root, num_segmented=5).data_split.segmented_ids
    assert first == datamodule_of(dataset_root, num_segmented=5).data_split.segmented_ids
    with pytest.raises(ConfigError, match="num_segmented=15"):
        datamodule_of(dataset_root, num_segmented=15)


def test_split_csv_reproduces_the_split(dataset_root, tmp_path):
    datamodule = datamodule_of(dataset_root, split_seed=3)
    datamodule.data_split.save(tmp_path / "split.csv")
    again = datamodule_of(dataset_root, split_seed=99, split_file=str(tmp_path / "split.csv"))
    for split in ("train", "val", "test"):
        ids = [s.sample_id for s in datamodule.data_split.splits[split]]
        assert ids == [s.sample_id for s in again.data_split.splits[split]]


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        datamodule_of(tmp_path / "nowhere")


def test_validate_on_test_validates_on_the_test_split(dataset_root):
    datamodule = datamodule_of(dataset_root, validate_on_test=True)
    val = datamodule.val_dataloader().dataset.samples
    assert val == datamodule.data_split.splits["test"]


def test_training_loader_is_balanced(dataset_root):
    datamodule = datamodule_of(dataset_root)
    labels = torch.cat([b["label"] for b in datamodule.train_dataloader()])
    assert len(labels) == 28 and labels.sum() == 14


def test_augmentation_moves_mask_and_weights_with_the_image():
    settings = AugmentSettings(enabled=True, brightness_contrast=0.0)
    transform = build_augmentation(settings, square=True)
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.float32)
    image[3:9, 20:23] = 255
    mask[3:9, 20:23] = 1
    weight = 1 + 2 * mask
    moved = 0
    for _ in range(12):
        out = transform(image=image, mask=mask, weight=weight)
        bright = out["image"][..., 0] > 127
        assert np.array_equal(bright, out["mask"] > 0.5)
        assert np.array_equal(out["weight"] > 1, out["mask"] > 0.5)
        moved += not np.array_equal(out["mask"], mask)
    assert moved > 0


def test_augmentation_is_off_for_evaluation(dataset_root):
    datamodule = datamodule_of(dataset_root, augment={"enabled": True})
    assert datamodule.train_dataloader().dataset.transform is not None
    assert datamodule.val_dataloader().dataset.transform is None
    assert datamodule.test_dataloader().dataset.transform is None


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_full_resolution_head_trains_at_full_resolution(dataset_root):
    datamodule = datamodule_of(dataset_root, weighted_seg=True)
    batch = next(iter(datamodule.train_dataloader()))
    net = {"channels": (4, 8, 8), "volume_channels": 8, "volume_kernel": 3}
    module = SegDecModule(network=net | {"full_resolution": True, "full_resolution_width": 4})
    out = module.net(batch["image"])
    assert out.segmentation.shape[-2:] == batch["mask"].shape[-2:]
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    head = module.net.full_resolution_head.out.weight.grad
    assert head is not None and torch.count_nonzero(head) > 0
