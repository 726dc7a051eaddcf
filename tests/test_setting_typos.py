"""A setting nothing reads, or one the optimiser or the scheduler refuses, is one ``error:``
line before any data is read: ``+loss.delta=0.5`` (Hydra's advice for ``loss.delta=0.5``)
no longer trains with the loss unchanged, ``optim=adam +optim.momentum=0.9`` no longer ends
in a traceback after the data was read. The keys read elsewhere (the data's weight map, the
network's gradient adjustment, the model's name) and the saved config of a run an older
version started (``resume=RUN_DIR``) stay accepted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import one_line_error, run_entry
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg import CONFIG_DIR
from crackseg.errors import ConfigError
from crackseg.runs.config_checks import check_config

CONF = Path(CONFIG_DIR)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["data.root=/data/somewhere", *overrides])


def _options(group: str) -> list[str]:
    """Every config of ``group`` in conf/, those in its subfolders as ``paper/ksdd``."""
    folder = CONF / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["+loss.delta=0.5"], "not a loss setting: loss.delta (known: "),
        (["+loss.weighted_seg_pp=1"], "not a loss setting: loss.weighted_seg_pp (known: "),
        (["+model.widht=3"], "not a model setting: model.widht (known: "),
        (["+model.net.widht=3"], "not a model setting: model.net.widht (known: "),
        # settings of another block, typed under this one: the message names their place
        (["+model.delta_cls=0.5"], "not a model setting: model.delta_cls (it is loss.delta_cls"),
        (
            ["+model.net.gradient_adjustment=false"],
            "not a model setting: model.net.gradient_adjustment (it is loss.gradient_adjustment",
        ),
        (["+loss.compile=default"], "not a loss setting: loss.compile (it is model.compile"),
        (["+callbacks.bogus=1"], "callbacks.bogus must be a callback's config with its _target_"),
        (["+callbacks.bogus.every=1"], "(callbacks.bogus._target_=CLASS), not {'every': 1}"),
    ],
)
def test_a_loss_or_model_key_nothing_reads_is_refused(overrides, expected):
    cfg = _compose("experiment=demo", *overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)) as refused:
        check_config(cfg)
    assert "\n" not in str(refused.value)


def test_the_refusal_lists_the_known_keys():
    with pytest.raises(ConfigError) as refused:
        check_config(_compose("+loss.delta=0.5"))
    known = str(refused.value).split("(known: ")[1]
    for key in ("delta_cls", "weighted_seg_max", "gradient_adjustment", "batch_reduction"):
        assert key in known


def test_the_keys_read_elsewhere_are_accepted():
    """The data's weight map, the network's gradient adjustment (and the weak runs' choice
    of it), the model's name and speed options, every network field."""
    check_config(
        _compose(
            "loss.weighted_seg=true",
            "loss.weighted_seg_max=3.0",
            "loss.weighted_seg_p=1.5",
            "loss.weighted_seg_per_component=true",
            "loss.gradient_adjustment=false",
            "loss.weak_gradient_adjustment=off",
            "model.name=mine",
            "model.channels_last=false",
            "model.compile=default",
            "model.volume_im2col=true",
            "model.net.full_resolution=true",
            "model.net.full_resolution_width=16",
        )
    )


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_passes_the_checks(experiment):
    check_config(_compose(f"experiment={experiment}"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_passes_crackseg_evals_checks(experiment):
    """An experiment's blocks in crackseg-eval's config (whose network comes from the
    checkpoint): its ``optim`` block, where it has one, its ``optim.lr`` alone."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        overrides = [f"experiment={experiment}", "ckpt_path=/runs/a.ckpt", "data.root=/d"]
        check_config(compose("eval", overrides=overrides))


@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("optim", _options("optim"))
@pytest.mark.parametrize("scheduler", [None, *_options("scheduler")])
def test_every_model_optimiser_and_scheduler_passes_the_checks(model, optim, scheduler):
    chosen = [f"scheduler={scheduler}"] if scheduler else []
    check_config(_compose(f"model={model}", f"optim={optim}", *chosen))


def _old_run_config(resume: str | None):
    """The saved config of a run started before the settings groups: its ``model`` block
    repeated the loss, data and optimiser settings, its network the gradient adjustment."""
    cfg = OmegaConf.to_container(_compose(), resolve=False)
    cfg["model"] |= {
        "_target_": "crackseg.models.lit_segdec.SegDecModule",
        "_recursive_": False,
        "optim": cfg["optim"],
        "scheduler": None,
        "delta_cls": 0.01,
        "dynamic_balance": True,
        "decision_target": "label",
        "batch_reduction": "mean",
        "input_channels": 3,
        "input_height": 128,
        "input_width": 128,
    }
    cfg["model"]["net"]["gradient_adjustment"] = True
    cfg["resume"] = resume
    return OmegaConf.create(cfg)


def test_a_resumed_runs_saved_config_keeps_the_keys_an_older_version_wrote(tmp_path):
    check_config(_old_run_config(resume=str(tmp_path / "run")))  # resume=RUN_DIR: its own
    with pytest.raises(ConfigError, match="not a model setting: model._target_, model._recursive_"):
        check_config(_old_run_config(resume=None))  # typed into a new run: refused


@pytest.mark.parametrize(
    ("overrides", "expected", "named"),
    [
        (["optim=adam", "+optim.momentum=0.9"], "optim: ", "'momentum'"),
        (["+optim.nesterov=true"], "optim: ", "Nesterov momentum requires a momentum"),
        (["+optim.bogus=1"], "optim: ", "'bogus'"),
        (["optim._target_=torch.optim.Adamm"], "optim: cannot import", "torch.optim.Adamm"),
        (["scheduler=step", "+scheduler.bogus=1"], "scheduler: ", "'bogus'"),
        (["scheduler=cosine", "scheduler.interval=batch"], "scheduler.interval", "not 'batch'"),
        # Hydra's advice for scheduler.step_size=3, where no scheduler is chosen
        (["+scheduler.step_size=3"], "scheduler: ", "no scheduler chosen"),
    ],
)
def test_optimiser_and_scheduler_settings_torch_refuses_are_one_line(overrides, expected, named):
    cfg = _compose("experiment=demo", *overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)) as refused:
        check_config(cfg)
    line = str(refused.value)
    assert line.startswith(expected) and named in line and "\n" not in line, line


@pytest.mark.parametrize(
    "overrides",
    [
        ["+optim.momentum=0.9", "+optim.nesterov=true"],
        ["optim=adam", "+optim.weight_decay=0.0001"],
        ["scheduler=cosine", "scheduler.interval=step"],
        ["scheduler=step", "scheduler.step_size=3"],
    ],
)
def test_settings_torch_takes_pass(overrides):
    check_config(_compose(*overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["+loss.delta=0.5"], "error: not a loss setting: loss.delta (known: "),
        (
            ["optim=adam", "+optim.momentum=0.9"],
            "error: +optim.momentum=0.9 adds a setting torch.optim.Adam does not take (known: ",
        ),
        (["optim=adam", "+optim.eps=-1"], "error: optim: torch.optim.Adam refused its settings: "),
    ],
)
def test_the_command_refuses_them_before_reading_any_data(tmp_path, overrides, expected):
    """One line, exit 2; the demo's synthetic set was never generated, nor Lightning
    imported (Python's import log)."""
    data = tmp_path / "data"
    result = run_entry(
        "train",
        "experiment=demo",
        *overrides,
        f"paths.data_dir={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert one_line_error(result).startswith(expected)
    assert not data.exists()
    imported = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line
    }
    assert "crackseg.runs.config_checks" in imported and "pytorch_lightning" not in imported


def _added_refusal(*overrides: str, command: str = "train") -> str | None:
    """The refusal of a key ``overrides`` add that nothing reads, None where none is."""
    from crackseg.runs.lifecycle import refuse_added_settings_nothing_reads

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(command, overrides=list(overrides), return_hydra_config=True)
    try:
        refuse_added_settings_nothing_reads(cfg, cfg.hydra)
    except ConfigError as refused:
        return str(refused)
    return None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+seeed=1", "+seeed=1 adds a setting nothing reads (did you mean seed?)"),
        # ++ (add or set) sets a key a config has, and adds one no config has
        ("++seeed=1", "++seeed=1 adds a setting nothing reads (did you mean seed?)"),
        (
            "+trainer.max_epoch=1",
            "+trainer.max_epoch=1 adds a setting pytorch_lightning.Trainer does not take "
            "(did you mean trainer.max_epochs?)",
        ),
        (
            "++callbacks.model_checkpoint.save_lastt=true",
            "++callbacks.model_checkpoint.save_lastt=true adds a setting "
            "pytorch_lightning.callbacks.ModelCheckpoint does not take "
            "(did you mean callbacks.model_checkpoint.save_last?)",
        ),
    ],
)
def test_a_key_added_that_nothing_takes_is_refused_before_the_run(override, expected):
    assert _added_refusal(override) == expected


def test_a_key_of_another_commands_config_added_with_double_plus_is_refused():
    """crackseg-eval reads no use_best_model (a training's): set in train.yaml, it was
    taken for a key of eval's config."""
    refused = _added_refusal("ckpt_path=x", "++use_best_model=false", command="eval")
    assert refused.startswith("++use_best_model=false adds a setting nothing reads")
    # an experiment chosen places its keys at the top: they are the command's
    with_experiment = ("ckpt_path=x", "experiment=cfd_tiles", "++use_best_model=false")
    assert _added_refusal(*with_experiment, command="eval") is None


@pytest.mark.parametrize(
    ("command", "override", "expected"),
    [
        ("predict", "+data.dilate=3", "it has no data settings"),
        ("predict", "+trainer.max_epochs=3", "it has no trainer settings"),
        ("predict", "+data=crack_segmentation", "it has no data group"),
        ("export", "+trainer.devices=2", "it has no trainer settings"),
        ("eval", "+scheduler=step", "it has no scheduler group"),
        ("eval", "+optim.lr=0.1", "it has no optim settings"),
    ],
)
def test_a_block_or_group_the_command_has_not_is_refused(command, override, expected):
    """crackseg-predict reads no data, trainer or model settings: added with +, as Hydra
    advises for a key it lacks, they went unread and the run went on."""
    needed = {"predict": ["ckpt_path=x", "input=y"], "export": ["ckpt_path=x"]}
    refused = _added_refusal(*needed.get(command, ["ckpt_path=x"]), override, command=command)
    assert refused == f"{override} adds settings this command does not read: {expected}"


def test_a_sweep_or_group_of_the_users_own_folder_is_read(tmp_path):
    """+sweep=mine from a search path places its keys at the top as crackseg's sweeps do;
    a config of the user's own (--config-name) has blocks crackseg cannot know."""
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      seed: 0,1\n"
    )
    searched = f"hydra.searchpath=[file://{tmp_path}]"
    assert _added_refusal(searched, "+sweep=mine") is None
    (tmp_path / "my_eval.yaml").write_text("defaults:\n  - eval\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(
            "my_eval",
            overrides=[
                f"hydra.searchpath=[file://{CONFIG_DIR}]",
                "ckpt_path=x",
                "+trainer.limit_test_batches=1",
            ],
            return_hydra_config=True,
        )
    from crackseg.runs.lifecycle import refuse_added_settings_nothing_reads

    refuse_added_settings_nothing_reads(cfg, cfg.hydra)


@pytest.mark.parametrize(
    "override",
    [
        "++seed=3",  # a key of train.yaml
        "++validate=false",
        "+trainer.max_steps=5",  # an argument of Lightning's Trainer that conf/ leaves out
        "++trainer.max_epochs=2",
        "+sweep=dilate",  # a config group, chosen
        "++scheduler.interval=step",  # read by crackseg, not by the scheduler's class
        "+callbacks.stop._target_=pytorch_lightning.callbacks.EarlyStopping",
    ],
)
def test_a_key_added_that_a_config_or_a_class_takes_is_accepted(override):
    assert _added_refusal("scheduler=step", override) is None
