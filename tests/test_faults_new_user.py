"""Faults a new user found (issue 25): each one's test, failing before its fix."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import (
    METRIC_KEYS,
    REPO,
    SHARED,
    TINY,
    datamodule_of,
    one_line_error,
    run_entry,
    run_tiny,
)
from helpers.paper_replicas import write_image
from helpers.stalled_runs import HELPERS, start_train, wait_for_stall
from omegaconf import OmegaConf

from crackseg.data.dataset import CrackDataset
from crackseg.data.io import looks_like_a_photograph, read_image, read_mask
from crackseg.data.layouts import check_samples, index_layout
from crackseg.data.tools import main as data_main
from crackseg.errors import CracksegError, plural
from crackseg.evaluation.metrics import choose_seg_threshold, pixel_metrics
from crackseg.evaluation.report import _auto_notes
from crackseg.models.checkpoint import checkpoint_step, read_checkpoint

# --------------------------------------------------------------- 2. masks stored as 0/1


def test_a_mask_whose_largest_value_is_1_is_read_as_a_0_1_mask(tmp_path):
    mask = np.zeros((8, 10), np.uint8)
    mask[2, 3:7] = 1
    write_image(tmp_path / "eight.png", mask)
    write_image(tmp_path / "sixteen.png", mask.astype(np.uint16))
    write_image(tmp_path / "colour.png", np.dstack([mask] * 3))
    write_image(tmp_path / "alpha.png", np.dstack([mask] * 3 + [np.full_like(mask, 255)]))
    for name in ("eight.png", "sixteen.png", "colour.png", "alpha.png"):
        read = read_mask(tmp_path / name)
        assert read.dtype == np.uint8 and read.shape == (8, 10)
        np.testing.assert_array_equal(read, mask * 255)
    # 0/255 masks and grey masks with other values stay as they are
    grey = np.array([[0, 2, 130, 255]], np.uint8)
    write_image(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), grey)


def test_masks_of_label_values_or_8_bit_values_in_16_bits_keep_their_defects(tmp_path):
    """A 0/1 mask saved as JPEG (its noise makes values 0..2), and 0/255 written as 16 bit,
    read as 0/255; a 16-bit mask of the full range is scaled to 8 bit."""
    mask = np.zeros((32, 40), np.uint8)
    mask[8:20, 10:30] = 1
    assert cv2.imwrite(str(tmp_path / "labels.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 95])
    jpeg = read_mask(tmp_path / "labels.jpg")
    assert set(np.unique(jpeg)) <= {0, 255}
    # (JPEG rounds some of the 1s to 0, as it would have rounded 255s to 254)
    assert (jpeg[8:20, 10:30] == 255).mean() > 0.9 and (jpeg[:4] == 0).all()
    write_image(tmp_path / "wide.png", mask.astype(np.uint16) * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "wide.png"), mask * 255)
    write_image(tmp_path / "full.png", mask.astype(np.uint16) * 65535)
    np.testing.assert_array_equal(read_mask(tmp_path / "full.png"), mask * 255)
    write_image(tmp_path / "empty.png", np.zeros((4, 4), np.uint16))
    assert not read_mask(tmp_path / "empty.png").any()


def test_a_16_bit_image_of_12_bit_values_is_named_once(tmp_path, caplog, monkeypatch):
    """Read as stored (dark, as the file says), and said so once a process, not every read."""
    import crackseg.data.io as io

    monkeypatch.setattr(io, "_said_few_bits", False)
    image = np.full((8, 8), 4000, np.uint16)
    write_image(tmp_path / "twelve.png", image)
    with caplog.at_level("WARNING"):
        first = read_image(tmp_path / "twelve.png", 1)
        read_image(tmp_path / "twelve.png", 1)
    assert first.max() == round(4000 / 257)
    assert caplog.text.count("is 16 bit but its values fit in 12 (up to 4000 of 65535)") == 1


def test_files_of_other_kinds_in_a_folder_layout_are_named_not_dropped_silently(tmp_path, caplog):
    image, mask = np.full((16, 16, 3), 90, np.uint8), np.zeros((16, 16), np.uint8)
    mask[4:8] = 255
    for folder, pixels in (("images", image), ("masks", mask)):
        write_image(tmp_path / folder / "a.png", pixels)
        assert cv2.imwrite(
            str(tmp_path / folder / "b.webp"), pixels, [cv2.IMWRITE_WEBP_QUALITY, 101]
        )
    (tmp_path / "images" / "c.jfif").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with caplog.at_level("WARNING"):
        samples = index_layout("folder", tmp_path)["all"]
    assert [s.sample_id for s in samples] == ["a", "b"]  # WebP is read
    assert "1 file left out, not" in caplog.text and "c.jfif" in caplog.text


def test_positives_with_0_1_masks_keep_their_masks(tmp_path):
    for name in ("a", "b"):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 2:14] = 1
        write_image(tmp_path / "images" / f"{name}.png", np.full((16, 16, 3), 90, np.uint8))
        write_image(tmp_path / "masks" / f"{name}.png", mask)
    samples = index_layout("crack_segmentation", tmp_path)["all"]
    checked = check_samples(samples)
    assert [s.is_positive for s in checked] == [True, True]
    assert all(s.mask_path is not None for s in checked)  # not weak positives


def test_photographs_in_the_masks_place_are_named_in_a_warning(tmp_path, caplog):
    """masks/ holding the photographs (or maps of probabilities): read as masks they mark
    most pixels, and every image trained as a crack without a word. A mask's blurred
    edges (JPEG), a label map (0/1) and the CrackForest masks are no photographs."""
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), (5, 5), 2)
    crack = np.zeros((64, 96), np.uint8)
    crack[20:26, 5:90] = 255
    for name, mask in (("photo", photo), ("crack", crack), ("labels", crack // 255)):
        write_image(tmp_path / "images" / f"{name}.png", photo)
        write_image(tmp_path / "masks" / f"{name}.png", mask)
    cv2.imwrite(str(tmp_path / "masks" / "crack.jpg"), cv2.GaussianBlur(crack, (7, 7), 3))
    (tmp_path / "masks" / "crack.png").unlink()
    masks = tmp_path / "masks"
    assert not looks_like_a_photograph(read_mask(masks / "crack.jpg"))
    with caplog.at_level("WARNING"):
        check_samples(index_layout("crack_segmentation", tmp_path)["all"])
    warned = [
        r.getMessage() for r in caplog.records if "grey levels of a photograph" in r.getMessage()
    ]
    assert warned == [
        "1 mask with the grey levels of a photograph, not of a mask (a quarter or more of the "
        "pixels mid-grey: the images in the masks' place, or maps of probabilities?): "
        f"{masks / 'photo.png'}"
    ]
    cfd = SHARED / "data" / "cfd"
    if cfd.is_dir():
        assert not any(looks_like_a_photograph(read_mask(p)) for p in (cfd / "masks").iterdir())
        assert all(looks_like_a_photograph(read_mask(p)) for p in (cfd / "images").iterdir())


def train_one_epoch_on(root: Path, run_dir: Path) -> subprocess.CompletedProcess:
    """The tiny training, one epoch, on a crack_segmentation folder at ``root``."""
    return run_entry(
        "train",
        "data=crack_segmentation",
        f"data.root={root}",
        *[o for o in TINY if not o.startswith("data.synthetic.")],
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    )


def test_a_run_on_0_1_masks_trains_and_scores_its_positives_segmented(tmp_path):
    """The user's case: a dataset whose masks are stored as 0/1 trains as with 0/255."""
    from crackseg.data.synthetic import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "set", 20, 20, height=64, width=128, seed=0)
    (root / "synthetic.json").unlink()
    for path in (root / "masks").iterdir():
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(path), (mask > 127).astype(np.uint8))
    run_dir = tmp_path / "run"
    result = train_one_epoch_on(root, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "empty mask" not in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_segmented"] == metrics["train_positives"] == 14
    assert metrics["num_weak"] == 0 and metrics["positives_without_mask"] == 0
    assert metrics["dice_mean"] < 1.0


def _histogram(predicted: list[int], target: list[int], num_bins: int = 10) -> torch.Tensor:
    """One image's histogram: pixel i has probability 0.95 if predicted[i] else 0.05."""
    hist = torch.zeros(2, num_bins, dtype=torch.long)
    for p, t in zip(predicted, target, strict=True):
        k = num_bins - 1 if p else 0
        hist[0, k] += 1
        hist[1, k] += t
    return hist


def test_a_positive_with_an_empty_mask_never_scores_dice_1():
    # image 1: 2 of 4 pixels predicted, 1 of them right over a 1-pixel target:
    # Dice = 2*1/(2+1) = 2/3, IoU = 1/2; image 2: nothing predicted, nothing marked
    scored = _histogram([1, 1, 0, 0], [1, 0, 0, 0])
    empty = _histogram([0, 0, 0, 0], [0, 0, 0, 0])
    pixel = pixel_metrics(torch.stack([scored, empty]), 0.5)
    assert pixel["dice_mean"] == pytest.approx(2 / 3) and pixel["iou_mean"] == pytest.approx(0.5)
    assert pixel["positives_without_mask"] == 1
    assert pixel["dice_per_image"].tolist() == pytest.approx([2 / 3])
    assert pixel["scored"].tolist() == [True, False]
    only_empty = pixel_metrics(torch.stack([empty, empty]), 0.5)
    assert np.isnan(only_empty["dice_mean"]) and only_empty["positives_without_mask"] == 2
    # the validation threshold is not chosen at a Dice of 1 from positives without a mask
    threshold, dice = choose_seg_threshold(torch.stack([empty, empty]))
    assert threshold == 0.5 and np.isnan(dice)
    threshold, dice = choose_seg_threshold(torch.stack([scored, empty]))
    assert dice == pytest.approx(2 / 3)


def test_the_report_counts_positives_without_a_mask_apart():
    notes = _auto_notes({"dice_mean": 0.5, "image_auc": 1.0, "image_ap": 1.0})
    assert not any("without" in note for note in notes)
    notes = _auto_notes({"dice_mean": 0.5, "positives_without_mask": 2, "image_auc": 1.0})
    assert any("2 test positives have no mask pixel" in note for note in notes)
    notes = _auto_notes({"dice_mean": None, "positives_without_mask": 3, "image_auc": 1.0})
    assert any("3 test positives have no mask pixel" in note for note in notes)
    assert not any("has no positives" in note for note in notes)


def test_the_report_says_when_the_segmentation_threshold_marks_every_pixel():
    notes = _auto_notes({"dice_mean": 0.05, "seg_threshold": 0.0, "image_auc": 0.6})
    assert any("threshold chosen on validation is 0: every pixel" in note for note in notes)
    for threshold in (0.01, 0.5, None):
        notes = _auto_notes({"dice_mean": 0.5, "seg_threshold": threshold, "image_auc": 1.0})
        assert not any("every pixel" in note for note in notes)


# --------------------------------------------------------------- 6. checkpoint messages


class _NotWeights:
    """An object a weights-only load refuses."""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x13" + np.random.default_rng(0).bytes(4095), "not a PyTorch checkpoint"),
        (b"\x80" + np.random.default_rng(1).bytes(4095), "not a PyTorch checkpoint"),
        (b"epoch=3\nbest=0.91\n", "not a PyTorch checkpoint (a text file)"),
        (b"", "not a PyTorch checkpoint (an empty file)"),
    ],
    ids=["random bytes", "random bytes as a pickle", "text", "empty"],
)
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, content, expected):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CracksegError) as raised:
        read_checkpoint(path)
    assert str(raised.value) == f"cannot read checkpoint {path}: {expected}"


