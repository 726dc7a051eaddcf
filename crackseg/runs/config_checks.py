"""Refuse a configuration that cannot train, before any data is read, with one clear line.

Hydra refuses unknown config names and misspelled keys itself (crackseg.error_lines words them);
this module checks the values: their types (``trainer.max_epochs=ten`` reaches the config
as a string) and their ranges; the keys added with ``+`` under ``loss`` and ``model``, which
Hydra takes, that nothing reads; and the optimiser and scheduler, built once as training
builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf

import crackseg.runs.resolvers  # noqa: F401  (the checked values may come from them)
from crackseg.data.data_settings import OUTPUT_STRIDE, check_input_size
from crackseg.data.download import UNPINNED, checked_sha256
from crackseg.error_lines import one_line
from crackseg.errors import ConfigError, DataError
from crackseg.evaluation.report import RUN_PARAMETERS
from crackseg.models.module_settings import (
    BATCH_REDUCTIONS,
    DECISION_TARGETS,
    SETTINGS_BLOCKS,
    OptimSettings,
    build_optimizer,
    build_schedule,
    unread_keys,
)
from crackseg.runs.hydra_run import override_key
from crackseg.setting_rules import Rules, as_typed, check_rules, is_integer, is_number


def _odd_integer(value: Any) -> bool:
    return is_integer(value) and value >= 1 and value % 2 == 1


def _three_widths(value: Any) -> bool:
    """The channel counts of the network's three encoder stages (or decision convolutions)."""
    is_list = OmegaConf.is_list(value) or isinstance(value, list | tuple)
    return is_list and len(value) == 3 and all(is_integer(v) and v >= 1 for v in value)


#: ``trainer.accelerator`` values (Lightning's, which picks among them; ``auto`` takes a GPU
#: where there is one).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
#: ``trainer.precision`` values: Lightning's float32 and mixed precisions, and ``auto``
#: (crackseg.runs.hardware). Not the "-true" ones, which cast the weights themselves: the
#: images the callbacks and the model summary feed the network stay float32.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")


def _devices(value: Any) -> bool:
    """Lightning's ``devices``: a count >= 1, -1 (all), ``auto``, or a list of device ids."""
    if OmegaConf.is_list(value) or isinstance(value, list):
        return len(value) > 0 and all(is_integer(v) and v >= 0 for v in value)
    return value == "auto" or (is_integer(value) and (value >= 1 or value == -1))


#: Where crackseg-eval takes its thresholds from.
THRESHOLD_SOURCES = ("checkpoint", "validation")
#: ``validation_schedule``: after which epochs a run validates (N = ``validation_n_epochs``),
#: the last epoch always included. ``every_n``: after epochs N, 2N, ... (Lightning's
#: ``check_val_every_n_epoch``); ``published``: after epochs 1, N+1, 2N+1, ... (the published
#: training loop's ``epoch % N == 0``, counting epochs from 0), whose first candidate for the
#: best weights comes after one epoch (crackseg.runs.training_control.ValidationSchedule).
VALIDATION_SCHEDULES = ("every_n", "published")
#: torch.compile's modes (``model.compile``; null: not compiled).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The modes that replay the step as CUDA graphs on a GPU. Their backward writes each
#: gradient into the graphs' own memory, which the next micro-batch's replay overwrites:
#: with gradient accumulation the accumulated gradients are wrong, or torch raises
#: "accessing tensor output of CUDAGraphs that has been overwritten" (pytorch/pytorch#169545).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

#: ``scheduler.interval``: Lightning steps the scheduler after each epoch or each step.
SCHEDULER_INTERVALS = ("epoch", "step")

