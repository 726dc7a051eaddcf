"""What ``crackseg-eval`` takes from the training run of the weights it evaluates: the
input shape they expect, the generator's settings of generated data, on their own data the
test split their run held out and the training split's counts of segmented and weak
positives, and the run parameters reported (theirs, with the data evaluated here); and the
images they trained on, of which ``crackseg-predict`` warns where it scores them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, OmegaConf, open_dict

from crackseg.errors import ConfigError, CracksegError, describe_files
from crackseg.setting_rules import as_typed

if TYPE_CHECKING:
    from crackseg.data.samples import Sample
    from crackseg.models.lit_segdec import SegDecModule

log = logging.getLogger(__name__)


#: The data settings of training alone: how batches were made, how many training positives
#: there were and which kept their masks. An evaluation reports the training run's,
#: whatever its data config says.
TRAINING_DATA_KEYS = (
    "batch_size",
    "dilate",
    "frequency_sampling",
    "neg_per_pos",
    "train_positives",
    "num_segmented",
    "extra_segmented",
    "augment",
)
#: Of those, what makes the training split (never the test split): its size, and which of
#: its positives kept their masks.
TRAINING_SPLIT_KEYS = ("train_positives", "num_segmented", "extra_segmented")


class WeightsRun(NamedTuple):
    """What an evaluation reports of the training run of its weights."""

    #: the run parameters of its report: the training run's, with the data evaluated here
    reported: DictConfig
    #: whether the data is theirs and their training split is rebuilt (its counts reported)
    training_split_rebuilt: bool
    #: the images they trained on (:func:`trained_images`)
    trained_images: TrainedImages | None


#: What the images weights trained on are to them, as a warning says it; those of weights
#: trained on tiles they cut: :data:`TILE_PHOTOGRAPHS`.
TRAINED_OR_COPIES = "images the weights trained on, or copies of them"
#: The photographs of the tiles weights trained on.
TILE_PHOTOGRAPHS = "photographs whose tiles the weights trained on, or copies of them"


class TrainedImages(NamedTuple):
    """The images weights trained on, as their checkpoint recorded them: their files under
    their dataset's root, ``folder`` being where the evaluated dataset's root lies under it
    (``.``, or ``train`` for DATA/train); or, ``folder`` None (a checkpoint from before the
    files were recorded, read in the layout it trained in), their sample ids. ``files``:
    their files on this machine (:func:`trained_image_files`), of which a copy anywhere is
    one of them too. ``what`` they are to the weights, as a warning says it."""

    keys: frozenset[str]
    folder: str | None
    what: str = TRAINED_OR_COPIES
    files: frozenset[Path] = frozenset()

    def among(self, samples: list[Sample], root: Path) -> list[str]:
        """The sample ids of ``samples``, of the dataset at ``root``, that are of them."""
        copies = FilesAndCopies(self.files)

        def named(sample: Sample) -> bool:
            if self.folder is None:
                return sample.sample_id in self.keys
            key = os.path.normpath(os.path.join(self.folder, sample.image_under(root)))
            return key in self.keys

        return sorted(s.sample_id for s in samples if named(s) or Path(s.image_path) in copies)


class FilesAndCopies:
    """Whether a file is one of ``files`` or a copy of one: found by size, then by content,
    each file read at most once (compressed photographs rarely share a size; uncompressed
    ones of one size are all read, once)."""

    def __init__(self, files: frozenset[Path]) -> None:
        self.files = files
        self.by_size: dict[int, list[Path]] = {}
        for path in files:
            with contextlib.suppress(OSError):  # not here: it cannot be a copy of a file here
                self.by_size.setdefault(path.stat().st_size, []).append(path)
        self.digests_by_size: dict[int, set[str]] = {}

    def __contains__(self, path: Path) -> bool:
        try:
            if path.resolve() in self.files:
                return True
            size = path.stat().st_size
            return size in self.by_size and _digest(path) in self._digests_of_size(size)
        except OSError:  # gone, or unreadable: not known as one
            return False

    def _digests_of_size(self, size: int) -> set[str]:
        if size not in self.digests_by_size:
            digests = set()
            for path in self.by_size[size]:
                with contextlib.suppress(OSError):  # unreadable: no copy of it is known
                    digests.add(_digest(path))
            self.digests_by_size[size] = digests
        return self.digests_by_size[size]


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def freeze_epoch_count(cfg: DictConfig) -> None:
    """An evaluation trains no epoch: the count a rule makes of the training settings
    (Severstal's, of ``data.train_positives``) is resolved now and kept as a value, before
    those settings become the weights' own (:func:`take_training_run_settings`), which may
    be a size the rule knows no epochs of. A size typed that it knows none of is no
    evaluation's concern (``trainer.max_epochs``, which the rule's error names, is refused
    to it by :func:`refuse_model_settings`)."""
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", throw_on_resolution_failure=False)
    cfg.trainer.max_epochs = 1 if epochs is None else epochs  # the value replaces the rule


def take_training_run_settings(
    cfg: DictConfig, module: SegDecModule, typed: set[str]
) -> WeightsRun:
    """Make an evaluation's settings those of its weights' training run where they must be:
    the input shape they expect, a generator's settings of generated data, on their own data
    the test split their run held out, the precision they trained in (``trainer.precision:
    auto``); a data config they did not train on must be named. ``typed``: the keys typed,
    which win."""
    from crackseg.models.checkpoint import trained_run_config
    from crackseg.runs.hardware import evaluation_precision

    data = cfg.data
    take_trained_shape(data, module, typed)
    check_input_shape(module, data.input_channels, data.input_height, data.input_width)
    trained = trained_run_config(module)
    refuse_other_data_unnamed(data, trained.get("data"), typed)
    take_trained_generator(data, trained.get("data"), typed)
    take_trained_split(data, trained.get("data"), typed)
    cfg.trainer.precision = evaluation_precision(
        cfg.trainer.precision,
        OmegaConf.select(trained, "trainer.precision", default=None),
        cfg.trainer.accelerator,
    )
    return WeightsRun(
        reported=reported_config(trained, data, cfg),
        training_split_rebuilt=rebuild_training_split(data, trained.get("data")),
        trained_images=trained_images(cfg.ckpt_path, data, trained.get("data")),
    )


def rebuild_training_split(data: DictConfig, trained: DictConfig | None) -> bool:
    """On the weights' own data (same layout, folder and DAGM class), their training split as
    it was: its :data:`TRAINING_SPLIT_KEYS` taken from their run, so the report's counts of
    segmented and weak positives are theirs. Whether that was done: not on other data, nor
    where the ranking that chose segmented positives is not here (a moved sweep folder)."""
    if not trained or not _same_data(data, trained):
        return False
    if data.get("dagm_class") != trained.get("dagm_class"):
        return False  # another class: other images
    ranking = OmegaConf.select(trained, "extra_segmented.ranking", default=None)
    if ranking and not Path(str(ranking)).expanduser().is_file():
        log.info("the weights' run chose masks by %s, not here: no segmented count", ranking)
        return False
    with open_dict(data):
        for key in TRAINING_SPLIT_KEYS:
            if key in trained:
                data[key] = trained[key]
    return True


def reported_config(trained: DictConfig, data: DictConfig, cfg: DictConfig) -> DictConfig:
    """The run parameters an evaluation reports: those the weights were trained with (their
    data settings of training too), the data evaluated here, the thresholds' origin and the
    precision of this evaluation."""
    reported = OmegaConf.merge(trained, {"data": OmegaConf.to_container(data, resolve=True)})
    for key in TRAINING_DATA_KEYS:
        if "data" in trained and key in trained.data:
            reported.data[key] = trained.data[key]
    if cfg.thresholds == "validation":  # chosen here: on this data's validation split
        reported.validate_on_test = bool(data.get("validate_on_test", False))
    OmegaConf.update(reported, "trainer.precision", str(cfg.trainer.precision), force_add=True)
    return reported


#: The settings that say which images an evaluation reads (``data.num_workers`` does not).
NAMING_THE_DATA = ("experiment", "data", "data.name", "data.root", "data.layout")
NAMING_THE_DATA_BLOCKS = ("data.layout_options.", "data.synthetic.", "data.tile.", "data.download.")


def refuse_other_data_unnamed(
    data: DictConfig, trained: DictConfig | None, typed: set[str]
) -> None:
    """crackseg-eval scores the data it is given, ``data=synthetic`` where none is named:
    weights trained on other data, evaluated with no setting naming the data typed, were
    scored on generated images without a word."""
    named = any(k in NAMING_THE_DATA or k.startswith(NAMING_THE_DATA_BLOCKS) for k in typed)
    if named or not trained or trained.get("name") in (None, data.get("name")):
        return
    raise ConfigError(
        f"the weights trained on the {trained.get('name')} data and no data is named here "
        f"(crackseg-eval's default is the {data.get('name')} data): name the data to "
        "evaluate them on, data=NAME data.root=DIR, or the experiment=NAME they trained with"
    )


def take_trained_generator(data: DictConfig, trained: DictConfig | None, typed: set[str]) -> None:
    """Generated data (``data=synthetic``), with no other data named, is the weights' own:
    their generator's settings (image counts, seed) are taken, but for those typed, so the
    folder evaluated is their run's and its test split the one it held out. With the
    default counts another folder was generated, holding some of their training images
    under other splits, and scored without a word."""
    named = any(k in NAMING_THE_DATA for k in typed)
    generator = trained.get("synthetic") if trained else None
    same_kind = generator and trained.get("name") == data.get("name")
    if named or not same_kind or data.get("synthetic") is None:
        return
    for key, value in generator.items():
        if f"data.synthetic.{key}" not in typed and data.synthetic.get(key) != value:
            log.info("data.synthetic.%s: %s, the checkpoint's", key, value)
            data.synthetic[key] = value


#: What only a training reads: its losses, optimiser, schedule and epochs.
TRAINING_SETTINGS = (
    "loss",
    "optim",
    "scheduler",
    "trainer.max_epochs",
    "trainer.check_val_every_n_epoch",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
)


def refuse_model_settings(typed: set[str]) -> None:
    """The network evaluated is the checkpoint's, as it was trained: a model or a training
    setting typed on the command line (``model=segdec``, ``model.net.channels=...``,
    ``loss.delta_cls=0.5``, ``trainer.max_epochs=3``) would change nothing but the config
    the evaluation records. An ``experiment=NAME`` may set them; its data settings are what
    count here."""

    def of(*blocks: str) -> list[str]:
        return sorted(k for k in typed if any(k == b or k.startswith(f"{b}.") for b in blocks))

    if model := of("model"):
        raise ConfigError(
            f"{', '.join(model)}: crackseg-eval evaluates the network the checkpoint holds "
            "and takes no model settings; leave them out"
        )
    if training := of(*TRAINING_SETTINGS):
        raise ConfigError(
            f"{', '.join(training)}: crackseg-eval evaluates the weights as they were trained "
            "and reads no training settings; leave them out"
        )


SHAPE_KEYS = ("input_channels", "input_height", "input_width")
"""The data settings of the input shape a checkpoint's weights expect."""