def test_a_checkpoint_holding_code_is_refused_without_suggesting_unsafe_loading(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "extra": _NotWeights()}, path)
    with pytest.raises(CracksegError) as raised:
        read_checkpoint(path)
    message = str(raised.value)
    assert "weights_only" not in message and "arbitrary code" not in message
    assert message == (
        f"cannot read checkpoint {path}: it holds Python objects besides weights, which "
        "crackseg does not load (a checkpoint is data, never code to run)"
    )


def test_weights_alone_or_a_pickle_of_something_else_say_what_they_are(tmp_path, recwarn):
    bare = tmp_path / "state_dict.ckpt"
    torch.save({"net.w": torch.zeros(2)}, bare)
    with pytest.raises(CracksegError) as raised:
        read_checkpoint(bare)
    assert str(raised.value) == (
        f"cannot read checkpoint {bare}: it holds weights alone (a state_dict), not the "
        "checkpoint crackseg-train saves with its settings"
    )
    pickled = tmp_path / "pickled.ckpt"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CracksegError, match="not a PyTorch checkpoint$"):
        read_checkpoint(pickled)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # torch's, hidden


def test_a_truncated_checkpoint_is_named_as_such(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 7}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(CracksegError, match=r"^cannot read checkpoint .*cut\.ckpt: truncated"):
        read_checkpoint(cut)