#: key -> (accepts the value, what it must be). Keys absent from a config are skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "trainer.max_epochs": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "trainer.accumulate_grad_batches": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "validation_n_epochs": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "validation_schedule": (lambda v: v in VALIDATION_SCHEDULES, "every_n or published"),
    "num_dice_panels": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    # 'same' padding (crackseg.models.segdecnet.conv_block) keeps the map's size only for
    # an odd kernel
    "model.net.volume_kernel": (_odd_integer, "an odd integer >= 1"),
    "model.channels_last": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "model.volume_im2col": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "model.compile": (
        lambda v: v in (None, False) or v in COMPILE_MODES,
        "null (or false), " + ", ".join(COMPILE_MODES),
    ),
    "optim.lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "loss.delta_cls": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "loss.weighted_seg_p": (lambda v: is_number(v) and v >= 0, "a number >= 0 (P)"),
    "loss.weighted_seg_max": (lambda v: is_number(v) and v > 0, "a number > 0 (Max)"),
    "data.dilate": (_odd_integer, "an odd integer >= 1"),
    **{
        f"data.augment.{key}": (lambda v: is_number(v) and 0 <= v <= 1, "a probability in [0, 1]")
        for key in ("hflip", "vflip", "rotate90", "brightness_contrast")
    },
    **{
        f"data.augment.{key}": (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
        for key in ("brightness_limit", "contrast_limit")
    },
    "scheduler.step_size": (lambda v: is_integer(v) and v >= 1, "an integer >= 1 (epochs)"),
    "scheduler.gamma": (lambda v: is_number(v) and v > 0, "a number > 0"),
    # when Lightning steps the scheduler
    "scheduler.interval": (lambda v: v in SCHEDULER_INTERVALS, " or ".join(SCHEDULER_INTERVALS)),
    "model.net.volume_channels": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "model.net.full_resolution_width": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "model.net.channels": (_three_widths, "three channel counts >= 1, e.g. [32, 64, 64]"),
    "model.net.decision_channels": (_three_widths, "three channel counts >= 1, e.g. [8, 16, 32]"),
    "data.input_channels": (lambda v: v in (1, 3) and is_integer(v), "1 or 3"),
    # before the input size, which experiment=cfd_tiles takes from it
    "data.tile.size": (lambda v: is_integer(v) and v > 0, "a positive integer"),
    # the tiles a run cuts (crackseg.data.tiles.tile_dataset), refused before any is cut
    "data.tile.stride": (
        lambda v: v is None or (is_integer(v) and v > 0),
        "a positive integer (null: the tile size)",
    ),
    "data.tile.min_crack_pixels": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    **{
        f"data.tile.{key}_fraction": (
            lambda v: v is None or (is_number(v) and 0 < v < 1),
            "a number between 0 and 1 (null: the source's own splits)",
        )
        for key in ("val", "test")
    },
    "data.tile.seed": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    # the synthetic dataset a run generates (crackseg.data.synthetic), before it generates it
    "data.synthetic.num_positives": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "data.synthetic.num_negatives": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "data.synthetic.seed": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "data.input_height": (lambda v: is_integer(v) and v > 0, "a positive integer"),
    "data.input_width": (lambda v: is_integer(v) and v > 0, "a positive integer"),
    "data.batch_size": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (
        lambda v: v is None or v == "auto" or (is_integer(v) and v >= 1),
        "auto, null or an integer >= 1",
    ),
    "data.num_workers": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "data.num_segmented": (lambda v: v is None or (is_integer(v) and v >= 0), "null or >= 0"),
    "data.train_positives": (lambda v: v is None or (is_integer(v) and v >= 1), "null or >= 1"),
    "data.extra_segmented.count": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "data.neg_per_pos": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "data.val_fraction": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.test_fraction": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.binarize_threshold": (lambda v: is_integer(v) and 0 <= v < 255, "an integer 0..254"),
    "data.split_seed": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "trainer.deterministic": (lambda v: v in (True, False, "warn"), "true, false or warn"),
    "trainer.accelerator": (lambda v: str(v).lower() in ACCELERATORS, ", ".join(ACCELERATORS)),
    "trainer.devices": (_devices, "an integer >= 1, -1 (all), auto or a list of device ids"),
    "trainer.precision": (lambda v: str(v) in PRECISIONS, ", ".join(PRECISIONS)),
    "loss.decision_target": (lambda v: v in DECISION_TARGETS, " or ".join(DECISION_TARGETS)),
    "loss.batch_reduction": (lambda v: v in BATCH_REDUCTIONS, " or ".join(BATCH_REDUCTIONS)),
    # crackseg-eval's
    "thresholds": (lambda v: v in THRESHOLD_SOURCES, "one of " + ", ".join(THRESHOLD_SOURCES)),
    # crackseg-export's
    "tolerance": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "num_check_images": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "opset": (lambda v: is_integer(v) and v >= 18, "an integer >= 18"),
}

