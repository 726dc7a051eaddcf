"""The DataModule's settings, in groups: where the images come from, the input size, the
split, the training labels, the sampler, the loaders and the augmentation; and the input
sizes the network takes (its strides, :func:`check_input_size`), here as the data package
imports nothing of the models (docs/DESIGN.md), and torch-free, for the commands' checks.

Frozen dataclasses, so each group is read as one typed value. Users keep typing the flat
``data.*`` keys (``data.batch_size``, ``data.num_segmented``, ...): :func:`settings_groups`
sorts them into the groups, and takes the weighted segmentation loss from the ``loss`` group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from crackseg.errors import ConfigError
from crackseg.setting_rules import as_typed, closest_setting

#: A mask pixel above this grey level is defect (``data.binarize_threshold``).
BINARIZE_THRESHOLD = 127

#: Keys of data configs saved before the settings groups: the DataModule's class (Hydra
#: built it from the config) and the weight map, which the data block copied from ``loss``.
OBSOLETE_KEYS = (
    "_target_",
    "weighted_seg",
    "weighted_seg_max",
    "weighted_seg_p",
    "weighted_seg_per_component",
)


def _copy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


#: The blocks of ``data`` that make the data before a run reads it, each with the keys its
#: maker takes: the arguments of crackseg.data.synthetic.generate_synthetic_dataset,
#: crackseg.data.download.prepare_dataset and crackseg.data.tiles.tile_dataset (whose
#: other keys are the options of the photographs' layout and the mask binarisation
#: threshold; its ``source`` it needs).
DATA_MAKERS = {
    "synthetic": ("num_positives", "num_negatives", "height", "width", "seed"),
    "download": ("url", "sha256"),  # without a url: the data is there already
    "tile": (
        "source",
        "size",
        "stride",
        "layout",
        "min_crack_pixels",
        "pad",
        "test_fraction",
        "seed",
        "val_fraction",
    ),
}


#: The makers that need nothing on this machine: a run makes their data from nothing.
MADE_FROM_NOTHING = ("synthetic", "download")


def data_maker(data: Mapping[str, Any]) -> str | None:
    """The block of :data:`DATA_MAKERS` that makes ``data``'s data: ``synthetic``,
    ``download`` (with a url; without one it fetches nothing: the data is there already) or
    ``tile``; None where the data is read as it lies. One at most (:func:`check_data_makers`
    refuses two)."""
    for name in DATA_MAKERS:
        block = data.get(name)
        if block is not None and (name != "download" or _has_url(block)):
            return name
    return None


def _has_url(download: Any) -> bool:
    return not isinstance(download, Mapping) or bool(download.get("url"))


def check_data_makers(data: Mapping[str, Any]) -> None:
    """Refuse the blocks that make the data (:data:`DATA_MAKERS`) where they cannot: two of
    them (only one would make it, the other silently left unread), a block that is no
    mapping, a key its maker does not take, a tile block without its source; and layout
    options that are no mapping. Each otherwise failed deep in its maker, or not at all."""
    options = data.get("layout_options")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(
            "data.layout_options must be a mapping of the layout's options "
            f"(data.layout_options.NAME=VALUE), not {as_typed(options)}"
        )
    given = [name for name in DATA_MAKERS if data.get(name) is not None]
    if len(given) > 1 and "download" in given and not _has_url(data["download"]):
        given.remove("download")  # fetches nothing
    if len(given) > 1:
        first, second = given[:2]
        raise ConfigError(
            f"data.{first} and data.{second} both say how to make the data, and only one "
            f"can: keep one (data.{second}=null)"
        )
    if not given:
        return
    name = given[0]
    block = data[name]
    takes = DATA_MAKERS[name]
    if not isinstance(block, Mapping):
        raise ConfigError(
            f"data.{name} must be a mapping of its settings ({', '.join(takes)}), "
            f"not {as_typed(block)}"
        )
    unknown = [key for key in block if key not in takes]
    if name == "tile" and unknown:  # the rest are options of the photographs' layout
        from crackseg.data.layouts import layout_option_names

        layout = block.get("layout") or "crack_segmentation"
        options_taken = [*layout_option_names(str(layout)), "binarize_threshold"]
        unknown = [key for key in unknown if key not in options_taken]
        takes = (*takes, *(f"{option} (of layout {layout})" for option in options_taken))
    if unknown:
        keys = ", ".join(f"data.{name}.{key}" for key in unknown)
        raise ConfigError(f"not a data.{name} setting: {keys} (known: {', '.join(takes)})")
    if name == "tile" and block.get("source") is None:
        raise ConfigError(
            "data.tile.source is not set (the folder of photographs to tile: "
            "data.tile.source=FOLDER)"
        )


@dataclass(frozen=True)
class SourceSettings:
    """Where the images are and how they are organised (``crackseg.data.layouts``), what
    ``prepare_data`` makes there first (the synthetic set, a download, tiles of large
    photographs), and whether every file is read once before training."""

    root: str
    name: str = "dataset"
    layout: str = "crack_segmentation"
    layout_options: dict[str, Any] = field(default_factory=dict)
    synthetic: dict[str, Any] | None = None
    download: dict[str, Any] | None = None
    tile: dict[str, Any] | None = None
    check_files: bool = True

    def __post_init__(self) -> None:
        check_data_makers({name: getattr(self, name) for name in (*DATA_MAKERS, "layout_options")})
        object.__setattr__(self, "layout_options", dict(self.layout_options or {}))
        for name in DATA_MAKERS:
            object.__setattr__(self, name, _copy(getattr(self, name)))


#: The network's strides (crackseg.models.segdecnet): its segmentation output is at 1/8 of
#: the input; the decision subnet pools three times more.
OUTPUT_STRIDE = 8
DECISION_STRIDE = OUTPUT_STRIDE * 8


def check_input_size(height: int, width: int) -> None:
    """Refuse sizes the network cannot take, with the reason.

    The decision subnet's last map is 1/64 of the input; FeatureNorm needs a standard
    deviation there, so that map must hold at least 2 pixels (e.g. 64×128, 128×128).
    """
    for name, size in (("height", height), ("width", width)):
        if size % OUTPUT_STRIDE:
            raise ConfigError(
                f"input {name} {size} is not divisible by {OUTPUT_STRIDE} "
                f"(set data.input_{name} to a multiple of {OUTPUT_STRIDE})"
            )
        if size < DECISION_STRIDE:
            raise ConfigError(
                f"input {name} {size} is too small: the decision subnet pools to 1/"
                f"{DECISION_STRIDE}, so height and width must be at least {DECISION_STRIDE}"
            )
    if (height // DECISION_STRIDE) * (width // DECISION_STRIDE) < 2:
        raise ConfigError(
            f"input {height}x{width} is too small: the decision subnet's last map must hold "
            f"at least 2 pixels (e.g. {DECISION_STRIDE}x{2 * DECISION_STRIDE})"
        )


@dataclass(frozen=True)
class InputSize:
    """The size every image is brought to: the network's input."""

    channels: int = 3
    height: int = 640
    width: int = 232

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"data.input_channels must be 1 or 3, not {self.channels}")


