"""Config composition: the demo default, the override names users type, the seed run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg import CONFIG_DIR
from crackseg.data.data_settings import InputSize, WeightMapSettings
from crackseg.data.datamodule import CrackDataModule
from crackseg.errors import ConfigError
from crackseg.evaluation.report import HPARAMS, RUN_PARAMETERS, run_parameters_from_config
from crackseg.models.lit_segdec import SegDecModule
from crackseg.models.module_settings import LossSettings
from crackseg.runs.config_checks import check_config

SEED_REPORT = SHARED / "seed" / "crack_segmentation_results.md"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_the_default_model_is_the_papers_network_and_the_demo_a_narrow_one():
    """docs/method.md §2: the paper's network is the default model; the CPU demo
    (make train: experiment=demo) names the narrow variant, on the embedded synthetic set."""
    cfg = _compose()
    assert cfg.data.name == "synthetic" and cfg.model.name == "segdec"
    assert cfg.model.net.volume_channels == 1024 and cfg.model.net.volume_kernel == 15
    demo = _compose("experiment=demo")
    assert demo.data.name == "synthetic" and demo.data.synthetic is not None
    assert demo.model.name == "segdec_small" and demo.model.net.volume_channels < 1024
    assert demo.trainer.max_epochs == 25
    assert "experiment=demo" in (REPO / "Makefile").read_text().split("\ntrain:")[1]


def test_every_override_name_reaches_the_objects_it_configures(tmp_path):
    cfg = _compose(
        "data.input_channels=1",
        "data.input_height=64",
        "data.input_width=128",
        "data.batch_size=3",
        "trainer.max_epochs=7",
        "optim.lr=0.5",
        "loss.delta_cls=0.2",
        "loss.decision_target=mask_max",
        "loss.batch_reduction=sum",
        "data.dilate=5",
        "loss.dynamic_balance=false",
        "data.frequency_sampling=false",
        "loss.gradient_adjustment=false",
        "loss.weighted_seg=true",
        "loss.weighted_seg_max=3.0",
        "loss.weighted_seg_p=1.5",
        "data.num_segmented=4",
        "use_best_model=false",
        "validate=false",
        "validate_on_test=true",
        f"paths.data_dir={tmp_path}",
    )
    data = CrackDataModule.from_config(cfg.data, cfg.loss)
    assert data.input_size == InputSize(1, 64, 128)
    assert data.loader.batch_size == 3 and data.labels.dilate == 5
    assert data.labels.num_segmented == 4
    assert data.sampling.frequency_sampling is False and data.split.validate_on_test is True
    assert data.labels.weight_map == WeightMapSettings(3.0, 1.5, False)
    module = SegDecModule.from_config(cfg)
    assert module.optim_settings.optimizer["lr"] == 0.5
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.5
    assert module.loss_settings == LossSettings(0.2, False, "mask_max", "sum")
    assert module.net.gradient_adjustment is False
    assert module.net.in_channels == 1
    assert cfg.trainer.max_epochs == 7
    assert (cfg.use_best_model, cfg.validate) == (False, False)


def _seed_table(heading: str) -> dict[str, str]:
    text = SEED_REPORT.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and not set(cells[1]) <= {"-"} and cells[0] != "Parameter":
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.skipif(not SEED_REPORT.is_file(), reason=f"seed report absent at {SEED_REPORT}")
def test_seed_experiment_matches_the_seed_report_value_by_value():
    cfg = _compose("experiment=seed_crack_segmentation", "data.root=/data/crack_segmentation")
    expected = _seed_table("Run parameters")
    produced = {name: str(value) for name, value in run_parameters_from_config(cfg)}
    assert len(expected) == 14
    assert {name: produced[name] for name in expected} == expected
    # After the seed's rows, what the seed's numbers also depend on.
    assert produced["Decision target"] == "mask_max"
    assert produced["Loss over a batch"] == "sum"
    assert produced["Precision"] == "32-true"
    dataset = _seed_table("Dataset")
    size = (cfg.data.input_channels, cfg.data.input_height, cfg.data.input_width)
    assert size == tuple(int(dataset[k]) for k in ("Input channels", "Input height", "Input width"))
    assert cfg.model.name == "segdec"
    assert cfg.model.net.volume_channels == 1024 and cfg.model.net.volume_kernel == 15
    assert cfg.model.net.full_resolution is False
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.15, 0.15)


#: docs/method.md §8's run parameters, written out here so that a checkout without the seed
#: report still checks them.
SECTION_8 = {
    "Batch size": 1,
    "Epochs": 50,
    "Learning rate": 1,
    "Delta CLS Loss": 0.01,
    "Dilate": 1,
    "Dynamically balanced loss": True,
    "Frequency-of-use sampling": True,
    "Gradien-flow adjustment": True,
    "Weighted segmentation loss": True,
    "Weighted segmentation loss Max": 1.0,
    "Weighted segmentation loss P": 2.0,
    "Use best model": True,
    "Validate": True,
    "Validate on test": False,
}


def test_seed_experiment_has_the_run_parameters_of_method_section_8():
    cfg = _compose("experiment=seed_crack_segmentation", "data.root=/data/crack_segmentation")
    produced = dict(run_parameters_from_config(cfg))
    assert {name: produced[name] for name in SECTION_8} == SECTION_8
    assert (cfg.data.input_channels, cfg.data.input_height, cfg.data.input_width) == (3, 640, 232)
    assert cfg.data.num_segmented is None  # all 6921 training positives segmented
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.15, 0.15)
    assert cfg.model.net.volume_channels == 1024 and cfg.model.net.volume_kernel == 15


def test_seed_experiment_needs_a_data_root():
    cfg = _compose("experiment=seed_crack_segmentation")
    with pytest.raises(Exception, match=re.escape("data.root")):
        CrackDataModule.from_config(cfg.data)


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
)
def test_every_experiment_passes_the_config_checks(experiment):
    check_config(_compose(f"experiment={experiment}", "data.root=/data/somewhere"))


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
)
def test_every_experiment_names_the_data_of_an_evaluation(experiment):
    """`crackseg-eval ckpt_path=... experiment=NAME` evaluates on that experiment's data."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "eval", overrides=[f"experiment={experiment}", "ckpt_path=x.ckpt", "data.root=/d"]
        )
    trained = _compose(f"experiment={experiment}", "data.root=/d").data
    assert cfg.data == trained
    # in a folder of evaluations, not among the experiment's training runs
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        folder = compose(
            "eval",
            overrides=[f"experiment={experiment}", "ckpt_path=x.ckpt"],
            return_hydra_config=True,
        ).hydra.run.dir
    assert Path(folder).parent == Path("outputs/runs") / f"eval_{trained.name}"