def take_trained_shape(data: DictConfig, module: SegDecModule, typed: set[str]) -> None:
    """Images are fed in the shape the weights were trained on: the data config's input
    channels and size become the checkpoint's, except those typed on the command line,
    which :func:`check_input_shape` then holds to it."""
    shape = module.input_shape
    for key, trained in zip(SHAPE_KEYS, (shape.channels, shape.height, shape.width), strict=True):
        if data[key] != trained and f"data.{key}" not in typed:
            _take(data, key, trained)


def check_input_shape(module: SegDecModule, channels: int, height: int, width: int) -> None:
    """The data must come in the shape the weights were trained on."""
    shape = module.input_shape
    trained = (shape.channels, shape.height, shape.width)
    asked = (channels, height, width)
    if trained != asked:
        raise CracksegError(
            "checkpoint was trained on {}x{}x{} inputs but the data config gives {}x{}x{} "
            "(set data.input_channels/input_height/input_width to match)".format(*trained, *asked)
        )


#: The data settings that decide which images a run holds out for its test: a fold or a
#: split file fixes them; the seed and the fractions move them where the data is split by
#: fractions (a flat folder), and ``val_fraction`` only carves validation elsewhere.
FIXED_TEST_KEYS = ("split_file", "num_folds", "fold")
FRACTION_KEYS = ("split_seed", "test_fraction", "val_fraction")