#: Settings that are true or false: the run parameters of that kind, and these.
BOOLEAN_KEYS = (
    *(parameter.key for parameter in RUN_PARAMETERS if parameter.kind == "bool"),
    "loss.weighted_seg_per_component",
    "data.check_files",
    "data.augment.enabled",
    "data.tile.pad",
)
BOOLEAN_RULES: Rules = {
    key: (lambda v: isinstance(v, bool), "true or false") for key in BOOLEAN_KEYS
}


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first setting that cannot work."""
    check_rules(cfg, RULES)
    check_rules(cfg, BOOLEAN_RULES)
    _check_cuda_graphs_without_accumulation(cfg)
    _check_settings_read(cfg)
    _check_optimizer_and_scheduler(cfg)
    _check_callbacks(cfg)
    _check_tile_size(cfg)  # first: the input size may be the tiles' (experiment=cfd_tiles)
    data = cfg.get("data")
    if data is not None and "input_height" in data and "input_width" in data:
        check_input_size(data.input_height, data.input_width)
    for block in ("data", "data.tile"):
        keys = [f"{block}.{split}_fraction" for split in ("val", "test")]
        if sum(OmegaConf.select(cfg, key, default=0) or 0 for key in keys) >= 1:
            raise ConfigError(f"{keys[0]} plus {keys[1]} must be below 1")
    if cfg.get("thresholds") == "validation" and OmegaConf.select(cfg, "data.all_as_test"):
        raise ConfigError(
            "thresholds=validation needs a validation split, but data.all_as_test=true "
            "puts every sample in the test split"
        )
    download = OmegaConf.select(cfg, "data.download", default=None)
    if isinstance(download, DictConfig) and download.get("url"):
        _check_download_checksum(download)


def check_swept_values(task: list[str], sweeper_params: dict[str, Any]) -> None:
    """Every value a sweep gives a setting with a rule (:data:`RULES`), checked before any
    job starts: a bad one failed only when its job's turn came, after the jobs before it.
    A value made by interpolation is its job's to check."""
    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + list(task)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException:
        return  # Hydra says what it cannot parse
    rules = {**RULES, **BOOLEAN_RULES}
    for override in overrides:
        rule = rules.get(override.key_or_group)
        if rule is None or not override.is_sweep_override():
            continue
        accepts, expected = rule
        try:
            values = list(override.sweep_iterator())
        except HydraException:
            continue  # a sweep Hydra makes only with the config's groups (glob)
        for value in values:
            if "${" not in str(value) and not accepts(value):  # (in a list's items too)
                raise ConfigError(
                    f"{override.key_or_group} must be {expected}, not {as_typed(value)} "
                    "(one of the values swept)"
                )


def refuse_extra_count_without_ranking(
    cfg: DictConfig, typed: list[str], swept: set[str] = frozenset()
) -> None:
    """``data.extra_segmented.count`` among the ``typed`` overrides (or a sweep's keys)
    without a ranking to draw from would train as if it were not typed. A sweep's jobs
    with a ``swept`` ranking each have their own, which its composed config does not hold."""
    if "data.extra_segmented.ranking" in swept:
        return
    if OmegaConf.select(cfg, "data.extra_segmented.ranking", default=None) is not None:
        return
    counts = [o for o in typed if override_key(o) == "data.extra_segmented.count"]
    if any(not str(o).startswith("~") for o in counts):
        raise ConfigError(
            "data.extra_segmented.count keeps the masks of the first weak positives of a "
            "ranking: set data.extra_segmented.ranking=PATH too (a run's weak_ranking.csv)"
        )


def _check_tile_size(cfg: DictConfig) -> None:
    """The tiles a run cuts (``data.tile``, experiment=cfd_tiles) are its input: a side the
    network cannot take would have them resized to the input size without a word."""
    size = OmegaConf.select(cfg, "data.tile.size", default=None)
    if size is not None and size % OUTPUT_STRIDE:
        raise ConfigError(
            f"tile size {size} is not divisible by {OUTPUT_STRIDE} (set data.tile.size to a "
            f"multiple of {OUTPUT_STRIDE}, as the network's input sides must be)"
        )


def _check_cuda_graphs_without_accumulation(cfg: DictConfig) -> None:
    mode = OmegaConf.select(cfg, "model.compile", default=None)
    accumulate = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1)
    if mode in CUDA_GRAPH_MODES and accumulate != 1:
        raise ConfigError(
            f"model.compile={mode} records CUDA graphs on a GPU, which overwrite the "
            f"gradients that trainer.accumulate_grad_batches={accumulate} accumulates: use "
            "model.compile=default or max-autotune-no-cudagraphs"
        )


def _check_callbacks(cfg: DictConfig) -> None:
    """Each entry of ``callbacks`` is a callback's config (``_target_`` and its arguments):
    ``+callbacks.stall=1`` would otherwise fail in Hydra's instantiate, naming no key."""
    callbacks = cfg.get("callbacks")
    if not isinstance(callbacks, DictConfig):
        return
    for name, value in callbacks.items():
        if not isinstance(value, DictConfig) or "_target_" not in value:
            given = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
            raise ConfigError(
                f"callbacks.{name} must be a callback's config with its _target_ "
                f"(callbacks.{name}._target_=CLASS), not {given!r}"
            )