@pytest.mark.parametrize(
    "overrides,optimizer,lr",
    [
        ([], torch.optim.SGD, 1.0),
        (["optim=adam"], torch.optim.Adam, 0.001),
        (["optim._target_=torch.optim.AdamW", "optim.lr=0.01"], torch.optim.AdamW, 0.01),
    ],
)
def test_the_optimiser_is_a_config(overrides, optimizer, lr):
    module = SegDecModule.from_config(_compose(*overrides))
    built = module.configure_optimizers()
    assert type(built) is optimizer and built.param_groups[0]["lr"] == lr
    assert built.param_groups[0]["params"] == list(module.net.parameters())


def test_a_scheduler_is_an_override():
    module = SegDecModule.from_config(_compose("scheduler=step", "scheduler.step_size=3"))
    built = module.configure_optimizers()
    scheduler = built["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 3
    assert built["lr_scheduler"]["interval"] == "epoch"


@pytest.mark.parametrize("parameter", RUN_PARAMETERS, ids=lambda p: p.key)
def test_every_run_parameter_is_checked_before_training(parameter):
    """The report's and the HParams tab's list is the one the config checks refuse by."""
    check_config(_compose())  # the default passes
    wrong = "not-a-value" if parameter.kind != "bool" else 1
    cfg = OmegaConf.merge(_compose(), OmegaConf.from_dotlist([f"{parameter.key}={wrong}"]))
    with pytest.raises(ConfigError, match=re.escape(parameter.key)):
        check_config(cfg)


def test_the_hparams_tab_shows_the_swept_parameters():
    assert HPARAMS == {
        "batch_size": "data.batch_size",
        "epochs": "trainer.max_epochs",
        "lr": "optim.lr",
        "delta_cls": "loss.delta_cls",
        "dilate": "data.dilate",
        "dynamic_balance": "loss.dynamic_balance",
        "frequency_sampling": "data.frequency_sampling",
        "gradient_adjustment": "loss.gradient_adjustment",
        "weighted_seg": "loss.weighted_seg",
        "weighted_seg_max": "loss.weighted_seg_max",
        "weighted_seg_p": "loss.weighted_seg_p",
        # every row of the report's run parameters: a paper config's precision or checkpoint
        # choice tells its runs apart there too
        "use_best_model": "use_best_model",
        "validate": "validate",
        "validate_on_test": "validate_on_test",
        "decision_target": "loss.decision_target",
        "batch_reduction": "loss.batch_reduction",
        "precision": "trainer.precision",
        "num_segmented": "data.num_segmented",
        "seed": "seed",
    }


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("150", "tile size 150 is not divisible by 8 (set data.tile.size to a multiple of 8"),
        ("big", "data.tile.size must be a positive integer, not 'big'"),
    ],
)
def test_a_tile_size_the_network_cannot_take_is_refused(size, expected):
    """experiment=cfd_tiles cut tiles of data.tile.size=150 and resized them to its input
    without a word, as crackseg-data tile --size 150 did."""
    cfg = _compose("experiment=cfd_tiles", f"data.tile.size={size}")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(cfg)
    check_config(_compose("experiment=cfd_tiles", "data.tile.size=152"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # each crashed with Python's words (numpy's SeedSequence, a comparison of str and
        # int) once the tiles or the synthetic images were being made, and left a failed run
        (("data.tile.seed=abc",), "data.tile.seed must be an integer >= 0, not 'abc'"),
        (("data.tile.seed=1.5",), "data.tile.seed must be an integer >= 0, not 1.5"),
        (("data.tile.stride=abc",), "data.tile.stride must be a positive integer (null: the"),
        (("data.tile.min_crack_pixels=0",), "data.tile.min_crack_pixels must be an integer >= 1"),
        (("data.tile.test_fraction=abc",), "data.tile.test_fraction must be a number between 0"),
        (("data.tile.val_fraction=1",), "data.tile.val_fraction must be a number between 0 and"),
        (("+data.tile.pad=yes",), "data.tile.pad must be true or false, not 'yes'"),
        (
            ("data.tile.val_fraction=0.5", "data.tile.test_fraction=0.5"),
            "data.tile.val_fraction plus data.tile.test_fraction must be below 1",
        ),
    ],
)
def test_the_tiling_a_run_does_is_checked_before_any_tile_is_cut(overrides, expected):
    cfg = _compose("experiment=cfd_tiles", *overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(cfg)
    check_config(_compose("experiment=cfd_tiles", "data.tile.stride=null", "+data.tile.pad=true"))


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("data.synthetic.seed=abc", "data.synthetic.seed must be an integer >= 0, not 'abc'"),
        ("data.synthetic.seed=1.5", "data.synthetic.seed must be an integer >= 0, not 1.5"),
        ("data.synthetic.num_positives=abc", "data.synthetic.num_positives must be an integer"),
        # generated a whole dataset, then refused its training split (no defect image)
        ("data.synthetic.num_positives=0", "data.synthetic.num_positives must be an integer >= 1"),
        ("data.synthetic.num_negatives=-1", "data.synthetic.num_negatives must be an integer >= 0"),
    ],
)
def test_the_synthetic_data_a_run_generates_is_checked_before_it_is_made(setting, expected):
    cfg = _compose("experiment=demo", setting)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(cfg)


