"""The DataModule's settings groups: built from the flat data config keys users type, the
weight map from the loss group, and read from configs saved before the groups."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg import CONFIG_DIR
from crackseg.data.data_settings import (
    ExtraSegmented,
    InputSize,
    WeightMapSettings,
    settings_groups,
)
from crackseg.data.datamodule import CrackDataModule
from crackseg.errors import ConfigError
from crackseg.runs.config_changes import config_differences

DATA_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))


def _compose(config: str, *overrides: str):
    extra = ["ckpt_path=x.ckpt"] if config == "eval" else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config, overrides=[*extra, *overrides])


def as_flat_keys(datamodule: CrackDataModule) -> dict:
    """The DataModule's settings spelled as the flat ``data.*`` keys, written out by hand."""
    source, size, split = datamodule.source, datamodule.input_size, datamodule.split
    labels, sampling, loader = datamodule.labels, datamodule.sampling, datamodule.loader
    return {
        "name": source.name,
        "root": source.root,
        "layout": source.layout,
        "layout_options": source.layout_options,
        "synthetic": source.synthetic,
        "download": source.download,
        "tile": source.tile,
        "check_files": source.check_files,
        "input_channels": size.channels,
        "input_height": size.height,
        "input_width": size.width,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "split_file": split.split_file,
        "num_folds": split.num_folds,
        "fold": split.fold,
        "train_positives": split.train_positives,
        "all_as_test": split.all_as_test,
        "validate_on_test": split.validate_on_test,
        "split_seed": split.split_seed,
        "num_segmented": labels.num_segmented,
        "extra_segmented": asdict(labels.extra_segmented),
        "dilate": labels.dilate,
        "binarize_threshold": labels.binarize_threshold,
        "frequency_sampling": sampling.frequency_sampling,
        "neg_per_pos": sampling.neg_per_pos,
        "seed": sampling.seed,
        "batch_size": loader.batch_size,
        "eval_batch_size": loader.eval_batch_size,
        "num_workers": loader.num_workers,
        "augment": asdict(datamodule.augment),
    }


@pytest.mark.parametrize("config", ["train", "eval"])
@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_data_config_builds_the_datamodule_it_says(config, data):
    cfg = _compose(config, f"data={data}", "data.root=/d", "paths.data_dir=/d")
    flat = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = CrackDataModule.from_config(cfg.data, cfg.get("loss"))
    if data == "dagm":  # the class is the layout's option
        flat["layout_options"] = {**flat["layout_options"], "class_id": flat.pop("dagm_class")}
    assert as_flat_keys(datamodule) == flat
    # the weight map is the loss group's; an evaluation has none and builds none
    expected = WeightMapSettings(1.0, 2.0, False) if config == "train" else None
    assert datamodule.labels.weight_map == expected


def test_the_data_and_model_configs_read_no_other_group():
    for group in ("data", "model"):
        for path in (Path(CONFIG_DIR) / group).glob("*.yaml"):
            text = path.read_text()
            assert "${loss." not in text and "${data." not in text, path
    evaluation = _compose("eval")
    # no block or key that exists only for another config's interpolations
    assert "loss" not in evaluation and "validation_n_epochs" not in evaluation
    assert evaluation.trainer.check_val_every_n_epoch == 1
    assert _compose("train", "validation_n_epochs=3").trainer.check_val_every_n_epoch == 3


def test_the_flat_keys_fill_the_groups_and_the_loss_the_weight_map():
    data = {
        "root": "~/cracks",
        "input_channels": 1,
        "input_height": 64,
        "batch_size": 3,
        "num_segmented": 5,
        "extra_segmented": {"ranking": "weak_ranking.csv"},
        "augment": {"enabled": True},
    }
    loss = {"weighted_seg": True, "weighted_seg_max": 3.0, "weighted_seg_p": 1.5}
    groups = settings_groups(data, loss)
    assert groups["input_size"] == InputSize(1, 64, 232)
    assert groups["loader"].batch_size == 3 and groups["loader"].eval_batch_size == "auto"
    assert groups["labels"].num_segmented == 5
    assert groups["labels"].extra_segmented == ExtraSegmented("weak_ranking.csv", 10)
    assert groups["labels"].weight_map == WeightMapSettings(3.0, 1.5, False)
    assert groups["augment"].enabled is True and groups["augment"].hflip == 0.5
    assert settings_groups(data, {**loss, "weighted_seg": False})["labels"].weight_map is None
    datamodule = CrackDataModule.from_config(data)
    assert datamodule.root == Path.home() / "cracks" and datamodule.labels.weight_map is None