def take_trained_split(data: DictConfig, trained: DictConfig | None, typed: set[str]) -> None:
    """On the data the weights were trained on (same layout, folder and DAGM class), the test
    split is the one their run held out: its split settings (:data:`FIXED_TEST_KEYS`,
    :data:`FRACTION_KEYS`) are taken where the data config gives others, and its DAGM class.
    Typed otherwise, a fold or split file is refused (that test split holds images the
    weights trained on), as is ``all_as_test`` (every image is), a seed or fraction warned
    about (it may, on a flat folder); another DAGM class typed is other data."""
    if not trained or not _same_data(data, trained):
        return
    if data.get("dagm_class") != trained.get("dagm_class"):
        if "data.dagm_class" in typed:
            return  # another class: other images
        _take(data, "dagm_class", trained.get("dagm_class"))
    if data.get("all_as_test"):
        raise ConfigError(
            f"data.all_as_test=true on the data the weights were trained on ({data.root}) "
            "tests them on their own training images: leave it out to test on the images "
            "their run held out"
        )
    for key in (*FIXED_TEST_KEYS, *FRACTION_KEYS):
        ours, theirs = data.get(key), trained.get(key)
        if ours == theirs or (key == "split_file" and _same_file(ours, theirs)):
            continue
        if f"data.{key}" not in typed:
            _take(data, key, theirs)
        elif key in FIXED_TEST_KEYS:
            raise ConfigError(
                f"data.{key}={as_typed(ours)} differs from the weights' training run on this "
                f"data (data.{key}={as_typed(theirs)}): its test split would hold images they "
                f"trained on (leave data.{key} out to test on the images their run held out)"
            )
        else:
            log.warning(
                "data.%s=%s differs from the weights' training run on this data (%s): where "
                "it is split by fractions, the test split may hold images they trained on",
                key,
                as_typed(ours),
                as_typed(theirs),
            )