@dataclass(frozen=True)
class SplitSettings:
    """How the samples found become train, validation and test (crackseg.data.splits).

    ``split_seed`` fixes the split and which positives keep masks, so runs that sweep
    ``seed`` share one split.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_file: str | None = None
    num_folds: int | None = None
    fold: int | None = None
    train_positives: int | None = None
    all_as_test: bool = False
    validate_on_test: bool = False
    split_seed: int = 0


@dataclass(frozen=True)
class ExtraSegmented:
    """The first ``count`` weak positives of a ranking (a run's ``weak_ranking.csv``)
    keep their masks too."""

    ranking: str | None = None
    count: int = 10


@dataclass(frozen=True)
class WeightMapSettings:
    """The weighted segmentation loss's map (docs/method.md §4 step 4): ``weighted_seg_max``,
    ``weighted_seg_p`` and ``weighted_seg_per_component`` of the ``loss`` settings."""

    max_weight: float = 1.0
    power: float = 2.0
    per_component: bool = False


@dataclass(frozen=True)
class LabelSettings:
    """The training labels: which positives keep their masks (crackseg.data.supervision),
    how masks are binarised and dilated, the weighted segmentation loss's map (None:
    unweighted; docs/method.md §4), and whether the weak positives' masks are read for their
    decision target (``weak_masks``, from ``loss.decision_target=mask_max_all``)."""

    num_segmented: int | None = None
    extra_segmented: ExtraSegmented = field(default_factory=ExtraSegmented)
    dilate: int = 1
    binarize_threshold: int = BINARIZE_THRESHOLD
    weight_map: WeightMapSettings | None = None
    weak_masks: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.extra_segmented, Mapping):
            object.__setattr__(self, "extra_segmented", ExtraSegmented(**self.extra_segmented))
        if isinstance(self.weight_map, Mapping):
            object.__setattr__(self, "weight_map", WeightMapSettings(**self.weight_map))


@dataclass(frozen=True)
class SamplingSettings:
    """The training sampler (crackseg.data.sampler): negatives by frequency of use and how
    many per positive; ``seed`` drives it."""

    frequency_sampling: bool = True
    neg_per_pos: int = 1
    seed: int = 0


@dataclass(frozen=True)
class LoaderSettings:
    """Batches and workers. ``eval_batch_size``: a number, null (``batch_size``) or ``auto``
    (by device, crackseg.data.datamodule.eval_batch_size)."""

    batch_size: int = 1
    eval_batch_size: int | str | None = "auto"
    num_workers: int = 0


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentation (crackseg.data.augment), off by default; the 90° rotation
    only where the input is square."""

    enabled: bool = False
    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2