def test_each_value_a_sweep_gives_a_checked_setting_is_checked():
    from crackseg.runs.config_checks import check_swept_values

    with pytest.raises(ConfigError, match=re.escape("data.dilate must be an odd integer >= 1")):
        check_swept_values(["data.dilate=range(1,5)"], {})  # 1, 2, 3, 4
    with pytest.raises(ConfigError, match=re.escape("optim.lr must be a number > 0, not 0")):
        check_swept_values([], {"optim.lr": "0.1,0"})  # a sweeper's params
    # an interval (Optuna's), a value made by interpolation, a setting without a rule
    check_swept_values(["optim.lr=interval(0.1, 2.0)", "data.dilate=${seed},3", "x=a,b"], {})
    check_swept_values(["model.net.channels=[16,32,64],[${seed},32,64]"], {})


def test_cfd_tiles_trains_at_its_tiles_size():
    """A sweep over data.tile.size trains each size as it is cut (128 was resized to 160)."""
    cfg = _compose("experiment=cfd_tiles", "data.tile.size=128")
    assert (cfg.data.input_height, cfg.data.input_width) == (128, 128)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("opset=17", "opset must be an integer >= 18, not 17"),
        ("tolerance=0", "tolerance must be a number > 0, not 0"),
        ("tolerance=.inf", "tolerance must be a number > 0, not inf"),
        ("num_check_images=0", "num_check_images must be an integer >= 1, not 0"),
        ("thresholds=test", "thresholds must be one of checkpoint, validation, not 'test'"),
    ],
)
def test_eval_and_export_settings_are_checked_in_the_same_style(setting, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(OmegaConf.from_dotlist([setting]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # read by the rules of other settings (KolektorSDD's learning rate), which resolve
        # first: a ValueError of int('five') came out, not naming the setting
        (["experiment=paper/ksdd", "data.num_segmented=five"], "data.num_segmented must be"),
        # True is 1 to Python: a Table 4 row, a training size taken as 1 (folds: test_splits)
        (["data=severstal", "data.train_positives=true"], "data.train_positives must be null"),
        (["+sweep=paper_ksdd_components", "table4_row=true"], "table4_row must be 1..14, not"),
    ],
)
def test_a_count_typed_as_a_word_or_a_boolean_is_refused_by_name(overrides, expected):
    from crackseg.error_lines import root_cause

    cfg = _compose(*overrides, "data.root=/data/somewhere")
    with pytest.raises(Exception) as raised:  # a rule's own refusal comes as OmegaConf's
        check_config(cfg)
    assert isinstance(root_cause(raised.value), ConfigError)
    assert str(root_cause(raised.value)).startswith(expected)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("model.net.volume_kernel=6", "model.net.volume_kernel must be an odd integer >= 1, not 6"),
        ("data.extra_segmented.count=ten", "data.extra_segmented.count must be an integer >= 1"),
        ("data.extra_segmented.count=-1", "data.extra_segmented.count must be an integer >= 1"),
        ("model.compile=true", "model.compile must be null (or false), default, reduce-overhead"),
        ("model.compile=fast", "not 'fast'"),
        ("data.augment.hflip=2", "data.augment.hflip must be a probability in [0, 1], not 2"),
        ("data.augment.brightness_limit=-1", "data.augment.brightness_limit must be a number"),
        ("optim.lr=.inf", "optim.lr must be a number > 0, not inf"),
        ("loss.weighted_seg_max=.inf", "loss.weighted_seg_max must be a number > 0 (Max)"),
        ("model.net.channels=[8,8]", "model.net.channels must be three channel counts >= 1"),
        ("model.net.decision_channels=[8,0,8]", "model.net.decision_channels must be three"),
        ("model.net.volume_channels=0", "model.net.volume_channels must be an integer >= 1"),
    ],
)
def test_network_and_extra_segmented_settings_are_checked(setting, expected):
    cfg = OmegaConf.merge(_compose(), OmegaConf.from_dotlist([setting]))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(cfg)