def _take(data: DictConfig, key: str, trained: Any) -> None:
    """``data.key`` becomes the checkpoint's value, and the log says so."""
    log.info(
        "data.%s: %s, the checkpoint's (the data config gives %s)", key, trained, data.get(key)
    )
    data[key] = trained


def _same_data(data: DictConfig, trained: DictConfig) -> bool:
    """Whether ``data`` is the data the weights were trained on: same layout, same folder."""
    return data.get("layout") == trained.get("layout") and _same_folder(data, trained)


def _same_file(path: Any, other: Any) -> bool:
    """Whether two paths name one file or folder (a checkpoint records its run's paths as
    absolute ones, a command line may type them relative)."""
    if path is None or other is None:
        return False
    return Path(str(path)).expanduser().resolve() == Path(str(other)).expanduser().resolve()


def _same_folder(data: DictConfig, trained: DictConfig) -> bool:
    return _same_file(data.get("root"), trained.get("root"))


def trained_images(
    checkpoint: str | Path, data: DictConfig, trained: DictConfig | None
) -> TrainedImages | None:
    """The images of the training split the weights in ``checkpoint`` trained on, as their
    run recorded it: by name where ``data`` is read from the folder they were trained on, or
    from a folder inside it, in any layout; anywhere by content, their files being here
    (copies of them). None where neither can tell: their files are not here, and the
    checkpoint is from before the split was recorded, or from before its files were and
    read otherwise (sample ids are a layout's own)."""
    from crackseg.data.splits import TRAINED_FILES

    try:
        files = training_files_here(checkpoint)
    except (CracksegError, OSError) as error:  # a record edited since: names alone then
        log.debug("the image files %s trained on are not known: %s", checkpoint, error)
        files = frozenset()
    copies = None
    if files:
        what = TILE_PHOTOGRAPHS if trained and trained.get("tile") else TRAINED_OR_COPIES
        copies = TrainedImages(frozenset(), ".", what, files)
    folder = _folder_under(data.get("root"), trained.get("root")) if trained else None
    if folder is None:
        tiles = _photographs_of_trained_tiles(data, trained)
        return copies if tiles is None else tiles._replace(files=files)
    split = _recorded_split(checkpoint)
    if TRAINED_FILES in split:
        return TrainedImages(frozenset(split[TRAINED_FILES]), folder, files=files)
    ids = split.get("ids", {}).get("train")
    read_alike = _same_data(data, trained) and _layout_options(data) == _layout_options(trained)
    if ids is not None and read_alike:
        return TrainedImages(frozenset(ids), None, files=files)
    return copies


def training_files_here(checkpoint: str | Path) -> frozenset[Path]:
    """:func:`trained_image_files` that are on this machine; where none of them is (the data
    moved, or trained on elsewhere), said once: copies of them cannot be told."""
    recorded = trained_image_files(checkpoint)
    here = frozenset(path for path in recorded if path.is_file())
    if recorded and not here:
        log.info(
            "none of the %d images %s trained on is on this machine (%s, ...): images that "
            "are copies of them cannot be told",
            len(recorded),
            checkpoint,
            min(recorded),
        )
    return here


