"""The LightningModule's settings groups: built from a config, stored in a checkpoint,
and read from checkpoints and run configs saved before the groups (a flat list)."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from crackseg import CONFIG_DIR
from crackseg.data.data_settings import InputSize
from crackseg.models.checkpoint import load_module
from crackseg.models.lit_segdec import SegDecModule
from crackseg.models.module_settings import (
    LossSettings,
    NetworkSettings,
    OptimSettings,
    SpeedSettings,
)
from crackseg.runs.config_changes import config_differences

TINY = {"channels": [4, 8, 8], "volume_channels": 8, "volume_kernel": 3}
MODULE_GROUPS = ("model", "loss", "optim", "scheduler")
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.3}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _groups(module: SegDecModule) -> tuple:
    return (
        module.network_settings,
        module.input_shape,
        module.loss_settings,
        module.optim_settings,
        module.speed,
    )


def test_the_model_config_reads_no_other_group():
    for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"):
        text = path.read_text()
        assert "${" not in text, path.name


def test_a_config_builds_its_groups():
    cfg = _compose(
        "model=segdec_small",
        "model.net.volume_channels=16",
        "loss.gradient_adjustment=false",
        "loss.delta_cls=0.2",
        "data.input_channels=1",
        "data.input_height=64",
        "data.input_width=128",
        "optim.lr=0.3",
        "model.channels_last=true",
    )
    module = SegDecModule.from_config(cfg, run_config="seed: 0\n")
    assert module.network_settings == NetworkSettings(
        channels=(16, 32, 32), volume_channels=16, volume_kernel=7, gradient_adjustment=False
    )
    assert module.input_shape == InputSize(1, 64, 128)
    assert module.loss_settings == LossSettings(delta_cls=0.2)
    assert module.optim_settings == OptimSettings(optimizer=SGD, scheduler=None)
    assert module.speed == SpeedSettings(channels_last=True)
    assert module.net.in_channels == 1 and module.net.gradient_adjustment is False
    # The hyperparameters are plain dicts that build the same module again.
    again = SegDecModule(**module.hparams)
    assert _groups(again) == _groups(module)
    assert again.hparams["run_config"] == "seed: 0\n"


def test_the_saved_config_of_a_run_before_the_groups_builds_the_same_module():
    cfg = _compose("loss.delta_cls=0.2", "data.input_height=64", "data.input_width=128")
    old = OmegaConf.to_container(cfg)  # what a run saved in .hydra/config.yaml, unresolved
    # before the weak-run rule: the two switches plain, no loss.weak_gradient_adjustment
    del old["loss"]["weak_gradient_adjustment"]
    old["loss"] |= {"dynamic_balance": True, "gradient_adjustment": True}
    old["model"] = {
        "_target_": "crackseg.models.lit_segdec.SegDecModule",
        "_recursive_": False,
        **old["model"],
        "net": {**old["model"]["net"], "gradient_adjustment": "${loss.gradient_adjustment}"},
        "optim": "${optim}",
        "scheduler": "${oc.select:scheduler,null}",
        "delta_cls": "${loss.delta_cls}",
        "dynamic_balance": "${loss.dynamic_balance}",
        "decision_target": "${loss.decision_target}",
        "batch_reduction": "${loss.batch_reduction}",
        "input_channels": "${data.input_channels}",
        "input_height": "${data.input_height}",
        "input_width": "${data.input_width}",
    }
    module = SegDecModule.from_config(OmegaConf.create(old))
    assert _groups(module) == _groups(SegDecModule.from_config(cfg))
    assert module.loss_settings.delta_cls == 0.2 and module.input_shape.height == 64
    # resume=auto and a sweep run again compare the saved settings with today's: the same
    now = OmegaConf.to_container(cfg)
    assert config_differences(_module_part(old), _module_part(now)) == []
    old["loss"]["delta_cls"] = 0.3  # a setting that did change still counts, once
    changed = config_differences(_module_part(old), _module_part(now))
    assert changed == ["loss.delta_cls: 0.3 -> 0.2"]


def _module_part(config: dict) -> DictConfig:
    """The groups the module reads (the rest needs Hydra's runtime to resolve), and the data
    keys they refer to (the loss's weak-run rule reads data.num_segmented and
    data.extra_segmented)."""
    keys = ("input_channels", "input_height", "input_width", "num_segmented", "extra_segmented")
    data = {k: config["data"][k] for k in keys}
    groups = {k: config[k] for k in MODULE_GROUPS if k in config}
    return OmegaConf.create({**groups, "data": data})


def test_a_checkpoint_with_flat_hyperparameters_loads_into_the_groups(tmp_path):
    torch.manual_seed(0)
    module = SegDecModule(
        network=TINY | {"gradient_adjustment": False},
        input_shape=InputSize(1, 64, 128),
        loss=LossSettings(delta_cls=0.3, decision_target="mask_max"),
        optim=OptimSettings(optimizer=SGD, scheduler={"_target_": "x.Step", "step_size": 2}),
        speed=SpeedSettings(channels_last=True),
    )
    flat = {  # how the module saved its arguments before the groups
        "net": TINY | {"gradient_adjustment": False},
        "name": "segdec_small",
        "optim": SGD,
        "scheduler": {"_target_": "x.Step", "step_size": 2},
        "delta_cls": 0.3,
        "dynamic_balance": True,
        "decision_target": "mask_max",
        "batch_reduction": "mean",
        "input_channels": 1,
        "input_height": 64,
        "input_width": 128,
        "input_scaling": {"mode": "resize"},
        "channels_last": True,
        "compile": None,
        "run_config": "seed: 0\n",
    }
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": flat}, path)
    loaded = load_module(path)
    assert _groups(loaded) == _groups(module)
    assert loaded.hparams["input_scaling"] == {"mode": "resize"}
    assert loaded.hparams["run_config"] == "seed: 0\n"
    images = torch.rand(2, 1, 64, 128)
    for got, expected in zip(loaded(images), module.eval()(images), strict=True):
        assert torch.equal(got, expected)


def test_weights_that_do_not_fit_are_refused_in_one_line_naming_them(tmp_path):
    import pytest

    from crackseg.errors import CracksegError

    module = SegDecModule(network=TINY, input_shape=InputSize(1, 64, 128))
    state = module.state_dict()
    for name in [k for k in state if k.startswith("net.")][:6]:
        del state[name]
    state["stray"] = torch.zeros(1)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CracksegError) as refused:
        load_module(path)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"checkpoint {path} does not fit this version: ")
    assert 'Missing key(s) in state_dict: "net.' in line and ", ... (6 in all)" in line
    assert 'Unexpected key(s) in state_dict: "stray"' in line


def test_weights_of_other_layer_sizes_are_refused_in_one_short_line(tmp_path):
    """The settings of one network and the weights of a wider one: the first size
    mismatches and their count, not every layer's."""
    import pytest

    from crackseg.errors import CracksegError

    wider = SegDecModule(
        network={**TINY, "channels": (16, 32, 32)}, input_shape=InputSize(1, 64, 128)
    )
    module = SegDecModule(network=TINY, input_shape=InputSize(1, 64, 128))
    path = tmp_path / "wider.ckpt"
    torch.save({"state_dict": wider.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CracksegError) as refused:
        load_module(path)
    line = str(refused.value)
    assert "\n" not in line and line.count("size mismatch for ") == 3
    assert re.search(r"; \.\.\. \(\d+ size mismatches in all\)$", line), line
    assert len(line) < 800


def test_older_flat_hyperparameters_take_the_groups_defaults(tmp_path):
    """Before the optimiser was a config (``lr``) and before the input shape was saved."""
    module = SegDecModule(network=TINY)
    path = tmp_path / "older.ckpt"
    flat = {"net": TINY, "lr": 0.5, "delta_cls": 0.1}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": flat}, path)
    loaded = load_module(path)
    assert loaded.optim_settings.optimizer == {**SGD, "lr": 0.5}
    assert loaded.loss_settings == LossSettings(delta_cls=0.1)
    assert loaded.input_shape == InputSize() and loaded.speed == SpeedSettings()
    assert asdict(loaded.network_settings)["volume_channels"] == 8


def test_the_model_summary_counts_the_flops_of_one_input_sized_image():
    from pytorch_lightning.utilities.model_summary import ModelSummary

    from crackseg.models.flops import count_flops

    shape = InputSize(channels=3, height=128, width=64)
    module = SegDecModule(network=TINY, input_shape=shape)
    assert module.example_input_array.shape == (1, 3, 128, 64)
    # torch's FLOP counter, which Lightning runs, counts what crackseg's own count does.
    assert ModelSummary(module).total_flops == count_flops(128, 64, **TINY).forward
    # A compiled network is not run for the summary: that pass would compile it again.
    compiled = SegDecModule(network=TINY, input_shape=shape, speed=SpeedSettings(False, "default"))
    assert compiled.example_input_array is None


def test_the_papers_network_is_the_same_wherever_it_is_the_default():
    """SegDecNet's defaults, NetworkSettings' and conf/model/segdec.yaml each say "the paper's
    network": written three times, they must not drift apart (32/64/64, 1024 from 15x15,
    8/16/32, docs/method.md §2)."""
    import inspect

    from crackseg.models.segdecnet import SegDecNet

    paper = {
        "channels": (32, 64, 64),
        "volume_channels": 1024,
        "volume_kernel": 15,
        "decision_channels": (8, 16, 32),
        "gradient_adjustment": True,
        "full_resolution": False,
        "full_resolution_width": 32,
    }
    defaults = inspect.signature(SegDecNet).parameters
    assert {key: defaults[key].default for key in paper} == paper
    assert asdict(NetworkSettings()) == paper
    cfg = _compose("model=segdec")
    assert SegDecModule.from_config(cfg).network_settings == NetworkSettings()
