"""Shared helpers: run the entry points as a user would, on tiny synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import warm_python

if TYPE_CHECKING:
    from crackseg.deploy.settings import PredictSettings

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# `make test` runs one pytest-xdist worker per core. Each worker, and every run it starts,
# then keeps to one thread: torch's default of one thread per core in every worker would put
# twice as many busy threads as cores on the machine, which makes them all many times slower.
# (Set before this worker imports torch; tests of the thread settings set their own.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The configs' ${crackseg.*} interpolations, registered as the entry points register them, so
# that a test composing conf/ with Hydra's compose API resolves them whatever ran before it.
from crackseg.runs.resolvers import register_resolvers  # noqa: E402 (imports no torch)

register_resolvers()

#: A run small enough for a test: the narrow network, 64x128 images, 20+20 of them, 2 epochs.
TINY = [
    "model=segdec_small",
    "data.input_height=64",
    "data.input_width=128",
    "data.synthetic.num_positives=20",
    "data.synthetic.num_negatives=20",
    "data.num_workers=0",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "validation_n_epochs=1",
    "num_dice_panels=3",
    "callbacks.validation_images.num_images=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]

#: TINY's settings that crackseg-eval takes too (the data, the report, the console).
TINY_EVAL = [o for o in TINY if o.startswith(("data.", "num_dice", "trainer.enable"))]

#: What every run's metrics.json holds.
METRIC_KEYS = {
    "image_auc",
    "image_ap",
    "image_threshold",
    "f_measure",
    "tp",
    "fp",
    "tn",
    "fn",
    "seg_threshold",
    "dice_mean",
    "dice_std",
    "iou_mean",
    "iou_std",
    "test_samples",
    "val_samples",
    "train_samples",
}


def run_entry(
    module: str,
    *overrides: str,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run ``python -m crackseg.<module>`` with Hydra overrides in ``cwd``, capturing its
    output: in a child of a process that imported torch and Lightning already
    (helpers.warm_python), or in a fresh interpreter where it must be one
    (helpers.warm_python.runs_warm)."""
    if warm_python.runs_warm(overrides, env or {}):
        return warm_python.run_module(
            f"crackseg.{module}", list(overrides), cwd, {**os.environ, **(env or {})}, timeout
        )
    return subprocess.run(
        [sys.executable, "-m", f"crackseg.{module}", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def run_tiny(
    run_dir: Path, data_dir: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``crackseg-train`` on the tiny synthetic set in ``data_dir``, into ``run_dir``."""
    return run_entry(
        "train",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *overrides,
        env=env,
    )


def eval_tiny(
    checkpoint: Path, run_dir: Path, data_dir: Path, *overrides: str
) -> subprocess.CompletedProcess:
    """``crackseg-eval`` of ``checkpoint`` on the tiny synthetic set in ``data_dir``, into
    ``run_dir``."""
    return run_entry(
        "eval",
        f"ckpt_path={checkpoint}",
        *TINY_EVAL,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def tensorboard_hparams(run_dir: Path) -> dict:
    """The settings a run shows in TensorBoard's HParams tab (its last record of them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.ListFields()[0][1] for key, value in start.hparams.items()}


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory) -> Path:
    """20 positives and 20 negatives of 64x128, to build datamodules on."""
    from crackseg.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "set"
    return generate_synthetic_dataset(root, 20, 20, height=64, width=128, seed=1)


def datamodule_of(root, **kwargs):
    """A set-up CrackDataModule on `root` at 64x128, batch 4, no workers; kwargs override,
    named as the flat ``data.*`` keys (``weighted_seg*`` and ``decision_target`` as the
    ``loss.*`` ones)."""
    from crackseg.data.datamodule import CrackDataModule

    options = {"input_height": 64, "input_width": 128, "batch_size": 4, "num_workers": 0}
    data = {"root": str(root)} | options | kwargs
    loss = {k: data.pop(k) for k in list(data) if k.startswith("weighted_seg")}
    if "decision_target" in data:
        loss["decision_target"] = data.pop("decision_target")
    datamodule = CrackDataModule.from_config(data, loss)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """One synthetic dataset shared by every end-to-end test."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data_dir) -> Path:
    """One tiny trained run (with a few non-default settings) shared by every test file."""
    run_dir = tmp_path_factory.mktemp("run")
    # float32, so predictions and exports can be compared with its scores to 1e-6.
    result = run_tiny(
        run_dir,
        tiny_data_dir,
        "data.dilate=3",
        "loss.weighted_seg_p=1",
        "loss.delta_cls=0.1",
        "trainer.precision=32-true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The checkpoint the tiny run tested (its best one)."""
    return next((tiny_run / "checkpoints").glob("best*.ckpt"))


def predict_settings(**changes) -> PredictSettings:
    """crackseg-predict's settings as the defaults give them, with ``changes``."""
    from crackseg.deploy.settings import PredictSettings

    values = {
        "backend": "torch",
        "ckpt_path": "x.ckpt",
        "onnx_path": None,
        "input": "photos",
        "mode": "auto",
        "tile_height": None,
        "tile_width": None,
        "overlap": 0.25,
        "batch_size": 8,
        "device": "cpu",
        "precision": "32",
        "decision_threshold": None,
        "segmentation_threshold": None,
        "min_crack_pixels": 20,
        "pixel_size_mm": None,
        "overlays": True,
        "reference_masks": None,
    }
    return PredictSettings(**{**values, **changes})


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, tiny_run) -> Path:
    """Images to predict: the tiny run's test images (of the model's input size), one image
    as both x.jpg and x.png, a larger one that takes several tiles, and an unreadable file."""
    import csv

    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("photos")
    rows = list(csv.DictReader((tiny_run / "test_scores.csv").open()))
    images = [cv2.imread(row["image"]) for row in rows]
    for row, image in zip(rows, images, strict=True):
        cv2.imwrite(str(folder / Path(row["image"]).name), image)
    cv2.imwrite(str(folder / "x.png"), images[0])
    cv2.imwrite(str(folder / "x.jpg"), images[1])
    cv2.imwrite(str(folder / "wall.png"), np.vstack([np.hstack(images[:3])] * 2)[:100, :350])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    return folder


@pytest.fixture(scope="session")
def torch_predictions(tmp_path_factory, tiny_checkpoint, photo_folder) -> Path:
    """crackseg-predict's run folder for ``photo_folder`` with the tiny checkpoint."""
    out = tmp_path_factory.mktemp("predict") / "run"
    result = run_entry(
        "predict",
        f"ckpt_path={tiny_checkpoint}",
        f"input={photo_folder}",
        "precision=32",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (out.parent / "console.txt").write_text(result.stdout + result.stderr)
    return out


def machine_line(workers: int = 0) -> str:
    """The machine a run's numbers came from: CPUs differ between sessions (AMD EPYC with
    AVX-512 BF16, Intel Xeon with AMX), and so do their bf16 kernels and timings. With
    ``workers`` pytest-xdist workers, the threads are those each worker keeps."""
    import torch

    from crackseg.models.precision import cpu_bf16_features, cpu_model

    features = ", ".join(cpu_bf16_features()) or "none"
    from crackseg.runs.threads import usable_cores

    cores = usable_cores()
    line = f"cpu: {cpu_model()} (bf16: {features}); {cores} usable cores, torch {torch.__version__}"
    if workers:
        threads = os.environ.get("OMP_NUM_THREADS", "1")
        return f"{line}; {workers} pytest-xdist workers, OMP_NUM_THREADS={threads} in each"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{line} with {torch.get_num_threads()} threads, OMP_NUM_THREADS={threads}"


def pytest_sessionstart(session) -> None:
    """The machine line heads every test log, with -q too (which hides report headers)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
        reporter.write_line(machine_line(getattr(session.config.option, "numprocesses", 0)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (`make test`): one worker per core this process may run on (a taskset or
    SLURM allocation), not per physical core of the machine, which is what psutil counts."""
    from crackseg.runs.threads import usable_cores

    return usable_cores()