def _group(kind: type, data: dict[str, Any], **renamed: str) -> Any:
    """``kind`` from the flat keys named as its fields (or ``field=key``), taking them out of
    ``data``; a key that is absent leaves the field's default."""
    keys = {f.name: renamed.get(f.name, f.name) for f in fields(kind)}
    return kind(**{name: data.pop(key) for name, key in keys.items() if key in data})


def _nested(kind: type, value: Mapping[str, Any] | None, key: str) -> Any:
    """``kind`` from the block ``data.<key>`` (None: the defaults)."""
    value = dict(value or {})
    _refuse([f"{key}.{k}" for k in value if k not in {f.name for f in fields(kind)}])
    return kind(**value)


#: Renamed fields: InputSize's, set by these ``data`` keys.
_INPUT_KEYS = {"channels": "input_channels", "height": "input_height", "width": "input_width"}


def data_keys(block: str = "data") -> list[str]:
    """The settings ``data`` (or its block ``data.augment``, ``data.extra_segmented``) takes."""
    nested = {"data.augment": AugmentSettings, "data.extra_segmented": ExtraSegmented}
    if block in nested:
        return sorted(f.name for f in fields(nested[block]))
    groups = (SourceSettings, SplitSettings, LabelSettings, SamplingSettings, LoaderSettings)
    keys = {f.name for group in groups for f in fields(group)} | set(_INPUT_KEYS.values())
    keys -= {"weight_map", "weak_masks"}  # made of the loss settings
    return sorted(keys | {"augment", "extra_segmented", "dagm_class", "layout_options"})


def _refuse(unknown: list[str]) -> None:
    if unknown:
        names = ", ".join(f"data.{k}" for k in sorted(unknown))
        block, _, last = f"data.{sorted(unknown)[0]}".rpartition(".")
        raise ConfigError(
            f"not a data setting: {names}{closest_setting(block, last, data_keys(block))}"
        )


#: WeightMapSettings' fields -> the ``loss`` keys that set them (``weighted_seg`` turns it on).
WEIGHT_MAP_LOSS_KEYS = {
    "max_weight": "weighted_seg_max",
    "power": "weighted_seg_p",
    "per_component": "weighted_seg_per_component",
}


def weight_map_of(loss: Mapping[str, Any] | None) -> WeightMapSettings | None:
    """The weighted segmentation loss's map, from the ``loss`` settings (None: unweighted)."""
    if not loss or not loss.get("weighted_seg", False):
        return None
    keys = WEIGHT_MAP_LOSS_KEYS
    return WeightMapSettings(**{name: loss[key] for name, key in keys.items() if key in loss})


def _dagm_class(data: dict[str, Any]) -> None:
    """``data.dagm_class=K`` picks DAGM's ``ClassK`` folder, the paper's fold K (1..10)."""
    if "dagm_class" not in data:
        return
    value = data.pop("dagm_class")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data.dagm_class must be a class number 1..10, not {as_typed(value)}")
    fold = data.get("fold")
    if data.get("split_file") and fold is not None and fold != value:
        raise ConfigError(
            f"data.fold={fold!r} against data.dagm_class={value}: a DAGM split file's fold is "
            "its class (import-split --fold K is ClassK); drop data.fold"
        )
    options = data.get("layout_options") or {}
    if options.get("class_id", value) != value:
        raise ConfigError(
            f"data.layout_options.class_id={options['class_id']} against data.dagm_class="
            f"{value}: choose the class with data.dagm_class alone"
        )
    data["layout_options"] = {**options, "class_id": value}


def settings_groups(
    data: Mapping[str, Any], loss: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The DataModule's settings groups (its keyword arguments) from the flat ``data`` keys
    and the ``loss`` settings, resolved to plain values.

    Refuses keys that are no data setting; the keys of data configs saved before the groups
    (:data:`OBSOLETE_KEYS`) are left out, so old runs' configs build the same DataModule.
    """
    rest = {k: v for k, v in data.items() if k not in OBSOLETE_KEYS}
    if rest.get("root") is None:
        raise ConfigError("data.root is not set (set data.root=PATH)")
    _dagm_class(rest)
    rest["extra_segmented"] = _nested(
        ExtraSegmented, rest.get("extra_segmented"), "extra_segmented"
    )
    rest["weight_map"] = weight_map_of(loss)
    rest["weak_masks"] = (loss or {}).get("decision_target") == "mask_max_all"
    augment = _nested(AugmentSettings, rest.pop("augment", None), "augment")
    groups = {
        "source": _group(SourceSettings, rest),
        "input_size": _group(InputSize, rest, **_INPUT_KEYS),
        "split": _group(SplitSettings, rest),
        "labels": _group(LabelSettings, rest),
        "sampling": _group(SamplingSettings, rest),
        "loader": _group(LoaderSettings, rest),
        "augment": augment,
    }
    _refuse(list(rest))
    return groups
