"""Every published run of the paper as a config: composed, and compared setting by setting
with docs/method.md §10, whose table is written out here by hand; the paper's sweeps; the weak
runs as published, and the named departure from them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from crackseg import CONFIG_DIR
from crackseg.error_lines import root_cause
from crackseg.errors import ConfigError
from crackseg.paper_settings import weak_run_departures
from crackseg.runs.config_checks import check_config

#: docs/method.md §10, row by row: (channels, height, width), dilate, epochs, lr, δ, batch, P, Max,
#: the N of the paper's curve (None: all), data config, folds; and what §10 leaves to the
#: published code's defaults (its run script sets only Severstal's): validate on test (§10:
#: KSDD and DAGM; the default everywhere but Severstal) and the tested weights (best by
#: validation for Severstal, the final ones elsewhere).
SECTION_10 = {
    "ksdd": {
        "input": (1, 1408, 512), "dilate": 7, "epochs": 50, "lr": 1.0, "delta": 0.01,
        "weak_lr": 0.01, "weak_delta": 1.0, "batch": 1, "p": 2.0, "max": 1.0,
        "n": [0, 5, 10, 15, 20, None], "validate_on_test": True, "best": False, "data": "ksdd",
        "folds": ("data.fold", [0, 1, 2]),
    },
    "dagm": {
        "input": (1, 512, 512), "dilate": 7, "epochs": 70, "lr": 0.05, "delta": 1.0,
        "weak_lr": 0.05, "weak_delta": 1.0, "batch": 1, "p": 1.0, "max": 10.0,
        "n": [0, 5, 15, 45, None], "validate_on_test": True, "best": False, "data": "dagm",
        "folds": ("data.dagm_class", list(range(1, 11))),
    },
    "ksdd2": {
        "input": (3, 640, 232), "dilate": 15, "epochs": 50, "lr": 0.01, "delta": 1.0,
        "weak_lr": 0.01, "weak_delta": 1.0, "batch": 1, "p": 2.0, "max": 3.0,
        "n": [0, 16, 53, 126, None], "validate_on_test": True, "best": False, "data": "ksdd2",
        "folds": None,
    },
    "severstal": {
        "input": (1, 256, 1600), "dilate": 1, "epochs": 40, "lr": 0.1, "delta": 0.1,
        "weak_lr": 0.1, "weak_delta": 0.1, "batch": 10, "p": 2.0, "max": 1.0,
        "n": [0, 10, 50, 150, 300, 750, 1500, 3000], "validate_on_test": False, "best": True,
        "data": "severstal", "folds": None,
    },
}  # fmt: skip
#: Severstal's epochs by training positives (§10).
SEVERSTAL_EPOCHS = {300: 90, 750: 80, 1500: 60, 3000: 40}
#: Table 4's Severstal runs: 1000 training positives, 50 epochs (the published run script).
TABLE_4_SEVERSTAL = (1000, 50)
#: Table 4 (§10): row -> (N kind, weighted loss, dynamic balance, adjustment).
TABLE_4 = {
    1: ("full", 0, 0, 0), 2: ("full", 0, 1, 0), 3: ("full", 0, 1, 1), 4: ("full", 1, 1, 0),
    5: ("full", 1, 0, 1), 6: ("full", 1, 1, 1), 7: ("mixed", 0, 0, 0), 8: ("mixed", 0, 1, 0),
    9: ("mixed", 0, 1, 1), 10: ("mixed", 1, 1, 0), 11: ("mixed", 1, 0, 1),
    12: ("mixed", 1, 1, 1), 13: ("weak", 1, 0, 1), 14: ("weak", 1, 1, 1),
}  # fmt: skip
#: Table 4's mixed runs: DAGM N = 15, KSDD N = 5, Severstal 250 of 1000.
TABLE_4_MIXED = {"ksdd": 5, "dagm": 15, "severstal": 250}


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    """One Hydra initialisation for the file's many compositions."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield


