"""crackseg-predict end to end: outputs, scores as in evaluation, and every bad input."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, one_line_error, predict_settings, run_entry
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from crackseg.data.io import list_input_images
from crackseg.deploy.backends import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    ModelInfo,
    check_cuda_provider,
    onnx_providers,
    open_backend,
    resolve_device,
)
from crackseg.deploy.predict_folder import (
    CRACK_COLUMNS,
    PREDICTION_COLUMNS,
    _read_for_prediction,
    predict_folder,
    warn_of_stand_in_thresholds,
)
from crackseg.deploy.settings import PredictSettings, checked_prediction
from crackseg.errors import ConfigError, CracksegError, DataError, RunFolderError


def rows_of(path):
    return list(csv.DictReader(path.open()))


def predict_config(output_dir, **changes):
    """crackseg-predict's composed config, writing into ``output_dir``."""
    values = predict_settings(**changes).__dict__
    return OmegaConf.create({**values, "paths": {"output_dir": str(output_dir)}})


def predict_checked(config):
    """What crackseg-predict does in the folder it accepted: check, then predict."""
    return predict_folder(*checked_prediction(config), Path(config.paths.output_dir)).counts


def test_scores_of_input_sized_images_equal_the_training_runs_test_scores(
    tiny_run, torch_predictions
):
    """The training run's test scores, which crackseg-eval reproduces file for file
    (test_train_e2e.py::test_eval_of_a_checkpoint_matches_the_test_step)."""
    predicted = {r["file"]: r for r in rows_of(torch_predictions / "predictions.csv")}
    tested = rows_of(tiny_run / "test_scores.csv")
    assert tested
    for row in tested:
        name = row["image"].rsplit("/", 1)[-1]
        assert float(predicted[name]["decision_score"]) == pytest.approx(
            float(row["decision_score"]), abs=2e-6
        ), name
        assert predicted[name]["decision"] == row["decision"], name