@pytest.mark.parametrize(
    "data,message",
    [
        ({"root": "/d", "batchsize": 2}, r"data.batchsize \(did you mean data.batch_size\?\)"),
        ({"root": "/d", "augment": {"flip": 0.5}}, "not a data setting: data.augment.flip"),
        ({"root": "/d", "extra_segmented": {"n": 1}}, "data.extra_segmented.n"),
        ({"name": "mine"}, "data.root is not set"),
        ({"root": "/d", "input_channels": 2}, "data.input_channels must be 1 or 3, not 2"),
        ({"root": "/d", "dagm_class": 0}, "data.dagm_class must be a class number"),
        (
            {"root": "/d", "dagm_class": 1, "layout_options": {"class_id": 3}},
            r"class_id=3 against data.dagm_class=1: choose the class with data.dagm_class",
        ),
    ],
)
def test_a_wrong_data_setting_is_a_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        CrackDataModule.from_config(data)


def _saved_before_the_groups(cfg, target: str) -> dict:
    """The data and loss blocks as a run saved them before the groups (unresolved): the
    DataModule's class and the loss's weight map in the data block."""
    old = OmegaConf.to_container(cfg)
    old["data"] |= {"_target_": target} | {
        key: f"${{loss.{key}}}"
        for key in (
            "weighted_seg",
            "weighted_seg_max",
            "weighted_seg_p",
            "weighted_seg_per_component",
        )
    }
    return old


@pytest.mark.parametrize(
    "data,target",
    [
        ("synthetic", "crackseg.data.datamodule.CrackDataModule"),
        ("dagm", "crackseg.data.dagm.DagmDataModule"),
    ],
)
def test_a_data_config_saved_before_the_groups_builds_the_same_datamodule(data, target):
    cfg = _compose("train", f"data={data}", "paths.data_dir=/d", "loss.weighted_seg_p=1.5")
    old = OmegaConf.create(_saved_before_the_groups(cfg, target))
    built = CrackDataModule.from_config(old.data, old.loss)
    assert as_flat_keys(built) == as_flat_keys(CrackDataModule.from_config(cfg.data, cfg.loss))
    assert built.labels.weight_map == WeightMapSettings(1.0, 1.5, False)


def test_continuing_a_run_saved_before_the_groups_changes_no_setting():
    cfg = _compose("train", "paths.data_dir=/d")
    part = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "loss")}
    now = OmegaConf.create(part)
    old = _saved_before_the_groups(now, "crackseg.data.datamodule.CrackDataModule")
    assert config_differences(OmegaConf.create(old), now) == []
    old["data"]["batch_size"] = 4  # a setting that did change still counts
    assert config_differences(OmegaConf.create(old), now) == ["data.batch_size: 4 -> 8"]


def test_a_run_saved_before_the_validation_schedule_continues_on_its_schedule():
    def part(*overrides: str):  # the keys involved, as a saved config holds them
        cfg = _compose("train", "paths.data_dir=/d", *overrides)
        callback = OmegaConf.to_container(cfg.callbacks.validation_schedule)
        keys = {"validation_schedule": cfg.validation_schedule, "seed": cfg.seed}
        return OmegaConf.create({**keys, "callbacks": {"validation_schedule": callback}})

    now = part()
    old = OmegaConf.to_container(now, resolve=True)
    del old["validation_schedule"], old["callbacks"]["validation_schedule"]["schedule"]
    assert config_differences(OmegaConf.create(old), now) == []
    assert config_differences(OmegaConf.create(old), part("validation_schedule=published")) == [
        "callbacks.validation_schedule.schedule: every_n -> published",
        "validation_schedule: every_n -> published",
    ]


