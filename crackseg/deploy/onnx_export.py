"""``crackseg-export``: a checkpoint as an ONNX model that runs without crackseg or PyTorch.

The network is exported with PyTorch's dynamo-based exporter (``torch.onnx.export(...,
dynamo=True)``, which needs onnxscript), with a dynamic batch and a dynamic height and width
(any multiples of 8 the network accepts). Inputs are RGB (or grey) float32 NCHW in [0, 1];
outputs the decision probabilities [N] and the crack probabilities [N, 1, H, W]. The
thresholds and input settings travel as ONNX metadata (``crackseg.*`` keys).

Before the file is kept, onnxruntime's outputs are compared with PyTorch's on random inputs
(at the input size and at a larger one, batched) and on real images if given; a difference
above the tolerance refuses the export.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from crackseg.atomic import atomic_path, atomic_write_text
from crackseg.data.data_settings import DECISION_STRIDE, OUTPUT_STRIDE
from crackseg.data.io import read_image
from crackseg.data.labels import resize_image
from crackseg.deploy.backends import CPU_PROVIDER, ModelInfo
from crackseg.deploy.outputs import EXPORT_MODEL, EXPORT_RECORD
from crackseg.deploy.settings import optional_import
from crackseg.deploy.tiling import TileGrid
from crackseg.errors import CracksegError, DataError, describe_files
from crackseg.models.checkpoint import (
    load_validated_module,
)

if TYPE_CHECKING:
    from crackseg.models.lit_segdec import SegDecModule

log = logging.getLogger(__name__)

#: Loggers of the exporter that report every graph rewrite at INFO (and, at WARNING, that
#: torchvision's operators cannot be exported when torchvision is not installed).
EXPORTER_LOGGERS = {
    "torch.onnx": logging.ERROR,
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
}

INPUT_NAME = "images"
OUTPUT_NAMES = ("decision", "segmentation")


@dataclass(frozen=True)
class Difference:
    """The largest absolute difference between the two runtimes on one input."""

    name: str
    decision: float
    segmentation: float

    @property
    def worst(self) -> float:
        return max(self.decision, self.segmentation)


def export_module(module: SegDecModule, path: Path, opset: int) -> None:
    """Write ``module`` as ONNX to ``path``, with crackseg's metadata."""
    optional_import("onnxscript", "crackseg-export (the dynamo ONNX exporter)")
    info = ModelInfo.of_module(module)
    example = torch.rand(2, info.input_channels, info.input_height, info.input_width)
    batch = torch.export.Dim("batch", min=1)
    # Each side a multiple of OUTPUT_STRIDE of at least DECISION_STRIDE, as
    # data_settings.check_input_size asks, for the exporter's trace; the file keeps no bound
    # (onnxruntime runs any size): the rule goes into its metadata (INPUT_SIZES).
    smallest = DECISION_STRIDE // OUTPUT_STRIDE
    height = OUTPUT_STRIDE * torch.export.Dim("height_over_8", min=smallest)
    width = OUTPUT_STRIDE * torch.export.Dim("width_over_8", min=smallest)
    with _quiet(EXPORTER_LOGGERS):
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes={INPUT_NAME: {0: batch, 2: height, 3: width}},
            external_data=False,
            verbose=False,
        )
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter falls back to its own opset, with a logged traceback
        raise CracksegError(f"opset={opset}: the ONNX exporter wrote opset {written} instead")
    program.model.metadata_props.update(info.to_metadata())
    program.save(str(path), external_data=False)


@contextmanager
def _quiet(levels: dict[str, int]) -> Iterator[None]:
    loggers = {name: logging.getLogger(name) for name in levels}
    previous = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(levels[name])
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(previous[name])


