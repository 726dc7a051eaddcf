"""``crackseg-data``: dataset chores that come before training.

- ``tile``: cut large annotated photographs into fixed-size tiles in the
  crack_segmentation layout (crackseg.data.tiles), optionally putting whole photographs
  into train or test so no photograph feeds both;
- ``stats``: the positives/negatives table per split, as in the results report;
- ``import-split``: a published split file of the paper (a pickle) as a ``split.csv``;
- ``crackforest``: the public CrackForest dataset (masks in MATLAB files) in the
  crack_segmentation layout, which ``experiment=cfd_tiles`` tiles.

Errors a user can cause end with one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from crackseg.atomic import folder_built_beside, folder_destination
from crackseg.data.crackforest import convert_crackforest
from crackseg.data.data_settings import (
    BINARIZE_THRESHOLD,
    OUTPUT_STRIDE,
    SplitSettings,
    check_input_size,
)
from crackseg.data.layouts import (
    CRACK_SEGMENTATION_SPLITS,
    LAYOUTS,
    check_samples,
    index_layout,
)
from crackseg.data.published_splits import (
    PARTS,
    published_split,
    settings_of_split_file,
    write_published_split,
)
from crackseg.data.splits import set_table, split_counts, split_samples
from crackseg.data.tiles import tile_dataset
from crackseg.errors import EXIT_STOPPED, ConfigError, CracksegError, DataError
from crackseg.setting_rules import OneLineParser, as_override

log = logging.getLogger(__name__)


def seed(text: str) -> int:
    """A split seed, as ``data.split_seed`` takes it: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return value


def tile_size(text: str) -> int:
    """A tile side a run takes as its input as it is: a multiple of 8, as
    ``data.input_height`` and ``data.input_width`` must be (other tiles would be resized)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive multiple of {OUTPUT_STRIDE}, not {text!r}"
        )
    if value % OUTPUT_STRIDE:
        below = value - value % OUTPUT_STRIDE
        near = " or ".join(str(v) for v in (below, below + OUTPUT_STRIDE) if v > 0)
        raise argparse.ArgumentTypeError(
            f"tile size {value} is not divisible by {OUTPUT_STRIDE}, as the network's input "
            f"sides must be: {near}"
        )
    return value


def _layout_options(args: argparse.Namespace) -> dict:
    options = {}
    for key in ("image_dir", "mask_dir", "mask_suffix", "mask_ext", "negative_prefix"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.label_from_mask:
        options["label_from_mask"] = True
    if args.dagm_class is not None:
        if args.layout != "dagm":
            raise ConfigError("--dagm-class picks a class of --layout dagm")
        options["class_id"] = args.dagm_class
    if args.splits is not None:
        if args.layout != "crack_segmentation":
            raise ConfigError("--splits picks the folders of --layout crack_segmentation")
        options["splits"] = args.splits
    if args.binarize_threshold is not None:
        options["binarize_threshold"] = args.binarize_threshold
    return options


def binarize_threshold(text: str) -> int:
    """A mask's threshold, as ``data.binarize_threshold`` takes it: an integer 0..254."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 255:
        raise argparse.ArgumentTypeError(f"must be an integer 0..254, not {text!r}")
    return value


def _add_layout_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=default,
        required=default is None,
        help="how the dataset is stored on disk",
    )
    group = parser.add_argument_group("options of the folder layout")
    group.add_argument("--image-dir", help="image folder relative to the root (images)")
    group.add_argument("--mask-dir", help="mask folder relative to the root (masks)")
    group.add_argument("--mask-suffix", help="mask name = image stem + suffix (empty)")
    group.add_argument("--mask-ext", help="mask extension, e.g. .png (that of the image)")
    group.add_argument("--negative-prefix", help="names of crack-free images start with it")
    group.add_argument(
        "--label-from-mask", action="store_true", help="positive iff the mask marks a pixel"
    )
    parser.add_argument(
        "--dagm-class", type=int, metavar="K", help="the DAGM class (layout dagm; default 1)"
    )
    parser.add_argument(
        "--splits",
        choices=CRACK_SEGMENTATION_SPLITS,
        help="layout crack_segmentation: its split folders train/ and test/ (folders), the "
        "whole set in images/ (flat, as the seed run reads it), or the split folders where "
        "there are some (auto, the default); data.layout_options.splits of a run",
    )
    parser.add_argument(
        "--binarize-threshold",
        type=binarize_threshold,
        metavar="T",
        help="a mask marks a defect where a pixel is above T (127; data.binarize_threshold)",
    )


def _refuse_non_empty(dst: Path) -> None:
    if dst.exists() and any(dst.iterdir()):
        raise DataError(f"destination is not empty, refusing to write into it: {dst}")