def test_a_run_saved_before_the_divergence_check_continues():
    check = _compose("train", "paths.data_dir=/d").callbacks.fail_on_diverged_loss
    now = OmegaConf.create({"seed": 0, "callbacks": {"fail_on_diverged_loss": check}})
    old = OmegaConf.create({"seed": 0, "callbacks": {}})
    assert config_differences(old, now) == []


def test_a_run_saved_before_the_machinery_callbacks_moved_continues():
    """Its config names them where they were (crackseg.callbacks) and the validation
    schedule under its old key; they are the same callbacks, and build from those names."""
    from hydra.utils import instantiate

    cfg = _compose("train", "paths.data_dir=/d", "paths.output_dir=/r")
    now = OmegaConf.create({"callbacks": OmegaConf.to_container(cfg.callbacks, resolve=True)})
    old = OmegaConf.to_container(now)
    old["callbacks"]["validate_on_last_epoch"] = old["callbacks"].pop("validation_schedule")
    renamed = {"validate_on_last_epoch": "validation_schedule"}
    for name, value in old["callbacks"].items():
        value["_target_"] = value["_target_"].replace(
            "crackseg.runs.training_control.", "crackseg.callbacks."
        )
        value["_target_"] = value["_target_"].replace("ValidationSchedule", "ValidateOnLastEpoch")
        today = now.callbacks[renamed.get(name, name)]
        assert type(instantiate(value)) is type(instantiate(today)), name
    assert old["callbacks"]["stop_checkpoint"]["_target_"] == "crackseg.callbacks.StopCheckpoint"
    assert config_differences(OmegaConf.create(old), now) == []
    # a config of today naming them the old way (a user's callbacks yaml) is the same
    assert config_differences(OmegaConf.create(old), OmegaConf.create(old)) == []
    old["callbacks"]["validate_on_last_epoch"]["schedule"] = "published"
    assert config_differences(OmegaConf.create(old), now) == [
        "callbacks.validation_schedule.schedule: published -> every_n"
    ]


def test_a_run_continues_with_other_speed_options():
    """channels_last, compile and the volume's im2col change how fast the network runs, not
    what it learns: a run saved with ``model.channels_last: false`` (the default before
    ``auto``), or before ``model.volume_im2col``, continues."""
    cfg = _compose("train", "paths.data_dir=/d")
    now = OmegaConf.create({"model": OmegaConf.to_container(cfg.model, resolve=True)})
    old = OmegaConf.to_container(now)
    old["model"]["channels_last"], old["model"]["compile"] = False, "default"
    del old["model"]["volume_im2col"]  # a run saved before the option
    assert now.model.channels_last == "auto"
    assert config_differences(OmegaConf.create(old), now) == []
    kernel = now.model.net.volume_kernel
    old["model"]["net"]["volume_kernel"] = kernel + 2  # the network itself still counts
    assert config_differences(OmegaConf.create(old), now) == [
        f"model.net.volume_kernel: {kernel + 2} -> {kernel}"
    ]


def test_a_run_continues_with_other_loader_workers_and_console():
    """On a machine with fewer cores, or without the progress lines: each item's
    augmentation is seeded by its place in the epoch, not by the worker that reads it."""
    cfg = _compose("train", "paths.data_dir=/d")
    trainer = {k: cfg.trainer[k] for k in ("enable_progress_bar", "enable_model_summary")}
    now = OmegaConf.create({"data": {"num_workers": cfg.data.num_workers}, "trainer": trainer})
    old = OmegaConf.to_container(now)
    old["data"]["num_workers"] = now.data.num_workers + 2
    old["trainer"]["enable_progress_bar"] = not now.trainer.enable_progress_bar
    old["trainer"]["enable_model_summary"] = not now.trainer.enable_model_summary
    assert config_differences(OmegaConf.create(old), now) == []