def test_a_checkpoint_of_the_legacy_format_is_read_for_its_step(tmp_path):
    path = tmp_path / "legacy.ckpt"
    state = {"state_dict": {"w": torch.ones(3)}, "global_step": 7}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert checkpoint_step(path) == 7


def test_predict_with_random_bytes_as_checkpoint_is_one_line(tmp_path):
    ckpt = tmp_path / "random.ckpt"
    ckpt.write_bytes(os.urandom(4096))
    (tmp_path / "photos").mkdir()
    write_image(tmp_path / "photos" / "a.png", np.zeros((64, 64, 3), np.uint8))
    result = run_entry(
        "predict",
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'photos'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    line = one_line_error(result)
    assert line == f"error: cannot read checkpoint {ckpt}: not a PyTorch checkpoint"


# --------------------------------------------------------------- 7. crackseg-data values


def _photo(folder: Path, name: str = "P", h: int = 64, w: int = 96) -> None:
    mask = np.zeros((h, w), np.uint8)
    mask[10, 0:60] = 255
    write_image(folder / "images" / f"{name}.jpg", np.full((h, w, 3), 100, np.uint8))
    write_image(folder / "masks" / f"{name}.png", mask)


def test_tile_refuses_a_negative_min_crack_pixels(tmp_path, capsys):
    _photo(tmp_path / "src")
    code = data_main(
        ["tile", str(tmp_path / "src"), str(tmp_path / "dst"), "--min-crack-pixels", "-1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err == "error: --min-crack-pixels must be at least 1, got -1\n"
    assert not (tmp_path / "dst").exists()


def test_tile_larger_than_every_image_is_refused_with_the_hint(tmp_path, capsys):
    _photo(tmp_path / "src", "A")
    _photo(tmp_path / "src", "B", h=80, w=70)
    code = data_main(["tile", str(tmp_path / "src"), str(tmp_path / "dst"), "--size", "104"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: no tile cut: no image is 104x104 px or larger (the images are at most 80 px "
        "high and 96 px wide); use a smaller --size, or --pad to mirror-pad the images\n"
    )
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.partial-*"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tile"], "error: crackseg-data tile: the following arguments are required: src, dst"),
        (["tile", "a", "b", "--size", "big"], "error: crackseg-data tile: argument --size: "),
        (["shuffle"], "error: crackseg-data: argument command: invalid choice: 'shuffle'"),
    ],
    ids=["missing arguments", "not a number", "no such command"],
)
def test_a_wrong_command_line_is_one_error_line(argv, expected):
    result = subprocess.run(
        [sys.executable, "-m", "crackseg.data.tools", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert "usage:" not in result.stderr


# --------------------------------------------------------------- 3. refused: nothing written


def _everything(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder`` (hidden ones too): content digest and mtime."""
    listing = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        listing[str(path.relative_to(folder))] = (digest, stat.st_mtime_ns)
    return listing


FINISHED_RUN = [*TINY, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A finished one-epoch run, a prediction made with its weights, a dataset folder and a
    folder of the user's."""
    base = tmp_path_factory.mktemp("refusals")
    data_dir, run_dir, predicted = base / "data", base / "run", base / "predicted"
    result = run_entry(
        "train", *FINISHED_RUN, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = next((run_dir / "checkpoints").glob("best*.ckpt"))
    (dataset,) = data_dir.iterdir()
    photos = base / "photos"
    photos.mkdir()
    for path in sorted((dataset / "images").iterdir())[:2]:
        shutil.copy(path, photos / path.name)
    result = run_entry(
        "predict", f"ckpt_path={checkpoint}", f"input={photos}", f"hydra.run.dir={predicted}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    users = base / "users"  # a folder of the user's, with a file by a name a run writes
    users.mkdir()
    (users / "report.md").write_text("the user's own report\n")
    return {
        "data_dir": data_dir,
        "run": run_dir,
        "users": users,
        "checkpoint": checkpoint,
        "predicted": predicted,
        "dataset": dataset,
        "photos": photos,
    }


REFUSALS = {
    "resume with another setting": (
        "run",
        lambda f: ("train", f"resume={f['run']}", "seed=3"),
        "resume= continues a run with its own settings; drop seed=3",
    ),
    "a fresh run into a finished run": (
        "run",
        lambda f: (
            "train",
            *FINISHED_RUN,
            f"paths.data_dir={f['data_dir']}",
            f"hydra.run.dir={f['run']}",
        ),
        "holds a run that finished",
    ),
    "resume=auto with another seed": (
        "run",
        lambda f: (
            "train",
            *FINISHED_RUN,
            f"paths.data_dir={f['data_dir']}",
            f"hydra.run.dir={f['run']}",
            "resume=auto",
            "seed=3",
        ),
        "already finished, with other settings (data.seed: 0 -> 3; seed: 0 -> 3)",
    ),
    # Refused once Hydra had saved .hydra/ there: resume= of the folder then took it for a
    # run killed early, and its report.md overwrote the user's.
    "a run into a folder of the user's": (
        "users",
        lambda f: ("train", *FINISHED_RUN, f"hydra.run.dir={f['users']}"),
        "holds files that are not a run's, which it would overwrite (report.md)",
    ),
    "predict into a run": (
        "run",
        lambda f: (
            "predict",
            f"ckpt_path={f['checkpoint']}",
            f"input={f['photos']}",
            f"hydra.run.dir={f['run']}",
        ),
        "already holds a run",
    ),
    "predict into a prediction": (
        "predicted",
        lambda f: (
            "predict",
            f"ckpt_path={f['checkpoint']}",
            f"input={f['photos']}",
            f"hydra.run.dir={f['predicted']}",
        ),
        "already holds a run",
    ),
    "predict into a dataset": (
        "dataset",
        lambda f: (
            "predict",
            f"ckpt_path={f['checkpoint']}",
            f"input={f['photos']}",
            f"hydra.run.dir={f['dataset']}",
        ),
        "already holds files by the names a prediction writes (masks/)",
    ),
    "export into a run": (
        "run",
        lambda f: ("export", f"ckpt_path={f['checkpoint']}", f"hydra.run.dir={f['run']}"),
        "already holds a run",
    ),
    "export with a bad setting into a run": (
        "run",
        lambda f: (
            "export",
            f"ckpt_path={f['checkpoint']}",
            "tolerance=-1",
            f"hydra.run.dir={f['run']}",
        ),
        "already holds a run",
    ),
    "eval into a prediction": (
        "predicted",
        lambda f: ("eval", f"ckpt_path={f['checkpoint']}", f"hydra.run.dir={f['predicted']}"),
        "already holds a run",
    ),
    # a folder of prediction outputs without a status, as a killed prediction leaves one
    "export into a dataset": (
        "dataset",
        lambda f: ("export", f"ckpt_path={f['checkpoint']}", f"hydra.run.dir={f['dataset']}"),
        "already holds files by the names a prediction writes (masks/)",
    ),
    "eval into a dataset": (
        "dataset",
        lambda f: ("eval", f"ckpt_path={f['checkpoint']}", f"hydra.run.dir={f['dataset']}"),
        "already holds files by the names a prediction writes (masks/)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_command_writes_nothing_into_the_folder_it_refuses(finished, case):
    folder, command, expected = REFUSALS[case]
    before = _everything(finished[folder])
    line = one_line_error(run_entry(*command(finished)))
    assert expected in line
    assert _everything(finished[folder]) == before


# --------------------------------------------------------------- 1. a resumed run ends as one


#: Three epochs of the tiny run (4 batches each), validated after epochs 1 and 2 (3 batches
#: each), deterministic.
RESUMED_RUN = [
    *TINY,
    "trainer.max_epochs=3",
    "validation_n_epochs=2",
    "data.eval_batch_size=2",
    "trainer.deterministic=true",
    "+callbacks.stall._target_=stall_callback.StallAt",
]


def _train(run_dir: Path, data_dir: Path, *extra: str, stall: str | None = None):
    """``crackseg-train`` of RESUMED_RUN; with ``stall`` (EPOCH:BATCH) it holds still there
    and the running process is returned once it does."""
    args = [*RESUMED_RUN, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *extra]
    if stall is None:
        return run_entry("train", *args, env={"PYTHONPATH": str(HELPERS)})
    marker = run_dir.parent / f"{run_dir.name}.stalled"
    epoch, batch = stall.split(":")
    process = start_train(marker, *args, epoch=int(epoch), batch=batch)
    wait_for_stall(process, marker)
    return process


def _files(run_dir: Path) -> set[str]:
    """The run folder's files; TensorBoard's event files (one more per resumption) as one."""
    names = set()
    for path in run_dir.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(run_dir))
            names.add("tensorboard/events" if ".tfevents." in name else name)
    return names


def _final(run_dir: Path) -> dict:
    """The run's test scores, and every epoch's losses and validation scores."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = METRIC_KEYS | {"best_val_image_ap", "seg_threshold_val_dice"}
    history = json.loads((run_dir / "history.json").read_text())
    return {key: metrics[key] for key in keys} | {"history": history}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resumed")
    run_dir, data_dir = base / "uninterrupted", base / "data"
    result = _train(run_dir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, data_dir


@pytest.mark.parametrize(
    ("signum", "stall", "workers"),
    [
        (signal.SIGTERM, "0:1", 0),  # the first epoch, not validated
        (signal.SIGKILL, "0:1", 0),  # ... killed before any checkpoint: it starts again
        (signal.SIGKILL, "1:1", 2),  # after an epoch's end: last.ckpt of epoch 0, workers
        (signal.SIGTERM, "1:3", 0),  # the last batch before a validation
        (signal.SIGTERM, "1:v0", 0),  # a validation under way while training
        (signal.SIGTERM, "1:val", 0),  # a validated epoch, before its checkpoints
        (signal.SIGTERM, "1:2", 2),  # loader workers read ahead of the batches trained
        (signal.SIGTERM, "2:1", 0),  # the last epoch
        (signal.SIGTERM, "2:val", 0),  # the last epoch validated, before its checkpoints
        (signal.SIGKILL, "2:1", 0),
        (signal.SIGKILL, "2:val", 0),
    ],
    ids=[
        "SIGTERM-first",
        "SIGKILL-first",
        "SIGKILL-second",
        "SIGTERM-before-validation",
        "SIGTERM-validating",
        "SIGTERM-validated",
        "SIGTERM-workers",
        "SIGTERM-last",
        "SIGTERM-last-validated",
        "SIGKILL-last",
        "SIGKILL-last-validated",
    ],
)
def test_a_stopped_run_resumed_ends_as_the_uninterrupted_run(
    uninterrupted, tmp_path, signum, stall, workers
):
    """The resumed run ends with the uninterrupted run's scores, files and checkpoints (with
    loader workers too: the data carries no randomness the workers would change)."""
    reference, data_dir = uninterrupted
    run_dir = tmp_path / "stopped"
    loader = f"data.num_workers={workers}"
    process = _train(run_dir, data_dir, loader, stall=stall)
    process.send_signal(signum)
    process.wait(timeout=120)
    process.stderr.close()
    result = _train(run_dir, data_dir, loader, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final(run_dir) == _final(reference)
    assert _files(run_dir) == _files(reference)
    best = [p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt")]
    assert best == [p.name for p in (reference / "checkpoints").glob("best-*.ckpt")]
    assert "testing the best weights" in (run_dir / "train.log").read_text()


def test_a_ddp_run_stopped_inside_an_accumulation_window_resumes_as_the_uninterrupted_run(
    tmp_path,
):
    """One epoch of 4 batches of 4 in each of 2 processes, their gradients gathered over 2
    batches, stopped in its first batch and resumed. The stop waits for the window's step (a
    checkpoint holds no gradients: batch 0's were lost on resume), and the checkpoint holds
    the running loss sums of both processes (the second's were lost: the epoch's logged
    losses differed)."""
    settings = (
        "trainer.max_epochs=1",
        "data.batch_size=4",
        "+trainer.accumulate_grad_batches=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
    )
    data_dir = tmp_path / "data"
    reference = tmp_path / "uninterrupted"
    result = _train(reference, data_dir, *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "stopped"
    process = _train(run_dir, data_dir, *settings, stall="0:0")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)  # read as it ends: a full pipe would block it
    assert process.returncode == 143, stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 1)  # after the first window
    assert saved["CrackDataModule"]["batches_done"] == 2
    result = _train(run_dir, data_dir, *settings, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final(run_dir) == _final(reference)


def _resume_from(folder: Path, run_dir: Path) -> subprocess.CompletedProcess:
    """``crackseg-train resume=RUN_DIR`` typed in ``folder``."""
    return subprocess.run(
        [sys.executable, "-m", "crackseg.train", f"resume={run_dir}"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(HELPERS)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_run_resumed_on_data_changed_since_is_refused_and_resumes_once_it_is_back(
    uninterrupted, tmp_path
):
    """Two negatives renamed since the run stopped: the same counts, so the split would
    silently move images it trained on into the test split (another count failed in the
    sampler with a traceback). Refused in one line naming them, the run failed with why;
    with the files back it resumes, and ends as the uninterrupted run. The run was started
    with a relative data folder and is resumed from another folder: its paths are the
    folder's it was started from."""
    reference, data_dir = uninterrupted
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    run_dir = tmp_path / "stopped"
    process = _train(run_dir, Path(os.path.relpath(data, REPO)), stall="1:1")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    process.stderr.close()
    kept = {p: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    (root,) = {p.parent.parent for p in data.glob("*/images/noncrack_00000.png")}
    renamed = {"noncrack_00000.png": "noncrack_z0.png", "noncrack_00001.png": "noncrack_z1.png"}
    for folder in ("images", "masks"):
        for old, new in renamed.items():
            (root / folder / old).rename(root / folder / new)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = one_line_error(_resume_from(elsewhere, run_dir))
    assert line.startswith(f"error: the data in {root} changed since the run started"), line
    # the danger: images trained on before the stop would be tested on after it
    assert "; test: 2 gone (noncrack_00000, noncrack_00015), 2 new (noncrack_00002, " in line
    # failed, with why (a sweep counts the job so), its checkpoints kept to resume from
    failed = json.loads((run_dir / "status.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == line.removeprefix("error: ")
    assert {p: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == kept
    for folder in ("images", "masks"):
        for old, new in renamed.items():
            (root / folder / new).rename(root / folder / old)
    result = _resume_from(elsewhere, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final(run_dir) == _final(reference)


def test_paths_made_absolute_by_a_resumption_from_elsewhere_are_the_same_settings(
    tmp_path, monkeypatch
):
    """A run resumed once from another folder records its paths absolute: resumed again
    from the folder it started in (resume=auto, a sweep run again) its settings are the
    same; from a folder where they name other files, they are not."""
    from omegaconf import OmegaConf

    from crackseg.runs.config_changes import config_differences
    from crackseg.runs.resume import anchor_relative_paths

    typed = {
        "paths": {"data_dir": "data", "log_dir": "outputs"},
        "data": {"root": "${paths.data_dir}/cfd"},
    }
    anchored = OmegaConf.create(typed)
    anchor_relative_paths(anchored, tmp_path)
    assert anchored.data.root == str(tmp_path / "data" / "cfd")
    monkeypatch.chdir(tmp_path)
    assert config_differences(anchored, OmegaConf.create(typed)) == []
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    changed = config_differences(anchored, OmegaConf.create(typed))
    assert changed[0] == f"data.root: {tmp_path}/data/cfd -> data/cfd", changed


def test_a_run_resumed_without_its_data_names_where_it_needs_them(tmp_path):
    """Not "set data.root=PATH", which a resumption refuses (it keeps the run's settings)."""
    from crackseg.data.datamodule import CrackDataModule
    from crackseg.errors import DataError
    from crackseg.runs.resume import check_resumed_data

    gone = tmp_path / "moved_away"
    datamodule = CrackDataModule.from_config({"layout": "folder", "root": str(gone)}, {})
    with pytest.raises(DataError) as refused:
        check_resumed_data(datamodule, tmp_path / "last.ckpt")
    assert str(refused.value) == (
        f"the run's data root {gone} does not exist: put the data back there to resume the run"
    )


# --------------------------------------------------------------- 4. one line, not a traceback


def test_training_without_a_validation_split_is_one_line(tmp_path):
    """Lightning would skip validation and keep both thresholds at 0.5, unannounced."""
    from helpers.paper_replicas import make_ksdd2_like

    root = make_ksdd2_like(tmp_path / "ksdd2", train=6, test=4)  # train/ and test/ only
    result = run_entry(
        "train",
        "experiment=paper/ksdd2",
        "model=segdec_small",
        f"data.root={root}",
        "validate_on_test=false",  # and the config carves nothing (data.val_fraction=0)
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_line_error(result).startswith(f"error: the validation split of {root} is empty")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_class_refusing_its_config_arguments_is_one_line_naming_both(tmp_path):
    """A Lightning argument it does not know (+trainer.strategy=nope): the target and its
    refusal on one line, exit 2, and the folder's status says failed, not running. The
    traceback, which the console does not show, is in the run's log, where a report of a
    class that failed inside (not only refused) finds where."""
    run_dir = tmp_path / "run"
    result = run_entry("train", "+trainer.strategy=nope", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    line = one_line_error(result)
    assert line.startswith("error: Error in call to target 'pytorch_lightning.trainer.trainer")
    assert "invalid strategy name" in line
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}
    logged = (run_dir / "train.log").read_text()
    assert "the error as raised (the console showed it as one line):\nTraceback (most" in logged
    assert "invalid strategy name" in logged.split("Traceback", 1)[1]


def test_a_training_that_diverges_ends_with_one_line(tmp_path):
    """A learning rate far too high: the loss turns NaN, and every later epoch, validation
    and test computed on NaN weights; the run now fails at the epoch's end, saying why."""
    run_dir = tmp_path / "run"
    result = run_entry("train", *TINY, "optim.lr=1e12", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line_error(result)
    assert line == (
        "error: the training diverged: its loss in epoch 1 is nan at learning rate 1e+12; "
        "lower optim.lr, or train in float32 (trainer.precision=32-true)"
    )
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}
    assert not (run_dir / "metrics.json").exists()


def test_an_unexpected_error_of_a_single_run_is_recorded_as_failed(tmp_path):
    """A fault of crackseg's (here a stand-in task) keeps its traceback, and the folder's
    status says failed: no run is left looking as if it still ran."""
    from omegaconf import OmegaConf

    from crackseg.runs.lifecycle import run_task
    from crackseg.runs.ownership import accept_run_folder

    def broken(cfg):
        accept_run_folder(cfg.paths.output_dir)  # as every command's task does first
        raise RuntimeError("a bug")

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(RuntimeError, match="a bug"):
        run_task(broken, cfg)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status == {"status": "failed", "error": "a bug"}


def test_a_sigterm_dropped_where_python_ignores_exceptions_still_stops_the_command():
    """The KeyboardInterrupt a SIGTERM raises is dropped where it lands in a finaliser or a
    weakref callback the garbage collector runs (seen in crackseg-export); the stop is
    raised again when the work is over, so the command still ends as stopped."""
    from crackseg.runs.lifecycle import sigterm_as_ctrl_c

    with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here
        except KeyboardInterrupt:
            pass  # dropped, as Python drops it in a weakref callback
    with sigterm_as_ctrl_c():
        pass  # no stop asked: nothing raised


def test_ctrl_c_inside_a_lightning_call_ends_as_a_stop(tmp_path, capsys):
    """Ctrl-C during the validation or test after training: Lightning's handler ends the
    process with exit(1); the run ends as stopped (143, status interrupted) all the same."""
    from omegaconf import OmegaConf

    from crackseg.runs.lifecycle import EXIT_STOPPED, run_task
    from crackseg.runs.ownership import accept_run_folder

    def tested(cfg):
        accept_run_folder(cfg.paths.output_dir)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # what Lightning's _call_and_handle_interrupt does

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(SystemExit) as ended:
        run_task(tested, cfg)
    assert ended.value.code == EXIT_STOPPED
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    assert f"crackseg-train resume={tmp_path}" in capsys.readouterr().err

    def exits(cfg):
        sys.exit(1)  # any other exit stays what it is

    with pytest.raises(SystemExit) as ended:
        run_task(exits, OmegaConf.create({"paths": {"output_dir": str(tmp_path / "other")}}))
    assert ended.value.code == 1


def test_an_optuna_search_of_no_trials_is_refused_up_front(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "search"
    result = run_entry(
        "train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=0",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert one_line_error(result) == "error: hydra.sweeper.n_trials must be an integer >= 1, not 0"
    assert not sweep_dir.exists()


def test_an_optuna_search_whose_every_trial_failed_is_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "search"
    # there, without images (a missing or empty one is refused before any trial)
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    (empty / "notes.txt").write_text("images to come\n")
    result = run_entry(
        "train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        "data=crack_segmentation",
        f"data.root={empty}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: 1 of 1 jobs failed; see {sweep_dir / 'summary.md'}"
    # its folder records its command line, as a grid sweep's does (Optuna's saved none)
    recorded = OmegaConf.load(sweep_dir / "multirun.yaml")
    assert "hydra.sweeper.n_trials=1" in recorded.hydra.overrides.hydra
    assert "optuna" in recorded.hydra.sweeper._target_.lower()


def test_an_onnx_model_with_crackseg_metadata_but_another_network_is_one_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from crackseg.deploy.backends import ModelInfo

    # A network of one grey 8x8 input, labelled as crackseg's 3-channel 64x128 network.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])],
        "another",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    info = ModelInfo(3, 64, 128, None, 0.5, 0.5)
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    photos = tmp_path / "photos"
    write_image(photos / "a.png", np.zeros((64, 128, 3), np.uint8))
    out = tmp_path / "out"
    result = run_entry(
        "predict", "backend=onnx", f"onnx_path={path}", f"input={photos}", f"hydra.run.dir={out}"
    )
    line = one_line_error(result)
    assert line == (
        f"error: {path} is not the network its crackseg metadata describes: its input is "
        "n x 1 x 8 x 8, not N x 3 x H x W"
    )
    assert json.loads((out / "status.json").read_text())["status"] == "failed"


def test_a_run_folder_that_cannot_be_created_is_one_line():
    """(crackseg-train's is tested in test_faults.py: a name too long, a file in the way.)"""
    result = run_entry("predict", "hydra.run.dir=/proc/x")
    assert one_line_error(result) == (
        "error: cannot set up the run folder: /proc/x: No such file or directory"
    )


# --------------------------------------------------------------- 5. an interrupted prediction


def test_an_interrupted_prediction_ends_with_one_line_and_its_status(tiny_checkpoint, tmp_path):
    """SIGTERM, which crackseg-predict turns into Ctrl-C: the two end alike."""
    photos = tmp_path / "photos"
    photo = np.random.default_rng(0).integers(0, 256, (256, 512, 3), dtype=np.uint8)
    for index in range(300):  # tiles of 64x128: about a minute of work, stopped at once
        write_image(photos / f"p{index:03d}.png", photo)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crackseg.predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photos}",
            "precision=32",
            f"hydra.run.dir={out}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def done() -> list[str]:  # images whose overlay is written whole (the last of its files)
        found = (out / "overlays").glob("*.png") if (out / "overlays").is_dir() else []
        return [p.name.removesuffix(".png") for p in found if not p.name.startswith(".")]

    # two overlays: the first image's rows are in (an image's rows follow its overlay, and a
    # stop between the two, at the first image, would leave no table to read)
    while len(done()) < 2:
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    # the images predicted so far are in the tables, as in a finished run's (all but the
    # one being written when it stopped, if any)
    rows = {row.split(",")[0] for row in (out / "predictions.csv").read_text().splitlines()[1:]}
    assert 0 < len(rows) < 300
    assert stderr.strip().splitlines()[-1] == (
        f"stopped: the predictions of {plural(len(rows), 'image')} made so far are in {out}; "
        "predict the rest into another folder"
    )
    assert rows <= set(done()) and len(set(done()) - rows) <= 1
    # the folder is a prediction's: another one into it is refused and writes nothing
    before = _everything(out)
    again = run_entry(
        "predict", f"ckpt_path={tiny_checkpoint}", f"input={photos}", f"hydra.run.dir={out}"
    )
    assert "already holds a run" in one_line_error(again)
    assert _everything(out) == before


def test_an_overlap_that_would_multiply_the_tiles_is_refused(tiny_checkpoint, tmp_path):
    write_image(tmp_path / "photos" / "a.png", np.zeros((320, 480, 3), np.uint8))
    out = tmp_path / "out"
    result = run_entry(
        "predict",
        f"ckpt_path={tiny_checkpoint}",
        f"input={tmp_path / 'photos'}",
        "overlap=0.99",
        f"hydra.run.dir={out}",
    )
    assert one_line_error(result) == (
        "error: overlap must be a number in [0, 0.75] (at 0.75 every pixel is predicted about "
        "16 times already), not 0.99"
    )


@pytest.mark.parametrize("check_files", [True, False])
def test_a_positive_with_an_empty_mask_is_weak_whether_or_not_files_are_checked(
    tmp_path, check_files
):
    """Trained as segmented, its empty mask would teach the segmentation, and with
    ``mask_max`` the decision too, that the positive has no defect."""
    for name in ("crack_a", "crack_b", "noncrack_c"):
        mask = np.zeros((16, 16), np.uint8)
        if name == "crack_a":
            mask[4:8, 2:14] = 255
        write_image(tmp_path / "images" / f"{name}.png", np.full((16, 16, 3), 90, np.uint8))
        write_image(tmp_path / "masks" / f"{name}.png", mask)
    samples = index_layout("crack_segmentation", tmp_path)["all"]
    if check_files:
        samples = check_samples(samples)
    # weak_masks: read the masks of weak positives too (loss.decision_target=mask_max_all)
    dataset = CrackDataset(samples, channels=3, height=16, width=16, weak_masks=True)
    items = {s.sample_id: dataset[i] for i, s in enumerate(dataset.samples)}
    assert items["crack_a"]["segmented"] and items["crack_a"]["mask_known"]
    assert not items["crack_b"]["segmented"] and not items["crack_b"]["mask_known"]
    assert items["crack_b"]["label"] == 1
    assert items["noncrack_c"]["segmented"] and items["noncrack_c"]["mask_known"]


def test_a_validation_split_of_one_class_leaves_the_best_validation_ap_undefined(tmp_path):
    """Its AP is logged as 0 (so it never wins a checkpoint), but the run's metrics and
    report say undefined, not 0."""
    from crackseg.data.synthetic import generate_synthetic_dataset

    flat = generate_synthetic_dataset(tmp_path / "flat", 12, 12, height=64, width=128, seed=0)
    names = sorted(p.name for p in (flat / "images").iterdir())
    crack = [n for n in names if not n.startswith("noncrack")]
    clean = [n for n in names if n.startswith("noncrack")]
    parts = {"train": crack[:8] + clean[:6], "val": clean[6:9], "test": crack[8:] + clean[9:]}
    root = tmp_path / "set"
    for part, files in parts.items():
        for name in files:
            for folder in ("images", "masks"):
                (root / part / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(flat / folder / name, root / part / folder / name)
    run_dir = tmp_path / "run"
    result = train_one_epoch_on(root, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_positives"] == 0
    assert metrics["best_val_image_ap"] is None
    assert "Validation AP" not in (run_dir / "report.md").read_text()


def test_a_training_split_without_a_defect_image_is_refused_before_training(tmp_path):
    for name in ("noncrack_a", "noncrack_b", "noncrack_c"):
        write_image(tmp_path / "images" / f"{name}.png", np.full((16, 16, 3), 90, np.uint8))
    with pytest.raises(CracksegError, match="holds no defect image, only 2 negatives"):
        datamodule_of(tmp_path, layout="crack_segmentation", val_fraction=0.3, test_fraction=0.0)


def test_commands_started_in_the_same_second_get_a_run_folder_each(tmp_path, monkeypatch):
    """Two predictions started together by a script share the default name (the time to
    the second): the second one was refused as the first one's folder was in use. Each
    command makes its folder with an exclusive mkdir, the next free ``_N`` if taken, and
    keeps the name for every resolution until it ends; the processes of one run started by
    a launcher (torchrun) take the name as it is, all alike."""
    from crackseg.runs import resolvers

    default = str(tmp_path / "outputs" / "runs" / "predict" / "2026-01-01_10-00-00")
    assert resolvers.run_dir(None, default) == default and Path(default).is_dir()
    assert resolvers.run_dir(None, default) == default  # resolved again by the same command
    resolvers.forget_new_run_folders()  # it ended: the next command (or process) is another
    assert resolvers.run_dir(None, default) == f"{default}_2"
    resolvers.forget_new_run_folders()
    assert resolvers.new_run_folder(default) == f"{default}_3"
    resolvers.forget_new_run_folders()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolvers.new_run_folder(default) == default
    assert sorted(p.name for p in Path(default).parent.iterdir()) == [
        "2026-01-01_10-00-00",
        "2026-01-01_10-00-00_2",
        "2026-01-01_10-00-00_3",
    ]
    resolvers.forget_new_run_folders()


@pytest.mark.parametrize("config", ["train", "eval", "predict", "export"])
def test_every_command_names_its_new_folder_through_the_resolver(config):
    from hydra import compose, initialize_config_dir

    from crackseg import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config, return_hydra_config=True)
    assert cfg.hydra.run._get_node("dir")._value().startswith("${crackseg.run_dir:")


def test_printing_the_resolved_config_leaves_no_run_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "crackseg.train", "--cfg", "all", "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "dir: outputs/runs/" in result.stdout
    assert not list(tmp_path.rglob("*"))  # the folder it named was made, and removed


def test_a_command_refused_with_one_line_leaves_no_folder_of_its_own(tmp_path, tiny_checkpoint):
    """As after Hydra's own refusals: a folder crackseg named for a command refused for a
    setting, a missing file or its data goes with the record of the refusal (a prediction
    retried after each mistake left one folder of status failed a try; a training or an
    evaluation refused for its data, one with its TensorBoard log). A folder the user named
    keeps the record; one holding more than it (a training's checkpoints) is kept whole."""
    here, empty = tmp_path / "here", tmp_path / "empty"
    here.mkdir()
    empty.mkdir()  # a data root without the layout's images/
    no_images = ("data=crack_segmentation", f"data.root={empty}")
    commands = [
        ("predict", "ckpt_path=x.ckpt", "input=.", "decision_threshold=high"),
        ("train", "experiment=demo", "trainer.max_epochs=ten"),
        ("train", "experiment=demo", "+seeed=1"),  # refused before the task
        ("eval",),  # no ckpt_path
        ("train", *no_images),
        ("eval", f"ckpt_path={tiny_checkpoint}", *no_images),
    ]
    for module, *overrides in commands:
        result = subprocess.run(
            [sys.executable, "-m", f"crackseg.{module}", *overrides],
            cwd=here,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2 and result.stderr.strip().startswith("error: ")
        assert not list(here.rglob("*")), (module, sorted(here.rglob("*")))
    named = tmp_path / "named"
    result = subprocess.run(
        [sys.executable, "-m", "crackseg.train", f"hydra.run.dir={named}", "+seeed=1"],
        cwd=here,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert json.loads((named / "status.json").read_text())["status"] == "failed"


def test_a_refusals_record_goes_only_from_a_folder_holding_nothing_else(tmp_path):
    from crackseg.runs import resolvers

    default = tmp_path / "outputs" / "runs" / "x" / "2026-01-01_10-00-00"
    folder = Path(resolvers.new_run_folder(str(default)))
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", "train.log", "status.json"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("x")
    (folder / "checkpoints").mkdir()
    resolvers.remove_refused_folder_at_exit(folder)
    resolvers.forget_new_run_folders()
    resolvers._remove_unused(folder.absolute(), tmp_path / "outputs")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".hydra",
        "checkpoints",
        "status.json",
        "train.log",
    ]
    (folder / "checkpoints").rmdir()
    resolvers._remove_unused(folder.absolute(), tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


def test_a_run_killed_in_its_first_seconds_keeps_its_folder(tmp_path, tiny_data_dir):
    """Killed (kill -9) while it checks its config and imports Lightning, before it builds
    its data: its folder held only .hydra/ and its log, which the next run took as empty,
    with other settings. It says running from the moment it accepts its folder."""
    run_dir = tmp_path / "run"
    killed_at_data = (
        "import os, sys; import crackseg.data.datamodule as d; "
        "d.CrackDataModule.from_config = lambda *a, **k: os._exit(9); "
        "sys.argv[0] = 'crackseg-train'; from crackseg.train import main; main()"
    )
    args = [*TINY, f"paths.data_dir={tiny_data_dir}", f"hydra.run.dir={run_dir}"]
    killed = subprocess.run(
        [sys.executable, "-c", killed_at_data, *args], cwd=REPO, capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    line = one_line_error(run_tiny(run_dir, tiny_data_dir, "seed=7"))
    assert line.startswith("error: ") and "resume" in line, line
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config


@pytest.mark.parametrize(
    ("makes_its_data", "world_size", "expected"),
    [
        (False, "1", ["prepare", "setup fit"]),
        (True, "1", ["prepare", "setup fit"]),
        (False, "2", ["prepare", "setup fit"]),  # every process refuses bad data alike
        (True, "2", []),  # Lightning makes it in the first process, then splits it in each
    ],
)
def test_the_data_is_split_before_the_run_starts_in_every_process_that_can(
    monkeypatch, makes_its_data, world_size, expected
):
    """A process of a run launched together (srun --ntasks=N) that refused its data alone
    left the others waiting for it at Lightning's first collective (30 minutes)."""
    from types import SimpleNamespace

    from crackseg.runs.lifecycle import split_data_now

    monkeypatch.setenv("WORLD_SIZE", world_size)
    done: list[str] = []
    datamodule = SimpleNamespace(
        makes_its_data=makes_its_data,
        prepare_data=lambda: done.append("prepare"),
        setup=lambda stage: done.append(f"setup {stage}"),
    )
    split_data_now(datamodule, "fit")
    assert done == expected


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it_while_it_trains(tmp_path):
    """A shell's background job (``crackseg-train ... &``) starts with SIGINT ignored: the
    test kept ignoring it, but training caught it as a stop."""
    from crackseg.runs.training_control import StopCheckpoint

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        StopCheckpoint(str(tmp_path))._catch_first_ctrl_c()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop = StopCheckpoint(str(tmp_path))
        stop._catch_first_ctrl_c()
        assert signal.getsignal(signal.SIGINT) == stop._on_sigint
        stop._restore_sigint()
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