def _compose(*overrides: str, hydra: bool = False):
    return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def _check_published(cfg, dataset: str, n: int | None) -> None:
    """Every §10 setting of ``dataset``'s run with N segmented positives."""
    row = SECTION_10[dataset]
    data, loss = cfg.data, cfg.loss
    assert (data.input_channels, data.input_height, data.input_width) == row["input"]
    assert data.name == row["data"] and cfg.model.name == "segdec"  # the paper's network
    assert cfg.model.net.volume_channels == 1024
    assert data.dilate == row["dilate"] and data.batch_size == row["batch"]
    assert data.num_segmented == n
    weak = n == 0
    assert cfg.optim.lr == (row["weak_lr"] if weak else row["lr"])
    assert loss.delta_cls == (row["weak_delta"] if weak else row["delta"])
    assert (loss.weighted_seg, loss.weighted_seg_p, loss.weighted_seg_max) == (
        True,
        row["p"],
        row["max"],
    )
    assert data.frequency_sampling is True
    # weak runs: adjustment on, dynamic balance off; mixed and full runs: both on
    assert loss.gradient_adjustment is True
    assert loss.dynamic_balance is (not weak)
    assert loss.batch_reduction == "sum" and loss.decision_target == "mask_max"
    assert cfg.validate_on_test is row["validate_on_test"]
    assert cfg.use_best_model is row["best"] and cfg.validate is True
    # validating on test carves no validation split
    assert (cfg.data.val_fraction == 0) is row["validate_on_test"]
    assert cfg.trainer.precision == "32-true"
    assert weak_run_departures(cfg) == []
    check_config(cfg)


@pytest.mark.parametrize("dataset", ["ksdd", "dagm", "ksdd2"])
def test_every_published_run_matches_section_10(dataset):
    row = SECTION_10[dataset]
    for n in row["n"]:
        cfg = _compose(
            f"experiment=paper/{dataset}", f"data.num_segmented={n}".replace("None", "null")
        )
        _check_published(cfg, dataset, n)
        assert cfg.trainer.max_epochs == row["epochs"]
    if dataset == "ksdd":
        assert (cfg.data.num_folds, cfg.data.fold, cfg.data.val_fraction) == (3, 0, 0)
    if dataset == "dagm":
        assert cfg.data.layout == "dagm" and cfg.data.val_fraction == 0


def test_every_published_severstal_run_matches_section_10():
    for size, epochs in SEVERSTAL_EPOCHS.items():
        for n in [n for n in SECTION_10["severstal"]["n"] if n <= size]:
            cfg = _compose(
                "experiment=paper/severstal",
                f"data.train_positives={size}",
                f"data.num_segmented={n}",
            )
            _check_published(cfg, "severstal", n)
            assert cfg.data.train_positives == size and cfg.trainer.max_epochs == epochs
    assert _compose("experiment=paper/severstal").trainer.max_epochs == 40  # 3000 by default
    unpublished = _compose("experiment=paper/severstal", "data.train_positives=500")
    with pytest.raises(InterpolationResolutionError) as raised:
        unpublished.trainer.max_epochs  # noqa: B018 - resolving is the point
    assert "trains Severstal on 300, 750, 1000, 1500, 3000 training positives, not 500" in str(
        root_cause(raised.value)
    )


def _jobs(sweep: str, *typed: str) -> list[list[str]]:
    """The jobs of ``-m +sweep=SWEEP TYPED...``: as Hydra's sweeper reads them, the typed
    overrides after the sweep's params, a typed value replacing a swept one."""
    params = dict(_compose(f"+sweep={sweep}", hydra=True).hydra.sweeper.params)
    arguments = [f"{k}={v}" for k, v in params.items()] + list(typed)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(parsed, None)[0]


@pytest.mark.parametrize("dataset", sorted(SECTION_10))
def test_the_num_segmented_sweeps_are_the_papers_curves(dataset):
    row = SECTION_10[dataset]
    sweep = f"paper_{dataset}_num_segmented"
    folds = row["folds"]
    jobs = _jobs(sweep)
    fold_values = [str(f) for f in folds[1]] if folds else [None]
    expected = {(str(n).replace("None", "null"), f) for n in row["n"] for f in fold_values}
    values = [dict(o.split("=", 1) for o in job) for job in jobs]
    assert {
        (v["data.num_segmented"], v.get(folds[0]) if folds else None) for v in values
    } == expected
    assert len(jobs) == len(expected)
    for job in jobs:
        if not folds or job[-1].endswith(f"={fold_values[-1]}"):  # every N once (a fold)
            cfg = _compose(f"+sweep={sweep}", *job)
            _check_published(cfg, dataset, cfg.data.num_segmented)
            if folds:
                assert str(OmegaConf.select(cfg, folds[0])) == fold_values[-1]