def test_a_step_scheduler_with_no_step_is_refused():
    cfg = _compose("scheduler=step", "scheduler.step_size=0")
    with pytest.raises(ConfigError, match=r"scheduler.step_size must be an integer >= 1"):
        check_config(cfg)
    check_config(_compose("scheduler=step"))


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graphs_are_refused_with_gradient_accumulation(mode):
    """Their replays overwrite the gradients being accumulated (pytorch/pytorch#169545)."""
    cfg = _compose(f"model.compile={mode}", "+trainer.accumulate_grad_batches=4")
    expected = f"model.compile={mode} records CUDA graphs on a GPU, which overwrite the"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.compile=reduce-overhead"],
        ["model.compile=reduce-overhead", "+trainer.accumulate_grad_batches=1"],
        ["model.compile=default", "+trainer.accumulate_grad_batches=4"],
        ["model.compile=max-autotune-no-cudagraphs", "+trainer.accumulate_grad_batches=4"],
        ["+trainer.accumulate_grad_batches=4"],
    ],
)
def test_gradient_accumulation_and_cuda_graphs_each_pass_alone(overrides):
    check_config(_compose(*overrides))


def test_accumulate_grad_batches_must_be_a_count():
    cfg = _compose("+trainer.accumulate_grad_batches=0")
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches must be an integer"):
        check_config(cfg)