def _check_settings_read(cfg: DictConfig) -> None:
    """Every key under ``loss``, ``model`` and ``model.net`` is one something reads: Hydra
    takes any key added with ``+`` (what its own refusal of ``loss.delta=0.5`` advises),
    and one nothing reads would train as if it were not there.

    Not for a run continued with ``resume=RUN_DIR``, whose config is the one it was started
    with: a run started by an older version holds the keys that version wrote (its
    ``model`` block repeated loss, data and optimiser settings: crackseg.runs.config_changes.
    MIRRORED_KEYS), which still build the same module."""
    if cfg.get("resume") not in (None, "auto"):
        return
    for block, keys in unread_keys(cfg).items():
        where = block.split(".")[0]
        unknown = ", ".join(f"{block}.{key}{_home(block, key)}" for key in keys)
        known = "" if all(_home(block, key) for key in keys) else f" (known: {_known(block)})"
        raise ConfigError(f"not a {where} setting: {unknown}{known}")


def _home(block: str, key: str) -> str:
    """`` (it is OTHER.KEY)`` where ``key`` is a setting of another block, else empty."""
    homes = [other for other, keys in SETTINGS_BLOCKS.items() if other != block and key in keys]
    return f" (it is {homes[0]}.{key})" if homes else ""


def _known(block: str) -> str:
    return ", ".join(sorted(SETTINGS_BLOCKS[block]))


def _check_optimizer_and_scheduler(cfg: DictConfig) -> None:
    """The optimiser and the scheduler are built as training builds them
    (crackseg.models.module_settings), on one parameter: settings they refuse (an argument
    the optimiser has not, ``optim=adam +optim.momentum=0.9``; one torch refuses,
    ``+optim.nesterov=true`` without momentum) are one line, not a traceback once the data
    is read. What fails there for another reason (one that may hold on another device) is
    left to the run. A config that names no optimiser class builds none: crackseg-eval's,
    whose ``optim`` block, where there is one, is an experiment's ``optim.lr`` alone."""
    optim = cfg.get("optim")
    if not isinstance(optim, DictConfig) or "_target_" not in optim:
        return
    scheduler = cfg.get("scheduler")
    if isinstance(scheduler, DictConfig) and "_target_" not in scheduler:
        # +scheduler.step_size=3 (Hydra's advice for scheduler.step_size=3) without one
        given = ", ".join(f"scheduler.{key}" for key in scheduler)
        raise ConfigError(
            f"scheduler: {given} given, but no scheduler chosen: choose one first "
            "(scheduler=step, scheduler=cosine)"
        )
    import torch  # here: a command refused before never waits for it

    settings = OptimSettings.from_config(cfg)
    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = build_optimizer(settings, [parameter])
    except Exception as error:
        _refuse_built("optim", settings.optimizer, error)
        return
    try:
        build_schedule(settings, optimizer)
    except Exception as error:
        _refuse_built("scheduler", settings.scheduler or {}, error)


def _refuse_built(group: str, settings: dict, error: Exception) -> None:
    """ConfigError for the settings of ``group`` that its class (or Hydra) refused."""
    target = settings.get("_target_", "its class")
    if isinstance(error, InstantiationException):  # no such class, or Hydra refused it
        causes = [error]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        if any(isinstance(cause, ImportError) for cause in causes):
            why = one_line(causes[-1])
            message = f"{group}: cannot import {group}._target_={target} ({why})"
            raise ConfigError(message) from error
        raise ConfigError(f"{group}: {one_line(error)}") from error
    if isinstance(error, TypeError | ValueError):
        raise ConfigError(f"{group}: {target} refused its settings: {error}") from error


def _check_download_checksum(download: DictConfig) -> None:
    """A download needs a pinned SHA-256, or an explicit null to go unchecked."""
    if "sha256" not in download or download.sha256 == UNPINNED:
        raise ConfigError(
            "data.download.sha256 is not set: pin the archive's SHA-256 "
            "(data.download.sha256=HEX), or pass data.download.sha256=null to download it "
            "unchecked (its SHA-256 is then logged, to pin)"
        )
    try:
        checked_sha256(download.sha256)
    except DataError as error:
        raise ConfigError(f"data.download.sha256: {error}") from error