@pytest.mark.parametrize("dataset", sorted(TABLE_4_MIXED))
def test_the_components_sweeps_are_table_4(dataset):
    sweep = f"paper_{dataset}_components"
    jobs = _jobs(sweep)
    folds = {"ksdd": 3, "dagm": 10, "severstal": 1}[dataset]
    rows = {}
    for job in jobs:
        rows.setdefault(job[0], set()).add(tuple(job[1:]))
    assert sorted(rows) == sorted(f"table4_row={r}" for r in range(1, 15))
    assert all(len(j) == folds for j in rows.values())
    for job in jobs[::folds]:  # every row once (its first fold)
        cfg = _compose(f"+sweep={sweep}", *job)
        check_config(cfg)
        kind, weighted, balanced, adjusted = TABLE_4[cfg.table4_row]
        n = {"full": None, "mixed": TABLE_4_MIXED[dataset], "weak": 0}[kind]
        switches = (cfg.loss.weighted_seg, cfg.loss.dynamic_balance, cfg.loss.gradient_adjustment)
        assert switches == (bool(weighted), bool(balanced), bool(adjusted))
        assert cfg.data.num_segmented == n
        if dataset == "severstal":
            assert (cfg.data.train_positives, cfg.trainer.max_epochs) == TABLE_4_SEVERSTAL
        if dataset == "ksdd":  # the weak lr and δ are row 13's; row 14 trains at 1 and 0.01
            weak_row = cfg.table4_row == 13
            assert (cfg.optim.lr, cfg.loss.delta_cls) == ((0.01, 1.0) if weak_row else (1.0, 0.01))


def test_one_row_of_table_4_is_one_job_of_its_sweep():
    """docs/method.md: ``-m +sweep=paper_ksdd_components table4_row=14 data.fold=K`` is
    row 14 on one fold (a single run of the sweep is refused: it would ignore the params)."""
    (job,) = _jobs("paper_ksdd_components", "table4_row=14", "data.fold=2")
    assert sorted(job) == ["data.fold=2", "table4_row=14"]
    cfg = _compose("+sweep=paper_ksdd_components", *job)
    assert (cfg.data.num_segmented, cfg.loss.dynamic_balance) == (0, True)
    assert (cfg.optim.lr, cfg.loss.delta_cls, cfg.data.fold) == (1.0, 0.01, 2)


def test_weak_runs_are_the_published_ones_everywhere():
    for overrides in (
        ["experiment=weakly_supervised"],
        ["+sweep=cfd_num_segmented", "data.num_segmented=0"],
        ["+sweep=num_segmented", "data.num_segmented=0"],
        ["experiment=cfd_tiles", "data.num_segmented=0"],
        ["experiment=seed_crack_segmentation", "data.num_segmented=0"],
        ["data.num_segmented=0"],
    ):
        cfg = _compose(*overrides)
        assert cfg.data.num_segmented == 0
        assert (cfg.loss.gradient_adjustment, cfg.loss.dynamic_balance) == (True, False)
        assert weak_run_departures(cfg) == []
    mixed = _compose("+sweep=cfd_num_segmented", "data.num_segmented=5")
    assert (mixed.loss.gradient_adjustment, mixed.loss.dynamic_balance) == (True, True)


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=weakly_supervised"],
        ["+sweep=cfd_num_segmented", "data.num_segmented=0"],
        ["experiment=paper/ksdd2", "data.num_segmented=0"],
    ],
)
def test_adjustment_off_in_weak_runs_is_a_named_departure(overrides):
    cfg = _compose(*overrides, "loss.weak_gradient_adjustment=off")
    assert (cfg.loss.gradient_adjustment, cfg.loss.dynamic_balance) == (False, False)
    (note,) = weak_run_departures(cfg)
    assert note.startswith("Departs from the published settings: in this weak run gradient-flow")
    # with masks the option changes nothing
    mixed = _compose(*overrides[:1], "data.num_segmented=5", "loss.weak_gradient_adjustment=off")
    assert mixed.loss.gradient_adjustment is True


