"""crackseg-export: ONNX that matches PyTorch, carries its thresholds, and predicts alike."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, SHARED, one_line_error, run_entry

from crackseg.data.io import read_image
from crackseg.deploy.backends import OnnxBackend
from crackseg.deploy.onnx_export import Difference, compare_runtimes
from crackseg.deploy.settings import optional_import
from crackseg.errors import CracksegError
from crackseg.models.checkpoint import load_module

ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed")

#: The largest difference between onnxruntime's and PyTorch's probabilities accepted here
#: (what crackseg-export accepts by default).
TOLERANCE = 1e-4
CFD_IMAGES = SHARED / "data" / "cfd" / "images"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, photo_folder):
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_entry(
        "export",
        f"ckpt_path={os.path.relpath(tiny_checkpoint, REPO)}",  # as typed where it runs
        f"check_images={photo_folder}",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model.onnx"


def session_of(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_export_records_its_comparison(tiny_onnx, tiny_checkpoint, photo_folder):
    record = json.loads((tiny_onnx.parent / "export.json").read_text())
    assert record["checkpoint"] == str(tiny_checkpoint.resolve())  # wherever it is read from
    assert record["onnx"] == str(tiny_onnx.resolve())
    checked = record["max_difference"]
    assert {"random 2x3x64x128", "random 1x3x128x256"} <= checked.keys()
    assert str(photo_folder / "wall.png") in checked  # real images too
    assert str(photo_folder / "broken.jpg") not in checked
    assert all(max(d.values()) <= TOLERANCE for d in checked.values())


def test_thresholds_and_input_settings_are_read_back_from_the_metadata(tiny_onnx, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    metadata = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert float(metadata["crackseg.image_threshold"]) == float(
        state["state_dict"]["image_threshold"]
    )
    assert float(metadata["crackseg.seg_threshold"]) == float(state["state_dict"]["seg_threshold"])
    assert "[0, 1]" in metadata["crackseg.input_format"]
    # the file runs sizes the network does not take (NaN at 8x8): the rule is said there
    assert metadata["crackseg.input_sizes"].startswith(
        "height and width multiples of 8, each at least 64, one of them at least 128;"
    )
    info = OnnxBackend(tiny_onnx, "cpu").info
    hp = state["hyper_parameters"]
    assert (info.input_channels, info.input_height, info.input_width) == (3, 64, 128)
    assert info.input_scaling == hp["input_scaling"]
    assert info.image_threshold == float(state["state_dict"]["image_threshold"])


def test_batch_and_size_are_dynamic_and_outputs_match_pytorch_on_random_inputs(
    tiny_onnx, tiny_checkpoint
):
    module = load_module(tiny_checkpoint)
    rng = np.random.default_rng(0)
    inputs = {
        "3x64x128": rng.random((3, 3, 64, 128), np.float32),
        "1x192x64": rng.random((1, 3, 192, 64), np.float32),
    }
    for difference in compare_runtimes(module, session_of(tiny_onnx), inputs):
        assert difference.worst <= TOLERANCE, difference


def test_outputs_match_pytorch_on_an_image_of_the_dataset(tiny_onnx, tiny_checkpoint, tiny_run):
    module = load_module(tiny_checkpoint)
    rows = list(csv.DictReader((tiny_run / "test_scores.csv").open()))
    image = read_image(rows[0]["image"], 3)
    batch = (image.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    (difference,) = compare_runtimes(module, session_of(tiny_onnx), {"synthetic": batch})
    assert difference.worst <= TOLERANCE


@pytest.mark.skipif(not CFD_IMAGES.is_dir(), reason=f"no CrackForest photographs at {CFD_IMAGES}")
def test_outputs_match_pytorch_on_a_crackforest_photograph(tiny_onnx, tiny_checkpoint):
    module = load_module(tiny_checkpoint)
    image = read_image(sorted(CFD_IMAGES.glob("*.jpg"))[0], 3)  # 480x320: a whole photograph
    batch = (image.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    (difference,) = compare_runtimes(module, session_of(tiny_onnx), {"cfd": batch})
    assert difference.worst <= TOLERANCE


def test_a_difference_above_the_tolerance_refuses_the_export(tiny_checkpoint, tmp_path):
    """onnxruntime and PyTorch round differently (~1e-7): a tolerance of 1e-12 fails."""
    line = one_line_error(
        run_entry(
            "export", f"ckpt_path={tiny_checkpoint}", "tolerance=1e-12", f"hydra.run.dir={tmp_path}"
        )
    )
    assert "differ from PyTorch's" in line and "was not written" in line
    assert not (tmp_path / "model.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_backend_onnx_predicts_as_backend_torch(
    tiny_onnx, photo_folder, torch_predictions, tmp_path
):
    result = run_entry(
        "predict",
        "backend=onnx",
        f"onnx_path={tiny_onnx}",
        f"input={photo_folder}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with_torch = {
        r["file"]: r for r in csv.DictReader((torch_predictions / "predictions.csv").open())
    }
    with_onnx = {r["file"]: r for r in csv.DictReader((tmp_path / "predictions.csv").open())}
    assert with_onnx.keys() == with_torch.keys()
    for name, row in with_onnx.items():
        reference = with_torch[name]
        assert float(row["decision_score"]) == pytest.approx(
            float(reference["decision_score"]), abs=TOLERANCE
        )
        assert row["decision"] == reference["decision"]
        a = cv2.imread(str(tmp_path / "probabilities" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(
            str(torch_predictions / "probabilities" / f"{name}.png"), cv2.IMREAD_UNCHANGED
        )
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, name


def test_an_opset_newer_than_onnx_knows_is_refused_before_the_export(tiny_checkpoint, tmp_path):
    """Where the exporter would log a traceback and write its own opset instead."""
    import onnx

    result = run_entry(
        "export", f"ckpt_path={tiny_checkpoint}", "opset=99", f"hydra.run.dir={tmp_path}"
    )
    newest = onnx.defs.onnx_opset_version()
    assert one_line_error(result) == (
        f"error: opset must be at most {newest} (onnx {onnx.__version__}), not 99"
    )
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("command", ["export", "predict"])
def test_a_folder_holding_an_export_is_refused_and_its_model_kept(
    tiny_checkpoint, photo_folder, tmp_path, command
):
    """An export, or a prediction, into a folder holding an earlier export (a folder given
    as hydra.run.dir) would write over its model.onnx."""
    (tmp_path / "model.onnx").write_bytes(b"an earlier model")
    (tmp_path / "export.json").write_text("{}")
    inputs = f"check_images={photo_folder}" if command == "export" else f"input={photo_folder}"
    result = run_entry(command, f"ckpt_path={tiny_checkpoint}", inputs, f"hydra.run.dir={tmp_path}")
    assert one_line_error(result) == (
        f"error: {tmp_path} already holds files by the names an export writes "
        "(model.onnx, export.json); choose another hydra.run.dir"
    )
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.onnx"]


def _written(folder):
    """Whether the export has written its model into its temporary file (made empty first)."""
    for partial in folder.glob(".write.partial-*"):
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            if partial.stat().st_size:
                return True
    return False


def test_a_stopped_export_leaves_no_model_and_says_it_was_stopped(
    tiny_checkpoint, photo_folder, tmp_path
):
    """SIGTERM while the written model is checked: no half-written file is left, the status
    says interrupted (the folder is refused to later commands), and the console says so."""
    command = [sys.executable, "-m", "crackseg.export", f"ckpt_path={tiny_checkpoint}"]
    command += [f"check_images={photo_folder}", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _written(tmp_path) and process.poll() is None:
        assert time.monotonic() < deadline, "the export wrote no model"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()[-3000:]
    assert "stopped: nothing to resume" in stderr.decode()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    # (a stop that lands where Python drops it ends the export once it is done: then its
    # model.onnx is whole)
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_without_the_deploy_extra_onnx_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(CracksegError, match=r"needs onnxruntime.*pip install 'crackseg\[deploy\]'"):
        OnnxBackend(tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(CracksegError, match=r"needs onnxscript.*crackseg\[deploy\]"):
        optional_import("onnxscript", "crackseg-export")


def test_the_worst_difference_is_the_larger_of_both_outputs():
    assert Difference("x", decision=1e-3, segmentation=2e-5).worst == 1e-3


def test_an_empty_check_images_is_no_current_folder(tmp_path, monkeypatch):
    """``check_images=$UNSET``: refused, where it would compare on the current folder's
    images (and ``check_images`` left out compares on random inputs only)."""
    from crackseg.deploy.onnx_export import read_check_images
    from crackseg.deploy.settings import check_image_files
    from crackseg.errors import ConfigError, DataError

    def read(folder):
        return read_check_images(folder, check_image_files(folder), 8, 3)

    cv2.imwrite(str(tmp_path / "here.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="check_images= is empty"):
        read("")
    assert read(None) == {}
    assert list(read(".")) == ["here.png"]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"check_images=broken.png: none of its images"):
        read("broken.png")