def test_every_image_gets_a_map_a_mask_and_an_overlay_at_its_own_size(
    photo_folder, torch_predictions
):
    rows = rows_of(torch_predictions / "predictions.csv")
    assert list(rows[0]) == PREDICTION_COLUMNS  # no millimetres without pixel_size_mm
    names = sorted(r["file"] for r in rows)
    readable = sorted(p.name for p in photo_folder.iterdir() if p.name != "broken.jpg")
    assert names == readable
    wall = next(r for r in rows if r["file"] == "wall.png")
    assert (wall["width"], wall["height"]) == ("350", "100")
    for folder in ("probabilities", "masks", "overlays"):
        written = cv2.imread(str(torch_predictions / folder / "wall.png.png"), cv2.IMREAD_UNCHANGED)
        assert written.shape[:2] == (100, 350), folder
    mask = cv2.imread(str(torch_predictions / "masks" / "wall.png.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= {0, 255}
    assert float(wall["crack_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
    cracks = rows_of(torch_predictions / "cracks.csv")
    assert list(cracks[0]) == CRACK_COLUMNS
    assert sum(int(r["cracks"]) for r in rows) == len(cracks)


def test_x_jpg_and_x_png_are_both_predicted_into_their_own_files(torch_predictions):
    files = {r["file"]: r for r in rows_of(torch_predictions / "predictions.csv")}
    assert {"x.jpg", "x.png"} <= files.keys()
    for folder in ("probabilities", "masks", "overlays"):
        assert (torch_predictions / folder / "x.jpg.png").is_file()
        assert (torch_predictions / folder / "x.png.png").is_file()
    # Different images behind the two names: their maps differ.
    jpg = cv2.imread(str(torch_predictions / "probabilities" / "x.jpg.png"))
    png = cv2.imread(str(torch_predictions / "probabilities" / "x.png.png"))
    assert not np.array_equal(jpg, png)


def test_an_unreadable_file_is_skipped_named_and_counted(torch_predictions):
    console = (torch_predictions.parent / "console.txt").read_text()
    assert "skipping an unreadable image" in console and "broken.jpg" in console
    last = [line for line in console.splitlines() if "predicted" in line][-1]
    assert "1 unreadable" in last
    status = json.loads((torch_predictions / "status.json").read_text())
    assert status["status"] == "finished" and status["metrics"]["unreadable"] == 1


def test_broken_symlinks_are_listed_and_skipped_as_unreadable(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")  # dangling
    (tmp_path / "c.png").symlink_to(tmp_path / "c.png")  # a loop
    paths = list_input_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    skipped = {}
    with tqdm(disable=True) as progress:
        read = [path for (path, _), _ in _read_for_prediction(paths, 3, skipped, progress)]
    assert [p.name for p in read] == ["a.png"]
    assert [p.name for p in skipped] == ["b.png", "c.png"]


def test_a_used_run_folder_is_refused(tiny_checkpoint, photo_folder, torch_predictions):
    before = (torch_predictions / "predictions.csv").read_bytes()
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photo_folder}",
            f"hydra.run.dir={torch_predictions}",
        )
    )
    assert line == (  # named as what it is
        f"error: {torch_predictions} already holds a run of crackseg-predict; "
        "choose another hydra.run.dir"
    )
    assert (torch_predictions / "predictions.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("leftover", "named"),
    [
        ("predictions.csv", "predictions.csv"),
        ("cracks.csv", "cracks.csv"),
        ("probabilities/a.jpg.png", "probabilities/"),
        ("masks/a.jpg.png", "masks/"),
        ("overlays/.a.jpg.png.partial-1.png", "overlays/"),
    ],
)
def test_a_folder_holding_earlier_predictions_but_no_status_is_refused(tmp_path, leftover, named):
    """What a prediction killed before it wrote status.json leaves, or any folder given as
    hydra.run.dir: its files would be overwritten."""
    (tmp_path / leftover).parent.mkdir(exist_ok=True)
    (tmp_path / leftover).write_bytes(b"earlier")
    with pytest.raises(RunFolderError) as raised:
        predict_checked(predict_config(tmp_path))
    assert str(raised.value) == (
        f"{tmp_path} already holds files by the names a prediction writes ({named}); "
        "choose another hydra.run.dir"
    )
    assert (tmp_path / leftover).read_bytes() == b"earlier"


def test_hydra_keeps_its_config_out_of_a_folder_holding_earlier_predictions(tmp_path):
    """The refused command must not have replaced the earlier prediction's .hydra/ first."""
    from crackseg.runs.ownership import release_run_folder
    from crackseg.runs.resolvers import hydra_subdir

    try:
        assert hydra_subdir(str(tmp_path), None) == ".hydra"
        (tmp_path / "predictions.csv").write_text("file\n")
        assert hydra_subdir(str(tmp_path), None) is None
    finally:
        release_run_folder(tmp_path)


def test_empty_output_folders_are_no_earlier_predictions(tmp_path):
    for name in ("probabilities", "masks", "overlays"):
        (tmp_path / name).mkdir()
    with pytest.raises(CracksegError, match="^checkpoint x.ckpt does not exist$"):  # the next
        predict_checked(predict_config(tmp_path))


def test_a_threshold_that_is_no_number_is_refused_before_anything_is_written(
    tiny_checkpoint, photo_folder, tmp_path
):
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photo_folder}",
            "decision_threshold=high",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert "decision_threshold must be null or a number in [0, 1], not 'high'" in line
    written = {p.name for p in tmp_path.iterdir()}
    assert not written & {"probabilities", "masks", "overlays", "predictions.csv"}


def test_a_tile_beyond_every_image_is_refused_with_the_side_that_takes_each_whole(
    tiny_checkpoint, photo_folder, tmp_path
):
    """A tile a million pixels wide would be mirror padding, and would ask for more memory
    than the machine has (the system killed such a run without a line)."""
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photo_folder}",
            "mode=tile",
            "tile_width=1000000",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert line == (
        "error: tile_width=1000000 is beyond every image (the largest is 350 px wide): its "
        "tiles would reach into mirror padding; tile_width=352 predicts each image in one tile"
    )
    written = {p.name for p in tmp_path.iterdir()}
    assert not written & {"probabilities", "masks", "overlays", "predictions.csv"}
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predictor import Plan
    from crackseg.deploy.settings import refuse_tiles_beyond_every_image

    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    paths = sorted(photo_folder.iterdir())  # the unreadable file among them
    refuse_tiles_beyond_every_image(Plan("tile", 104, 352), info, paths)  # each whole
    refuse_tiles_beyond_every_image(Plan("tile", 64, 128), info, [])  # the model's own
    with pytest.raises(ConfigError, match="^tile_height=112 is beyond every image .*100 px high"):
        refuse_tiles_beyond_every_image(Plan("tile", 112, 128), info, paths)


def test_an_unknown_device_is_refused(tiny_checkpoint, photo_folder, tmp_path):
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photo_folder}",
            "device=tpu",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert "device must be auto, cpu, cuda or cuda:N, not 'tpu'" in line


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("tpu", "cuda:x", "gpu", "cuda:"):
        with pytest.raises(ConfigError, match="device must be"):
            resolve_device(name)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("overlap", 1.0, "overlap must be a number in [0, 0.75]"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("precision", 16, "precision must be auto, 32 or bf16"),
        ("mode", "crop", "mode must be auto or tile or resize"),
        ("decision_threshold", 1.5, "decision_threshold must be null or a number in [0, 1]"),
        ("segmentation_threshold", -0.1, "segmentation_threshold must be null or a number in"),
        ("pixel_size_mm", 0, "pixel_size_mm must be null or a number > 0"),
        ("pixel_size_mm", float("inf"), "pixel_size_mm must be null or a number > 0"),
        ("min_crack_pixels", 0, "min_crack_pixels must be an integer >= 1"),
        ("tile_height", 64.5, "tile_height must be null or a positive integer"),
        ("backend", "tensorrt", "backend must be torch or onnx"),
        # an unset shell variable: no folder, not "no reference masks"
        ("reference_masks", "", "reference_masks must be null or a folder (leave it out for"),
    ],
)
def test_a_setting_that_cannot_work_is_named(key, value, message):
    values = {**predict_settings().__dict__, key: value}
    with pytest.raises(ConfigError) as raised:
        PredictSettings.from_config(OmegaConf.create(values))
    assert message in str(raised.value)