def _cmd_tile(args: argparse.Namespace) -> None:
    """Tile into a hidden sibling of the destination, renamed into place at the end: a run
    that fails (a full disk) leaves no half-written destination."""
    dst = folder_destination(args.dst)
    _refuse_non_empty(dst)
    try:
        check_input_size(args.size, args.size)
    except ConfigError as small:  # tiles for another use may be so small: cut, with a word
        log.warning("a run cannot train on %dx%d tiles: %s", args.size, args.size, small)
    with folder_built_beside(dst) as tmp:
        counts = _tile_from_arguments(args, tmp)
        tmp.rename(dst)  # replaces an empty dst in one step (POSIX rename)
    print(f"tiles written to {dst}\n")
    print("\n".join(set_table(counts)))


def _tile_from_arguments(args: argparse.Namespace, dst: Path) -> dict[str, tuple[int, int]]:
    return tile_dataset(
        args.src,
        dst,
        size=args.size,
        stride=args.stride,
        layout=args.layout,
        min_crack_pixels=args.min_crack_pixels,
        pad=args.pad,
        test_fraction=args.test_fraction,
        seed=args.seed,
        val_fraction=args.val_fraction,
        **_layout_options(args),
    )


def _cmd_crackforest(args: argparse.Namespace) -> None:
    """As :func:`_cmd_tile`: built beside the destination, renamed into place at the end."""
    dst = folder_destination(args.dst)
    _refuse_non_empty(dst)
    with folder_built_beside(dst) as tmp:
        count = convert_crackforest(Path(args.src), tmp)
        tmp.rename(dst)
    print(f"{count} photographs and their masks written to {dst}")
    print(f"train on their tiles with CRACKSEG_CFD_DIR={dst} crackseg-train experiment=cfd_tiles")


#: The data settings of a run that ``crackseg-data stats`` takes as options.
STATS_OPTIONS = {
    "data.val_fraction": "--val-fraction",
    "data.test_fraction": "--test-fraction",
    "data.split_seed": "--seed",
    "data.split_file": "--split-file",
    "data.num_folds": "--num-folds",
    "data.fold": "--fold",
    "data.train_positives": "--train-positives",
    "data.dagm_class": "--dagm-class",
    "data.binarize_threshold": "--binarize-threshold",
}


def as_stats_options(message: str) -> str:
    """An error of the splits, which names a run's settings (``data.num_folds=K``), worded
    with the options of ``crackseg-data stats`` (``--num-folds K``)."""

    def option(setting: re.Match) -> str:
        name = STATS_OPTIONS.get(setting[1])
        if name is None:
            return setting[0]
        return name if setting[2] is None else f"{name} {setting[2]}"

    return re.sub(r"(data\.\w+)(?:=([^\s,;)]+))?", option, message)


def _cmd_stats(args: argparse.Namespace) -> None:
    try:
        _stats(args)
    except CracksegError as error:
        raise type(error)(as_stats_options(str(error))) from error


def _stats(args: argparse.Namespace) -> None:
    options = _layout_options(args)
    indexed = index_layout(args.layout, args.root, **options)
    if args.check:
        threshold = options.get("binarize_threshold", BINARIZE_THRESHOLD)
        indexed = {
            split: check_samples(s, threshold, desc=f"checking {split}")
            for split, s in indexed.items()
        }
    settings = SplitSettings(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_file=args.split_file,
        num_folds=args.num_folds,
        fold=args.fold,
        train_positives=args.train_positives,
        split_seed=args.seed,
    )
    splits = split_samples(indexed, settings)  # as a training run's data module splits
    print("\n".join(set_table(split_counts(splits))))


def _cmd_import_split(args: argparse.Namespace) -> None:
    """A published split file (a pickle, read without running anything) -> split.csv."""
    output = Path(args.output)
    if output.exists():
        raise DataError(f"{output} exists already; choose another --output")
    split = published_split(args.file, args.dataset, args.fold)
    write_published_split(split, output)
    counts = ", ".join(
        f"{len(rows)} {name} ({sum(flag for _, flag in rows)} marked segmented)"
        for name, rows in split.items()
    )
    kind = "folders" if args.dataset == "ksdd" else "samples"
    print(f"{output}: {counts} {kind}")
    train = f"experiment=paper/{args.dataset} {as_override('data.split_file', output.resolve())}"
    for setting in settings_of_split_file(args.file, args.dataset, split):
        train += f" {setting}"
    if args.dataset == "dagm":  # its samples are those of one class, fold K being ClassK
        train += f" data.dagm_class={args.fold}"
    print(f"train on it with {train}")