def test_table_4_row_14_is_a_published_weak_run_not_a_departure():
    for dataset in sorted(TABLE_4_MIXED):
        cfg = _compose(f"+sweep=paper_{dataset}_components", "table4_row=14")
        assert (cfg.data.num_segmented, cfg.loss.dynamic_balance) == (0, True)
        assert weak_run_departures(cfg) == []


def test_masks_drawn_from_a_weak_ranking_make_no_weak_run():
    """data.num_segmented=0 with data.extra_segmented.ranking trains on the drawn masks: both
    switches on, and the adjustment off is no departure from a weak run."""
    drawn = ["data.num_segmented=0", "data.extra_segmented.ranking=weak_ranking.csv"]
    cfg = _compose(*drawn)
    assert (cfg.loss.gradient_adjustment, cfg.loss.dynamic_balance) == (True, True)
    off = _compose(*drawn, "loss.weak_gradient_adjustment=off")
    assert off.loss.gradient_adjustment is True and weak_run_departures(off) == []
    assert weak_run_departures(_compose(*drawn, "loss.gradient_adjustment=false")) == []
    # nor KSDD's weak learning rate and δ: those of a run with masks
    ksdd = _compose("experiment=paper/ksdd", *drawn)
    assert (ksdd.optim.lr, ksdd.loss.delta_cls) == (1.0, 0.01)
    weak = _compose("experiment=paper/ksdd", "data.num_segmented=0")
    assert (weak.optim.lr, weak.loss.delta_cls) == (0.01, 1.0)
    # a run saved before, its config without the ranking, resolves as it did
    saved = OmegaConf.create({"n": 0, "lr": "${crackseg.if_weak:${n},0.01,1.0}"})
    assert saved.lr == 0.01


def test_adjustment_turned_off_by_its_own_key_is_named_too():
    cfg = _compose("data.num_segmented=0", "loss.gradient_adjustment=false")
    (note,) = weak_run_departures(cfg)
    assert "gradient-flow adjustment is off" in note
    mixed = _compose("data.num_segmented=3", "loss.gradient_adjustment=false")
    assert weak_run_departures(mixed) == []


def test_an_unknown_weak_choice_is_one_clear_error():
    cfg = _compose("experiment=weakly_supervised", "loss.weak_gradient_adjustment=of")
    with pytest.raises(InterpolationResolutionError) as raised:
        OmegaConf.to_container(cfg.loss, resolve=True)
    cause = root_cause(raised.value)  # what crackseg's entry points print as one line
    assert isinstance(cause, ConfigError)
    assert str(cause) == "loss.weak_gradient_adjustment must be published or off, not 'of'"


def test_the_paper_configs_validate_on_the_published_schedule():
    experiments = ["paper/ksdd", "paper/dagm", "paper/ksdd2", "paper/severstal"]
    for experiment in [*experiments, "seed_crack_segmentation"]:  # the seed's code's too
        cfg = _compose(f"experiment={experiment}")
        assert cfg.callbacks.validation_schedule.schedule == "published"
        assert cfg.validation_n_epochs == 5
    assert _compose().callbacks.validation_schedule.schedule == "every_n"
    with pytest.raises(ConfigError, match="validation_schedule must be every_n or published"):
        check_config(_compose("validation_schedule=first"))


def test_the_summary_names_departing_weak_jobs_and_passes_over_unreadable_ones(tmp_path):
    from crackseg.sweep.published import departures

    settings = {
        "weak_off": "data: {num_segmented: 0}\nloss: {gradient_adjustment: false}\n",
        "weak_on": "data: {num_segmented: 0}\nloss: {gradient_adjustment: true}\n",
        "broken": "data: [unclosed\n",
        "unresolvable": "data: {num_segmented: '${crackseg.gone:1}'}\n",
    }
    for job, text in settings.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "config.yaml").write_text(text)
    lines = departures(tmp_path, [{"job": job} for job in [*settings, "no_folder"]])
    assert [line for line in lines if line.startswith("- ")] == [
        "- `weak_off`: Departs from the published settings: in this weak run gradient-flow "
        "adjustment is off; the published weak runs keep it on (docs/method.md §10)."
    ]