@pytest.mark.parametrize("given", ["???", "", None])
def test_a_missing_input_says_what_to_give(given):
    """predict.yaml's ``input: ???``; ``input=`` (an unset shell variable) is no current
    folder to predict; ``input=null`` is no path."""
    values = {**predict_settings().__dict__, "input": given}
    with pytest.raises(ConfigError, match=r"^input=IMAGE_OR_FOLDER is required$"):
        PredictSettings.from_config(OmegaConf.create(values))


def test_a_folder_lists_its_images_and_names_the_files_it_leaves_out(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.gif").write_bytes(b"GIF89a")
    (tmp_path / ".DS_Store").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "c.png"), np.zeros((4, 4, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_input_images(tmp_path)] == ["a.png"]
    kinds = ".png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp"
    assert f"{tmp_path}: 1 file left out, not {kinds} images: {tmp_path / 'b.gif'}" in caplog.text
    assert "DS_Store" not in caplog.text
    assert f"1 subfolder not read (give each as input): {tmp_path / 'sub'}" in caplog.text
    nested = tmp_path / "nested"
    (nested / "inner").mkdir(parents=True)
    cv2.imwrite(str(nested / "inner" / "c.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"no images \(.png/.jpg/.* found in .*subfolders are not"):
        list_input_images(nested)


@pytest.mark.parametrize("name", ["b.gif", "noext"])
def test_one_file_a_folder_would_leave_out_is_refused_as_input(tiny_checkpoint, tmp_path, name):
    """A file given as input keeps to a folder's rule, whatever it holds (a PNG here)."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 128, 3), np.uint8))
    (tmp_path / name).write_bytes((tmp_path / "a.png").read_bytes())
    run_dir = tmp_path / "run"
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={tmp_path / name}",
            f"hydra.run.dir={run_dir}",
        )
    )
    assert line == (
        f"error: {tmp_path / name} is not an image crackseg reads "
        "(by its extension: .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp)"
    )
    written = {p.name for p in run_dir.iterdir()}
    assert not written & {"probabilities", "masks", "overlays", "predictions.csv", "cracks.csv"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ckpt_path": None}, "backend=torch needs ckpt_path=PATH.ckpt"),
        ({"onnx_path": "m.onnx"}, "onnx_path is read by backend=onnx; drop it or set"),
        ({"backend": "onnx", "ckpt_path": None}, "backend=onnx needs onnx_path=PATH.onnx"),
        ({"backend": "onnx", "onnx_path": "m.onnx"}, "ckpt_path is read by backend=torch"),
        (
            {"backend": "onnx", "ckpt_path": None, "onnx_path": "m.onnx", "precision": "bf16"},
            "precision=bf16 needs backend=torch (ONNX models run in float32)",
        ),
    ],
)
def test_each_backend_needs_its_own_model_file(changes, message):
    values = {**predict_settings().__dict__, **changes}
    with pytest.raises(ConfigError, match=re.escape(message)):
        PredictSettings.from_config(OmegaConf.create(values))


@pytest.mark.parametrize(
    ("trained", "native", "expected"),
    [
        ("bf16-mixed", True, "bf16"),
        ("bf16-mixed", False, "32"),  # emulated bf16 would be slower than float32
        ("32-true", True, "32"),
        ("16-mixed", True, "32"),
        (None, True, "bf16"),  # a checkpoint that does not say: the device's own
        (None, False, "32"),
    ],
)
def test_precision_auto_predicts_as_the_checkpoint_trained(monkeypatch, trained, native, expected):
    from crackseg.deploy import backends

    own = "bf16-mixed" if native else "32-true"
    monkeypatch.setattr(backends, "native_precision", lambda device_type, gpu=None: own)
    assert backends.prediction_precision(trained, torch.device("cpu")) == expected


def test_precision_auto_on_a_gpu_asks_the_named_gpu_in_this_process(monkeypatch):
    """crackseg-predict starts no process that would need CUDA uninitialised: it initialises
    CUDA and asks the GPU itself, not through a child process (seconds on every run)."""
    from crackseg.deploy import backends
    from crackseg.models import precision

    cuda, asked = backends.torch.cuda, []
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "init", lambda: asked.append("init"))
    monkeypatch.setattr(cuda, "is_initialized", lambda: "init" in asked)
    monkeypatch.setattr(cuda, "device", lambda gpu: asked.append(gpu) or contextlib.nullcontext())
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda including_emulation: True)
    monkeypatch.setattr(precision, "_ask_cuda_bf16", lambda gpu: pytest.fail("a child process"))
    assert backends.prediction_precision("bf16-mixed", torch.device("cuda", 1)) == "bf16"
    assert asked == ["init", 1]


def test_precision_auto_is_the_default_and_reads_the_checkpoint(tiny_checkpoint, monkeypatch):
    """As crackseg-eval: the tiny run trained in 32-true predicts in float32, even where the
    device computes in bf16 natively."""
    from crackseg.deploy import backends

    monkeypatch.setattr(backends, "native_precision", lambda device_type, gpu=None: "bf16-mixed")
    assert OmegaConf.load(REPO / "conf" / "predict.yaml").precision == "auto"
    checkpoint = str(tiny_checkpoint)
    assert not open_backend(predict_settings(ckpt_path=checkpoint, precision="auto")).bf16
    assert open_backend(predict_settings(ckpt_path=checkpoint, precision="bf16")).bf16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("device", "available", "gpus", "expected"),
    [
        ("cpu", [CUDA_PROVIDER, CPU_PROVIDER], 1, [CPU_PROVIDER]),
        ("auto", [CPU_PROVIDER], 1, [CPU_PROVIDER]),
        ("auto", [CUDA_PROVIDER, CPU_PROVIDER], 0, [CPU_PROVIDER]),  # no GPU visible
        (
            "auto",
            [CUDA_PROVIDER, CPU_PROVIDER],
            1,
            [(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER],
        ),
        (
            "cuda",
            [CUDA_PROVIDER, CPU_PROVIDER],
            2,
            [(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER],
        ),
        (
            "cuda:1",
            [CUDA_PROVIDER, CPU_PROVIDER],
            2,
            [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER],
        ),
    ],
)
def test_onnx_providers_follow_the_device_and_the_gpus_visible(device, available, gpus, expected):
    assert onnx_providers(device, available, gpus) == expected


@pytest.mark.parametrize(
    ("device", "available", "gpus", "message"),
    [
        (
            "cuda:3",
            [CUDA_PROVIDER, CPU_PROVIDER],
            1,
            "device=cuda:3 but 1 CUDA GPU visible (cuda:0..0)",
        ),
        (
            "cuda",
            [CUDA_PROVIDER, CPU_PROVIDER],
            0,
            "device=cuda but no CUDA GPU is visible (use device=cpu)",
        ),
        (
            "cuda",
            [CPU_PROVIDER],
            1,
            "device=cuda but this onnxruntime has no CUDA provider "
            "(install onnxruntime-gpu, or use device=cpu)",
        ),
        ("gpu", [CPU_PROVIDER], 0, "device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    ],
)
def test_an_onnx_device_that_cannot_work_is_refused_up_front(device, available, gpus, message):
    with pytest.raises(ConfigError) as raised:
        onnx_providers(device, available, gpus)
    assert str(raised.value) == message


def test_a_cuda_provider_that_did_not_start_is_refused_not_run_on_the_cpu(caplog):
    on_gpu = [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    with pytest.raises(
        ConfigError, match=r"^device=cuda:1 but onnxruntime's CUDA provider did not start"
    ):
        check_cuda_provider("cuda:1", on_gpu, [CPU_PROVIDER])
    check_cuda_provider("cuda:1", on_gpu, [CUDA_PROVIDER, CPU_PROVIDER])
    check_cuda_provider("cpu", [CPU_PROVIDER], [CPU_PROVIDER])
    check_cuda_provider("auto", on_gpu, [CPU_PROVIDER])  # a GPU where one works: warned
    assert "device=auto runs on the CPU: onnxruntime's CUDA provider did not start" in caplog.text


def test_a_folder_of_unreadable_images_fails(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    (photos / "b.png").write_bytes(b"not a png")
    line = one_line_error(
        run_entry(
            "predict",
            f"ckpt_path={tiny_checkpoint}",
            f"input={photos}",
            f"hydra.run.dir={tmp_path}/run",
        )
    )
    assert line == (
        f"error: none of the 2 images in {photos} could be read "
        f"(the first: empty file: {photos / 'a.jpg'}): {photos / 'a.jpg'}, {photos / 'b.png'}"
    )
    assert not (tmp_path / "run" / "predictions.csv").exists()


def test_one_unreadable_image_given_as_input_fails_saying_why(tiny_checkpoint, tmp_path):
    """Not "none of the 1 images in x.png could be read: x.png": the decoder's reason."""
    fake = tmp_path / "fake.png"
    fake.write_text("some notes, not an image\n")
    result = run_entry(
        "predict", f"ckpt_path={tiny_checkpoint}", f"input={fake}", f"hydra.run.dir={tmp_path}/run"
    )
    line = one_line_error(result)
    assert line == f"error: cannot decode image (unreadable or truncated): {fake}"
    said = result.stdout + result.stderr
    assert said.count("cannot decode image") == 1  # not in a warning before it too
    assert not (tmp_path / "run" / "predictions.csv").exists()


def predict_under_limit(limit: int, size: int, *overrides: str) -> subprocess.CompletedProcess:
    """``crackseg-predict`` with the resource ``limit`` (``resource.RLIMIT_*``) at ``size``,
    as a full disk or a machine's memory would set it."""

    def set_limit() -> None:
        resource.setrlimit(limit, (size, size))

    return subprocess.run(
        [sys.executable, "-m", "crackseg.predict", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=set_limit,
        timeout=600,
    )


def test_a_failed_write_names_the_file_and_fails_the_run(tiny_checkpoint, tmp_path):
    """A file size limit makes the first large output fail as a full disk would."""
    photos = tmp_path / "photos"
    photos.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    cv2.imwrite(str(photos / "noise.png"), noise)
    run_dir = tmp_path / "run"
    result = predict_under_limit(
        resource.RLIMIT_FSIZE,
        100_000,
        f"ckpt_path={tiny_checkpoint}",
        f"input={photos}",
        f"hydra.run.dir={run_dir}",
    )
    line = one_line_error(result)
    assert "cannot write" in line and "File too large" in line
    assert str(run_dir) in line and "noise.png.png" in line
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "predictions.csv").exists()
    leftovers = [p for p in run_dir.rglob("*") if ".partial-" in p.name]
    assert leftovers == []


def test_running_out_of_memory_is_one_line_saying_what_to_lower(tiny_checkpoint, tmp_path):
    """A tile too large for the memory (an address space of 6 GiB here): one line, exit 2,
    the run's status failed with that line."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((8192, 8192, 3), 128, np.uint8))  # one tile
    run_dir = tmp_path / "run"
    result = predict_under_limit(
        resource.RLIMIT_AS,
        6 * 2**30,
        f"ckpt_path={tiny_checkpoint}",
        f"input={photos}",
        "device=cpu",
        "tile_height=8192",
        "tile_width=8192",
        "batch_size=1",
        f"hydra.run.dir={run_dir}",
    )
    line = one_line_error(result)
    assert line.startswith("error: out of memory: could not allocate ") and "GiB" in line
    assert line.endswith("lower the batch size or the size of the images (or tiles)")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and f"error: {status['error']}" == line


def test_a_failed_write_of_a_map_or_a_table_names_its_file(tmp_path, monkeypatch):
    from crackseg.atomic import atomic_write_csv as write_csv
    from crackseg.atomic import atomic_write_png as write_png

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write names no file

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    monkeypatch.setattr(Path, "write_text", lambda self, *args, **kwargs: full_disk(self, None))
    writes = {
        tmp_path / "masks" / "a.jpg.png": lambda path: write_png(path, np.zeros((2, 2), np.uint8)),
        tmp_path / "predictions.csv": lambda path: write_csv(path, ["file"], [["a.jpg"]]),
    }
    for path, write in writes.items():
        with pytest.raises(OSError) as raised:
            write(path)
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))


def test_a_failure_part_way_keeps_the_tables_of_the_images_done(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import crackseg.deploy.predict_folder as predicting

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(photos / f"{name}.png"), np.full((64, 128, 3), 120, np.uint8))
    measured = predicting.measure_cracks

    def fails_on_the_second_image(mask, min_pixels):
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        calls.append(1)
        return measured(mask, min_pixels)

    calls: list[int] = []
    monkeypatch.setattr(predicting, "measure_cracks", fails_on_the_second_image)
    out = tmp_path / "run"
    config = predict_config(out, ckpt_path=str(tiny_checkpoint), input=str(photos))
    with pytest.raises(OSError, match="Input/output error"):
        predict_checked(config)
    assert [row["file"] for row in rows_of(out / "predictions.csv")] == ["a.png"]


def test_one_image_is_counted_as_one_image(tiny_checkpoint, tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 128, 3), 120, np.uint8))
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        predict_checked(predict_config(out, ckpt_path=str(tiny_checkpoint), input=str(tmp_path)))
    assert "1 image, tile mode at 64x128" in caplog.text
    assert f"predicted 1 image into {out} (0 unreadable, skipped)" in caplog.text


def test_the_thresholds_typed_replace_the_models_own(tiny_checkpoint, tmp_path, caplog):
    """``segmentation_threshold=0`` marks every pixel crack (the whole image one region,
    measured as one crack as wide as the image is high), ``decision_threshold=1`` no image."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((64, 300, 3), 120, np.uint8))
    out = tmp_path / "run"
    typed = {"segmentation_threshold": 0.0, "decision_threshold": 1.0}
    with caplog.at_level(logging.INFO):
        predict_checked(
            predict_config(out, ckpt_path=str(tiny_checkpoint), input=str(photos), **typed)
        )
    assert "image threshold 1.0000, segmentation threshold 0.0000" in caplog.text
    mask = cv2.imread(str(out / "masks" / "a.png.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == 255).all()
    (row,) = rows_of(out / "predictions.csv")
    assert (row["decision"], row["crack_fraction"], row["cracks"]) == ("0", "1.000000", "1")
    assert float(row["total_length_px"]) == pytest.approx(300, abs=1)
    assert float(row["max_width_px"]) == pytest.approx(64, abs=0.5)


def test_a_models_threshold_that_marks_every_pixel_is_warned_about(
    tiny_checkpoint, tmp_path, caplog, monkeypatch
):
    """An undertrained segmentation head can have 0 chosen on validation (the best Dice
    there marking everything): its masks would mark whole images without a word."""
    from crackseg.deploy import predict_folder as predicting

    opened = predicting.open_backend

    def with_threshold_0(settings):
        backend = opened(settings)
        backend.info = dataclasses.replace(backend.info, seg_threshold=0.0)
        return backend

    monkeypatch.setattr(predicting, "open_backend", with_threshold_0)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 128, 3), 120, np.uint8))
    config = predict_config(tmp_path / "run", ckpt_path=str(tiny_checkpoint), input=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        predict_checked(config)
    assert "the model's segmentation threshold, chosen on its validation split, is 0" in (
        caplog.text
    )
    caplog.clear()
    typed = predict_config(
        tmp_path / "typed",
        ckpt_path=str(tiny_checkpoint),
        input=str(tmp_path / "a.png"),
        segmentation_threshold=0.5,
    )
    with caplog.at_level(logging.WARNING):
        predict_checked(typed)
    assert "segmentation threshold" not in caplog.text


def test_the_tables_are_written_as_images_are_done(tiny_checkpoint, tmp_path, monkeypatch):
    """A process killed outright (out of memory) keeps the rows written so far: the tables
    are written again while the folder is predicted (every minute; here after each image)."""
    import crackseg.deploy.predict_folder as predicting

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(photos / f"{name}.png"), np.full((64, 128, 3), 120, np.uint8))
    out = tmp_path / "run"
    measured, seen = predicting.measure_cracks, []

    def reads_the_table_first(mask, min_pixels):
        table = out / "predictions.csv"
        seen.append([row["file"] for row in rows_of(table)] if table.exists() else [])
        return measured(mask, min_pixels)

    monkeypatch.setattr(predicting, "measure_cracks", reads_the_table_first)
    monkeypatch.setattr(predicting, "TABLES_EVERY_S", 0.0)
    predict_checked(predict_config(out, ckpt_path=str(tiny_checkpoint), input=str(photos)))
    assert seen == [[], ["a.png"], ["a.png", "b.png"]]
    assert len(rows_of(out / "predictions.csv")) == 3


def test_reference_masks_add_each_images_dice_and_iou(tmp_path):
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predict_folder import REFERENCE_COLUMNS, ResultWriter, dice_iou
    from crackseg.deploy.predictor import ImagePrediction

    references = tmp_path / "truth"
    references.mkdir()
    truth = np.zeros((10, 20), np.uint8)
    truth[2:4, :] = 255  # 40 crack pixels
    cv2.imwrite(str(references / "road.png"), truth)
    (references / "garbled.png").write_bytes(b"not a png")  # unreadable: blank cells, no stop
    cv2.imwrite(str(references / "clean.png"), truth * 0)  # no crack: 1 or 0 whatever is seen
    probabilities = np.zeros((10, 20), np.float32)
    probabilities[3:5, :10] = 0.9  # 20 pixels predicted, 10 of them on the crack
    settings = predict_settings(reference_masks=str(references), overlays=False)
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = ResultWriter(tmp_path / "out", settings, info)
    image = np.zeros((10, 20, 3), np.uint8)
    writer.add(tmp_path / "road.jpg", image, ImagePrediction(0.9, probabilities))
    writer.add(tmp_path / "other.jpg", image, ImagePrediction(0.1, probabilities * 0))
    writer.add(tmp_path / "garbled.jpg", image, ImagePrediction(0.1, probabilities))
    writer.add(tmp_path / "clean.jpg", image, ImagePrediction(0.1, probabilities * 0))
    writer.write_tables()
    rows = rows_of(tmp_path / "out" / "predictions.csv")
    assert list(rows[0])[-2:] == REFERENCE_COLUMNS
    # Dice 2*10/(20+40), IoU 10/(20+40-10); no reference for other.jpg: left empty.
    assert float(rows[0]["dice"]) == pytest.approx(1 / 3) and float(rows[0]["iou"]) == 0.2
    assert rows[1]["dice"] == rows[1]["iou"] == ""
    assert rows[2]["dice"] == rows[2]["iou"] == ""
    assert rows[3]["dice"] == rows[3]["iou"] == "1.000000"  # nothing predicted, nothing there
    assert writer.dices == [pytest.approx(1 / 3)]  # not in the mean (it was, as a Dice of 1)
    assert dice_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == (1.0, 1.0)


def test_reference_masks_that_are_photographs_are_named_once(tiny_checkpoint, tmp_path, caplog):
    """reference_masks= naming the photographs' folder: a Dice against each photograph,
    without a word, before; now one warning at the end names them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        cv2.imwrite(str(photos / f"{name}.png"), rng.integers(40, 200, (64, 128, 3), np.uint8))
    config = predict_config(
        tmp_path / "run",
        ckpt_path=str(tiny_checkpoint),
        input=str(photos),
        reference_masks=str(photos),
    )
    with caplog.at_level(logging.WARNING):
        predict_checked(config)
    warned = [r.getMessage() for r in caplog.records if "grey levels" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("2 masks with the grey levels of a photo")
    assert warned[0].endswith(f"{photos / 'a.png'}, {photos / 'b.png'}")


def test_a_reference_mask_of_another_size_is_named_with_both_sizes(tmp_path, caplog):
    """Height x width, as the layouts' message on masks of another size writes them."""
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predict_folder import ResultWriter
    from crackseg.deploy.predictor import ImagePrediction

    references = tmp_path / "truth"
    references.mkdir()
    cv2.imwrite(str(references / "road.png"), np.zeros((100, 100), np.uint8))
    settings = predict_settings(reference_masks=str(references), overlays=False)
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = ResultWriter(tmp_path / "out", settings, info)
    image = np.zeros((320, 480, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        writer.add(tmp_path / "road.jpg", image, ImagePrediction(0.1, np.zeros((320, 480))))
    assert (
        f"reference mask {references / 'road.png'} is not its image's size "
        "(100x100, image 320x480)" in caplog.text
    )
    assert writer.results[0].row[-2:] == ["", ""]


def test_reference_masks_none_of_which_can_be_used_are_said_so_at_the_end(
    tiny_checkpoint, tmp_path, caplog
):
    """Each image's own warning scrolls by among the others: the last line sums them up."""
    photos, references = tmp_path / "photos", tmp_path / "truth"
    photos.mkdir()
    references.mkdir()
    for name in ("a", "b", "c", "d"):
        cv2.imwrite(str(photos / f"{name}.png"), np.full((64, 128, 3), 120, np.uint8))
    (references / "b.png").write_bytes(b"not a png")
    cv2.imwrite(str(references / "c.png"), np.zeros((128, 64), np.uint8))
    cv2.imwrite(str(references / "d.png"), np.zeros((64, 64), np.uint8))
    out = tmp_path / "run"
    config = predict_config(
        out, ckpt_path=str(tiny_checkpoint), input=str(photos), reference_masks=str(references)
    )
    with caplog.at_level(logging.WARNING):
        counts = predict_checked(config)
    assert "dice_mean" not in counts
    assert caplog.records[-1].getMessage() == (
        "the dice and iou columns of predictions.csv are empty: no image has a usable mask in "
        f"reference_masks={references} (1 image without one, 1 image whose mask is unreadable, "
        "2 images whose mask is not its size)"
    )
    assert {row["dice"] for row in rows_of(out / "predictions.csv")} == {""}


def test_a_dice_over_images_the_weights_trained_on_is_said_to_overstate_them(
    tiny_run, tiny_checkpoint, tmp_path, caplog
):
    """A training image (here a copy of one) among the photographs scored against their
    masks: the mean Dice is theirs in part (a test image is not)."""
    from crackseg.runs.trained_settings import warn_of_images_trained_on

    rows = rows_of(tiny_run / "split.csv")
    train, test = (
        next(Path(r["image"]) for r in rows if r["split"] == s) for s in ("train", "test")
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    images = [Path(shutil.copy(train, photos / "copy.png")), test]
    with caplog.at_level(logging.WARNING):
        warn_of_images_trained_on(str(tiny_checkpoint), images)
    assert caplog.messages == [
        "1 of the 2 images of the mean Dice are images the weights trained on, or "
        "photographs of tiles they trained on (copy.png): the mean overstates the weights"
    ]
    caplog.clear()
    warn_of_images_trained_on(str(tiny_checkpoint), [test])
    assert caplog.messages == []


def test_the_mean_dice_is_over_the_images_with_a_reference_mask_alone(
    tiny_run, tiny_checkpoint, tmp_path
):
    """Those are the images crackseg-predict looks for among the training images: one the
    weights trained on without a mask is in no mean it could overstate."""
    rows = rows_of(tiny_run / "split.csv")
    train = next(r for r in rows if r["split"] == "train")
    test = next(r for r in rows if r["split"] == "test" and r["label"] == "1")
    photos, references = tmp_path / "photos", tmp_path / "references"
    photos.mkdir()
    references.mkdir()
    shutil.copy(train["image"], photos / "trained.png")
    shutil.copy(test["image"], photos / "held_out.png")
    shutil.copy(test["mask"], references / "held_out.png")
    config = predict_config(
        tmp_path / "run",
        ckpt_path=str(tiny_checkpoint),
        input=str(photos),
        reference_masks=str(references),
    )
    prediction = predict_folder(*checked_prediction(config), tmp_path / "run")
    assert [path.name for path in prediction.scored] == ["held_out.png"]
    assert "dice_mean" in prediction.counts


@pytest.mark.parametrize("stop_at_write", [1, 2, 3])
def test_an_image_stopped_while_its_files_are_written_leaves_no_file_without_its_row(
    tmp_path, monkeypatch, stop_at_write
):
    """Ctrl-C or SIGTERM lands anywhere: between an image's files, or after its last one
    before its rows are kept. Its files are taken back; the image before it stays whole."""
    import crackseg.deploy.predict_folder as predict_folder
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predictor import ImagePrediction

    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = predict_folder.ResultWriter(tmp_path, predict_settings(), info)
    probabilities = np.zeros((10, 20), np.float32)
    probabilities[4:6, 2:18] = 0.9
    image = np.zeros((10, 20, 3), np.uint8)
    writer.add(tmp_path / "done.jpg", image, ImagePrediction(0.9, probabilities))
    write_png = predict_folder.atomic_write_png
    calls = []

    def stopped_after(path, pixels):
        write_png(path, pixels)
        calls.append(path)
        if len(calls) == stop_at_write:
            raise KeyboardInterrupt

    monkeypatch.setattr(predict_folder, "atomic_write_png", stopped_after)
    with pytest.raises(KeyboardInterrupt):
        writer.add(tmp_path / "stopped.jpg", image, ImagePrediction(0.9, probabilities))
    writer.write_tables()
    for folder in ("probabilities", "masks", "overlays"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == ["done.jpg.png"], folder
    assert [row["file"] for row in rows_of(tmp_path / "predictions.csv")] == ["done.jpg"]
    assert {row["file"] for row in rows_of(tmp_path / "cracks.csv")} == {"done.jpg"}


def test_an_image_with_a_name_of_240_characters_gets_its_outputs(tmp_path):
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predict_folder import ResultWriter
    from crackseg.deploy.predictor import ImagePrediction

    name = "c" * 236 + ".jpg"
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = ResultWriter(tmp_path, predict_settings(), info)
    image = np.zeros((10, 20, 3), np.uint8)
    writer.add(tmp_path / name, image, ImagePrediction(0.9, np.zeros((10, 20), np.float32)))
    for folder in ("probabilities", "masks", "overlays"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == [f"{name}.png"]


def test_a_file_name_that_is_not_utf8_gets_its_outputs_and_its_rows(tmp_path):
    """Linux allows any bytes in a name (Python holds the others as surrogates): the maps
    are written under the name as it is, the tables in UTF-8 with the byte escaped."""
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predict_folder import ResultWriter
    from crackseg.deploy.predictor import ImagePrediction

    name = os.fsdecode(b"caf\xe9.jpg")  # café.jpg in Latin-1
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    writer = ResultWriter(tmp_path, predict_settings(), info)
    mask = np.zeros((10, 20), np.float32)
    mask[4:6, 2:18] = 1.0
    writer.add(tmp_path / name, np.zeros((10, 20, 3), np.uint8), ImagePrediction(0.9, mask))
    writer.write_tables()
    assert [p.name for p in (tmp_path / "masks").iterdir()] == [f"{name}.png"]
    for table in ("predictions.csv", "cracks.csv"):
        (row,) = rows_of(tmp_path / table)
        assert row["file"] == "caf\\xe9.jpg", table


def test_two_reference_masks_of_one_name_are_refused(tmp_path):
    from crackseg.deploy.backends import ModelInfo
    from crackseg.deploy.predict_folder import ResultWriter

    for name in ("road.png", "road.bmp", "wall.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4), np.uint8))
    info = ModelInfo(3, 64, 128, None, image_threshold=0.5, seg_threshold=0.5)
    with pytest.raises(DataError) as raised:
        ResultWriter(tmp_path / "out", predict_settings(reference_masks=str(tmp_path)), info)
    assert str(raised.value) == (
        "several files share one name, cannot pair them: "
        f"{tmp_path / 'road.bmp'}, {tmp_path / 'road.png'}"
    )


def test_a_prediction_sweep_run_again_with_skip_finished_skips_its_finished_jobs(
    tiny_checkpoint, photo_folder, tmp_path
):
    """A value added to a prediction sweep: with skip_finished=true the jobs that finished
    are skipped (their outputs kept as they are) and the new one runs; by default the
    sweep is refused before any job, as a finished job is never run again in its folder."""
    sweep = [f"ckpt_path={tiny_checkpoint}", f"input={photo_folder}", f"hydra.sweep.dir={tmp_path}"]
    result = run_entry("predict", "-m", *sweep, "overlap=0.25,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    first = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    written = [(job / "predictions.csv").stat().st_mtime_ns for job in first]
    line = one_line_error(run_entry("predict", "-m", *sweep, "overlap=0.25,0.5,0.75"))
    assert line.startswith("error: skip_finished=false, but") and str(first[0]) in line

    result = run_entry("predict", "-m", *sweep, "overlap=0.25,0.5,0.75", "skip_finished=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(job / "predictions.csv").stat().st_mtime_ns for job in first] == written
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert jobs == ["0_overlap=0.25", "1_overlap=0.5", "2_overlap=0.75"]
    for job in jobs:
        assert json.loads((tmp_path / job / "status.json").read_text())["status"] == "finished"


def test_reference_masks_that_name_a_file_or_nothing_are_refused_as_such(tmp_path):
    from crackseg.deploy.predict_folder import reference_masks

    (tmp_path / "road.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"road.png: a file, not a folder of masks$"):
        reference_masks(str(tmp_path / "road.png"))
    with pytest.raises(DataError, match=r"masks: no such folder$"):
        reference_masks(str(tmp_path / "masks"))


def test_thresholds_no_validation_chose_are_warned_of(tiny_checkpoint, tmp_path, caplog):
    """A validation split of one class (CrackForest: every photograph cracked) chooses no
    image threshold: 0.5 stands in. The checkpoint and its ONNX metadata say so, and a
    prediction warns of it, unless the threshold is set."""
    from crackseg.models.checkpoint import load_module

    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert saved["stand_in_thresholds"] == []  # the tiny run validated on both classes
    one_class = tmp_path / "one_class.ckpt"
    torch.save({**saved, "stand_in_thresholds": ["image"]}, one_class)
    info = ModelInfo.of_module(load_module(one_class))
    assert info.stand_in_thresholds == ("image",)
    assert ModelInfo.from_metadata(info.to_metadata(), "m.onnx") == info
    with caplog.at_level(logging.WARNING):
        warn_of_stand_in_thresholds(predict_settings(), info)
    assert "the model's image threshold, 0.5, was chosen by nobody: its validation split " in (
        caplog.text
    )
    assert "(decision_threshold= sets one)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_of_stand_in_thresholds(predict_settings(decision_threshold=0.4), info)
    assert caplog.text == ""


def test_a_stopped_prediction_says_what_it_left(tmp_path):
    from crackseg.predict import _stopped

    assert _stopped(tmp_path) == "no image was predicted yet: predict into another folder"
    (tmp_path / "predictions.csv").write_text('file,width\n"a,\nb.png",8\n')  # one row
    assert _stopped(tmp_path) == (
        f"the predictions of 1 image made so far are in {tmp_path}; predict the rest into "
        "another folder"
    )