def check_inputs(
    info: ModelInfo, images: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Inputs to compare the runtimes on: random ones (batched, at the input size and at a
    larger size) and the first input prediction makes of each image (its first tile, or the
    image resized)."""
    c, h, w = info.input_channels, info.input_height, info.input_width
    inputs = {
        f"random 2x{c}x{h}x{w}": rng.random((2, c, h, w), np.float32),
        f"random 1x{c}x{h + 64}x{w + 128}": rng.random((1, c, h + 64, w + 128), np.float32),
    }
    native = info.input_scaling is not None and info.input_scaling.get("mode") == "native"
    for name, image in images.items():
        if native:
            tile = TileGrid(image.shape[0], image.shape[1], h, w, 0.0).tiles(image)[0]
        else:
            tile = resize_image(image, h, w)
        inputs[name] = (tile.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    return inputs


def compare_runtimes(
    module: SegDecModule, session: Any, inputs: dict[str, np.ndarray]
) -> list[Difference]:
    """The largest difference of each output between PyTorch and onnxruntime, per input."""
    differences = []
    for name, batch in inputs.items():
        with torch.inference_mode():
            decision, segmentation = module(torch.from_numpy(batch))
        onnx_decision, onnx_segmentation = session.run(None, {INPUT_NAME: batch})
        differences.append(
            Difference(
                name,
                float(np.abs(onnx_decision - decision.numpy()).max()),
                float(np.abs(onnx_segmentation - segmentation.numpy()).max()),
            )
        )
    return differences


def read_check_images(
    folder: str, paths: list[Path], count: int, channels: int
) -> dict[str, np.ndarray]:
    """Up to ``count`` readable images of ``paths``, the images of ``check_images=folder``
    (unreadable ones are skipped)."""
    images, unreadable = {}, []
    for path in paths:
        if len(images) == count:
            break
        try:
            images[str(path)] = read_image(path, channels)
        except DataError as error:
            log.warning("not comparing on an unreadable image: %s", error)
            unreadable.append(path)
    if paths and not images:
        raise DataError(
            f"check_images={folder}: none of its images could be read "
            f"({describe_files(unreadable)})"
        )
    return images


def export_checkpoint(cfg: DictConfig, check_images: list[Path]) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` to ``model.onnx`` in the run folder, checked against PyTorch
    on random inputs and the images ``check_images`` (crackseg.deploy.settings.checked_export
    checked the settings)."""
    ort = optional_import("onnxruntime", "crackseg-export")
    output_dir = Path(cfg.paths.output_dir)
    module = load_validated_module(cfg.ckpt_path)
    info = ModelInfo.of_module(module)
    images = read_check_images(
        str(cfg.check_images), check_images, cfg.num_check_images, info.input_channels
    )
    inputs = check_inputs(info, images, np.random.default_rng(0))
    destination = output_dir / EXPORT_MODEL
    with atomic_path(destination) as tmp:
        export_module(module, tmp, cfg.opset)
        session = ort.InferenceSession(str(tmp), providers=[CPU_PROVIDER])
        differences = compare_runtimes(module, session, inputs)
        worst = max(differences, key=lambda d: d.worst)
        if worst.worst > cfg.tolerance:
            raise CracksegError(
                f"onnxruntime's outputs differ from PyTorch's by {worst.worst:.2e} on "
                f"{worst.name} (tolerance {cfg.tolerance:g}): the ONNX model was not written"
            )
    for difference in differences:
        log.info(
            "%s: largest difference %.2e (decision), %.2e (segmentation)",
            difference.name,
            difference.decision,
            difference.segmentation,
        )
    record = {
        "onnx": str(destination.resolve()),
        "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),  # wherever it was typed
        "opset": cfg.opset,
        "tolerance": cfg.tolerance,
        "metadata": info.to_metadata(),
        "max_difference": {
            d.name: {"decision": d.decision, "segmentation": d.segmentation} for d in differences
        },
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    atomic_write_text(output_dir / EXPORT_RECORD, json.dumps(record, indent=2))
    log.info(
        "exported %s (largest difference %.2e over %d inputs)",
        destination,
        worst.worst,
        len(differences),
    )
    return {"max_difference": worst.worst, "checked_inputs": len(differences)}