def trained_image_files(checkpoint: str | Path) -> frozenset[Path]:
    """The image files the weights in ``checkpoint`` trained on, resolved: their training
    split's files under their data root, as the checkpoint records them, and for weights
    trained on tiles they cut, the photographs of those tiles. None found where the root
    is not here (a relative one is read from the folder the command runs in)."""
    from crackseg.data.splits import TRAINED_FILES
    from crackseg.data.tiles import photographs_tiled_into
    from crackseg.models.checkpoint import checkpoint_run_config

    data = (checkpoint_run_config(checkpoint) or OmegaConf.create()).get("data")
    if not data or not data.get("root"):
        return frozenset()
    root = Path(str(data.root)).expanduser()
    files = [root / name for name in _recorded_split(checkpoint).get(TRAINED_FILES, [])]
    if data.get("tile"):
        files += photographs_tiled_into(root, "train")
    return frozenset(path.expanduser().resolve() for path in files)


def _recorded_split(checkpoint: str | Path) -> dict[str, Any]:
    """The split the weights' run recorded in ``checkpoint`` (its sample ids and, since
    they were recorded, its training files); empty in a checkpoint from before."""
    from crackseg.data.datamodule import SPLIT_STATE, CrackDataModule
    from crackseg.models.checkpoint import load_checkpoint_file

    state = load_checkpoint_file(checkpoint, mmap=True).get(CrackDataModule.__qualname__) or {}
    return state.get(SPLIT_STATE) or {}


def _photographs_of_trained_tiles(
    data: DictConfig, trained: DictConfig | None
) -> TrainedImages | None:
    """Weights trained on tiles they cut (``data.tile``, experiment=cfd_tiles) evaluated on
    photographs: those under ``data``'s root whose tiles were in their training split, as
    the tiles' ``source_split.csv`` records them; None where none is found."""
    from crackseg.data.tiles import photographs_tiled_into

    if not trained or not trained.get("tile") or not trained.get("root") or not data.get("root"):
        return None
    try:
        photos = photographs_tiled_into(Path(str(trained.root)).expanduser(), "train")
    except (CracksegError, OSError) as error:  # a record edited since: nothing to tell
        log.debug("the photographs of the weights' tiles are not known: %s", error)
        return None
    root = Path(str(data.root)).expanduser()
    keys = set()
    for photo in (p.expanduser() for p in photos):
        # as the samples are named under the root (its path as typed), and through links
        for made in (Path.absolute, Path.resolve):
            relative = os.path.relpath(os.path.normpath(made(photo)), os.path.normpath(made(root)))
            if relative.split(os.sep)[0] != os.pardir:  # not a photograph elsewhere
                keys.add(relative)
    if not keys:
        return None
    return TrainedImages(frozenset(keys), ".", TILE_PHOTOGRAPHS)


def _folder_under(root: str | None, trained_root: str | None) -> str | None:
    """Where ``root`` lies under ``trained_root`` (``.``: the same folder); None elsewhere."""
    if root is None or trained_root is None:
        return None
    try:
        inside = (
            Path(root).expanduser().resolve().relative_to(Path(trained_root).expanduser().resolve())
        )
    except ValueError:
        return None
    return str(inside)


def _layout_options(data: DictConfig) -> dict[str, Any]:
    options = data.get("layout_options") or {}
    return OmegaConf.to_container(options) if isinstance(options, DictConfig) else dict(options)


def warn_of_images_trained_on(checkpoint: str, images: list[Path]) -> None:
    """A mean Dice over ``images`` (those scored against reference masks) that holds images
    the weights trained on (or photographs of the tiles they trained on), their files or
    copies of them, overstates them: said, with how many. Copies are found by content among
    the training files of an image's size, each file read once; where the training files
    cannot be listed, nothing is said."""
    try:
        trained = FilesAndCopies(training_files_here(checkpoint))
    except (CracksegError, OSError) as error:  # the predictions are made: they stand
        log.debug("the images %s trained on are not known: %s", checkpoint, error)
        return
    if seen := [path for path in images if path in trained]:
        log.warning(
            "%d of the %d images of the mean Dice are images the weights trained on, or "
            "photographs of tiles they trained on (%s): the mean overstates the weights",
            len(seen),
            len(images),
            describe_files([path.name for path in seen]),
        )