def _add_import_split(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "import-split",
        help="turn a published split file (.pyb) into a split.csv for data.split_file",
        description="Reads the paper's split pickles (KSDD/split_TRAIN_N.pyb, DAGM/split_N.pyb, "
        "KSDD2/split_N.pyb, STEEL/split_TRAIN_N.pyb) with a loader that admits only lists, "
        "tuples, sets, strings, numbers and booleans: anything else is refused and nothing in "
        "the file runs. The split.csv keeps which training positives are segmented.",
    )
    parser.add_argument("file", type=Path, help="the published split file (.pyb)")
    parser.add_argument("--dataset", required=True, choices=PARTS, help="whose split it is")
    parser.add_argument(
        "--fold",
        type=int,
        default=None,
        help="the fold to take (ksdd and dagm files hold all): ksdd's from 0, dagm's its class "
        "1..10, as the paper's --FOLD",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("split.csv"), help="the split.csv to write (new)"
    )
    parser.set_defaults(func=_cmd_import_split)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crackseg-data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    tile = commands.add_parser(
        "tile",
        help="cut annotated photographs into tiles (crack_segmentation layout)",
        description="Tiles are written as DST/[split/]{images,masks}/NAME_rR_cC.png, R and C "
        "being the tile's row and column index; tiles without a crack pixel are named "
        "noncrack_NAME_rR_cC.png; tiles with fewer than --min-crack-pixels (but some) are "
        "left out, being neither crack nor clean.",
    )
    tile.add_argument("src", type=Path, help="dataset to cut (e.g. a folder with images/ masks/)")
    tile.add_argument("dst", type=Path, help="new, empty output folder")
    tile.add_argument(
        "--size",
        type=tile_size,
        default=160,
        help=f"tile side in pixels, a multiple of {OUTPUT_STRIDE} as the network's input (160)",
    )
    tile.add_argument("--stride", type=int, default=None, help="step between tiles (= size)")
    tile.add_argument(
        "--min-crack-pixels",
        type=int,
        default=20,
        help="a crack tile has at least this many crack pixels, a noncrack tile none; "
        "tiles in between are left out (20)",
    )
    tile.add_argument(
        "--pad",
        action="store_true",
        help="mirror-pad the right and bottom edges so no pixel is dropped",
    )
    tile.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="put this fraction of whole photographs into DST/test, the rest "
        "into DST/train (stratified by label; recorded in source_split.csv)",
    )
    tile.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="also put this fraction of whole photographs into DST/val",
    )
    tile.add_argument("--seed", type=seed, default=0, help="seed of the photograph split (0)")
    _add_layout_arguments(tile, "crack_segmentation")
    tile.set_defaults(func=_cmd_tile)

    stats = commands.add_parser(
        "stats",
        help="positives/negatives per split (markdown)",
        description="The split a training run with the same data.* settings makes, counted. "
        "The paper's KolektorSDD, KolektorSDD2 and DAGM runs validate on the test split and "
        "carve no validation split: count theirs with --val-fraction 0 (Severstal's carve "
        "the default 0.15).",
    )
    stats.add_argument("root", type=Path, help="dataset root")
    _add_layout_arguments(stats, None)
    stats.add_argument("--val-fraction", type=float, default=0.15, help="data.val_fraction (0.15)")
    stats.add_argument(
        "--test-fraction", type=float, default=0.15, help="data.test_fraction (0.15)"
    )
    stats.add_argument("--seed", type=seed, default=0, help="data.split_seed (0)")
    stats.add_argument("--split-file", type=Path, default=None, help="split.csv to reproduce")
    stats.add_argument(
        "--num-folds", type=int, default=None, metavar="K", help="data.num_folds, with --fold"
    )
    stats.add_argument(
        "--fold", type=int, default=None, metavar="I", help="data.fold: the test fold, 0..K-1"
    )
    stats.add_argument(
        "--train-positives",
        type=int,
        default=None,
        metavar="N",
        help="data.train_positives: keep N training positives (Severstal's sizes)",
    )
    stats.add_argument(
        "--check",
        action="store_true",
        help="read every file first (empty positive masks become weak positives)",
    )
    stats.set_defaults(func=_cmd_stats)
    _add_import_split(commands)
    crackforest = commands.add_parser(
        "crackforest",
        help="the CrackForest dataset as distributed -> images/ and masks/ (PNG)",
        description="Reads CrackForest as github.com/cuilimeng/CrackForest-dataset holds it "
        "(image/NNN.jpg, groundTruth/NNN.mat) and writes DST/images/NNN.jpg (copied) and "
        "DST/masks/NNN.png (255 where groundTruth.Segmentation marks a crack, 0 elsewhere).",
    )
    crackforest.add_argument("src", type=Path, help="the CrackForest-dataset folder")
    crackforest.add_argument("dst", type=Path, help="new, empty output folder")
    crackforest.set_defaults(func=_cmd_crackforest)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``crackseg-data``; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except CracksegError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable destination, a full disk: named with its file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was written is complete, or nothing is
        print("stopped: nothing half-written was left; run it again", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
