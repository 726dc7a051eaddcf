"""The settings of ``crackseg-predict`` and ``crackseg-export``, and their files, checked
before anything is loaded or written: a command that cannot run is refused before torch loads.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from crackseg.data.data_settings import OUTPUT_STRIDE, check_input_size
from crackseg.data.io import image_size, list_input_images
from crackseg.deploy.outputs import refuse_earlier_outputs
from crackseg.deploy.predictor import Plan
from crackseg.errors import ConfigError, CracksegError, DataError
from crackseg.models.checkpoint import PICKLE_MAGIC, ZIP_MAGIC, checkpoint_file, is_text
from crackseg.setting_rules import as_typed, check_required, check_rules, is_integer, is_number

if TYPE_CHECKING:
    from crackseg.deploy.backends import ModelInfo

log = logging.getLogger(__name__)

MODES = ("auto", "tile", "resize")
BACKENDS = ("torch", "onnx")
DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")
#: auto: as the checkpoint trained, where the device computes that natively
#: (:func:`crackseg.deploy.backends.prediction_precision`).
PRECISIONS = ("auto", "32", "bf16")
#: What the optional ONNX support needs installed.
DEPLOY_EXTRA = "pip install 'crackseg[deploy]'"


#: The largest overlap of neighbouring tiles: a pixel is covered by about 1 / (1 - overlap)²
#: tiles, so the work grows without bound towards 1 (0.99: ten thousand times).
MAX_OVERLAP = 0.75

#: key -> (accepts the value, what it must be).
RULES = {
    "backend": (lambda v: v in BACKENDS, " or ".join(BACKENDS)),
    "mode": (lambda v: v in MODES, " or ".join(MODES)),
    "tile_height": (lambda v: v is None or (is_integer(v) and v > 0), "null or a positive integer"),
    "tile_width": (lambda v: v is None or (is_integer(v) and v > 0), "null or a positive integer"),
    "overlap": (
        lambda v: is_number(v) and 0 <= v <= MAX_OVERLAP,
        f"a number in [0, {MAX_OVERLAP}] (at {MAX_OVERLAP} every pixel is predicted about "
        f"{round(1 / (1 - MAX_OVERLAP) ** 2)} times already)",
    ),
    "batch_size": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "device": (
        lambda v: isinstance(v, str) and DEVICE_NAMES.fullmatch(v),
        "auto, cpu, cuda or cuda:N",
    ),
    "decision_threshold": (
        lambda v: v is None or (is_number(v) and 0 <= v <= 1),
        "null or a number in [0, 1]",
    ),
    "segmentation_threshold": (
        lambda v: v is None or (is_number(v) and 0 <= v <= 1),
        "null or a number in [0, 1]",
    ),
    "min_crack_pixels": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "pixel_size_mm": (lambda v: v is None or (is_number(v) and v > 0), "null or a number > 0"),
    "overlays": (lambda v: isinstance(v, bool), "true or false"),
    "reference_masks": (
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "null or a folder (leave it out for none)",
    ),
}


@dataclass(frozen=True)
class PredictSettings:
    backend: str
    ckpt_path: str | None
    onnx_path: str | None
    input: str
    mode: str
    tile_height: int | None
    tile_width: int | None
    overlap: float
    batch_size: int
    device: str
    precision: str
    decision_threshold: float | None
    segmentation_threshold: float | None
    min_crack_pixels: int
    pixel_size_mm: float | None
    overlays: bool
    reference_masks: str | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PredictSettings:
        """The run's settings; a value that cannot work is one line naming its key."""
        check_required(cfg, ("input",))  # ckpt_path may be null: backend=onnx
        check_rules(cfg, RULES)
        values = OmegaConf.to_container(cfg, resolve=True)
        settings = cls(
            backend=values["backend"],
            ckpt_path=_optional_str(values.get("ckpt_path")),
            onnx_path=_optional_str(values.get("onnx_path")),
            input=str(values["input"]),
            mode=values["mode"],
            tile_height=values["tile_height"],
            tile_width=values["tile_width"],
            overlap=float(values["overlap"]),
            batch_size=values["batch_size"],
            device=values["device"],
            precision=check_precision(values["precision"]),
            decision_threshold=values["decision_threshold"],
            segmentation_threshold=values["segmentation_threshold"],
            min_crack_pixels=values["min_crack_pixels"],
            pixel_size_mm=values["pixel_size_mm"],
            overlays=values["overlays"],
            reference_masks=_optional_str(values.get("reference_masks")),
        )
        settings._check_model_settings()
        return settings

    def _check_model_settings(self) -> None:
        """Each backend reads its own model file; ONNX models run in float32."""
        if self.backend == "torch":
            if not self.ckpt_path:
                raise ConfigError("backend=torch needs ckpt_path=PATH.ckpt")
            if self.onnx_path:
                raise ConfigError("onnx_path is read by backend=onnx; drop it or set backend=onnx")
        elif self.backend == "onnx":
            if not self.onnx_path:
                raise ConfigError(
                    "backend=onnx needs onnx_path=PATH.onnx (written by crackseg-export)"
                )
            if self.ckpt_path:
                raise ConfigError(
                    "ckpt_path is read by backend=torch; drop it or set backend=torch"
                )
            if self.precision == "bf16":
                raise ConfigError("precision=bf16 needs backend=torch (ONNX models run in float32)")

    def plan(self, info: ModelInfo, source: str) -> Plan:
        """How images reach the network: as the model was trained unless ``mode`` says."""
        mode = self.mode
        if mode == "auto":
            scaling = info.input_scaling
            if scaling is None:
                log.warning(
                    "%s does not record how its training images were scaled: every image is "
                    "resized to %dx%d (mode=tile predicts tile by tile at the image's own scale)",
                    source,
                    info.input_height,
                    info.input_width,
                )
                mode = "resize"
            else:
                mode = "tile" if scaling["mode"] == "native" else "resize"
        if mode == "resize":
            if self.tile_height is not None or self.tile_width is not None:
                raise ConfigError(
                    "tile_height/tile_width apply to mode=tile; resize mode resizes every "
                    f"image to the model's input size {info.input_height}x{info.input_width}"
                )
            return Plan("resize", info.input_height, info.input_width, 0.0, self.batch_size)
        height = self.tile_height or info.input_height
        width = self.tile_width or info.input_width
        try:
            check_input_size(height, width)
        except ConfigError as error:  # worded for the training settings: keep the reason
            reason = str(error).split(" (")[0]
            raise ConfigError(f"tile {height}x{width} cannot be predicted: {reason}") from error
        return Plan("tile", height, width, self.overlap, self.batch_size)

    def image_threshold(self, info: ModelInfo) -> float:
        """The decision score from which an image holds a crack: the model's, chosen on its
        validation split, unless ``decision_threshold`` says."""
        return info.image_threshold if self.decision_threshold is None else self.decision_threshold

    def pixel_threshold(self, info: ModelInfo) -> float:
        """The probability from which a pixel is crack (the mask): the model's, chosen on
        its validation split, unless ``segmentation_threshold`` says."""
        if self.segmentation_threshold is None:
            return info.seg_threshold
        return self.segmentation_threshold


def refuse_tiles_beyond_every_image(plan: Plan, info: ModelInfo, paths: list[Path]) -> None:
    """A tile side beyond the model's input size and beyond every image (rounded up to a
    multiple of 8) adds mirror padding alone, and memory: a tile a million pixels wide
    asks the network for more than a workstation has, and the system ends the process
    without a word. Refused with the side that predicts each image in one tile. Image
    sizes are read until one shows the tile fits (a header, for PNG and JPEG)."""
    if plan.mode != "tile":
        return
    tile = {"tile_height": plan.tile_height, "tile_width": plan.tile_width}
    model = {"tile_height": info.input_height, "tile_width": info.input_width}
    oversized = [key for key in tile if tile[key] > model[key]]
    largest = {"tile_height": 0, "tile_width": 0}  # the largest image sides read
    for path in paths:
        if all(_rounded_up(largest[key]) >= tile[key] for key in oversized):
            return  # an image fills the tile
        try:
            largest = dict(zip(largest, map(max, largest.values(), image_size(path)), strict=True))
        except (DataError, OSError, ValueError):  # skipped with a warning when predicted
            continue
    for key in oversized:
        whole = max(model[key], _rounded_up(largest[key]))
        if largest[key] and tile[key] > whole:  # (none read: each is skipped, with a warning)
            axis = "high" if key == "tile_height" else "wide"
            raise ConfigError(
                f"{key}={tile[key]} is beyond every image (the largest is {largest[key]} px "
                f"{axis}): its tiles would reach into mirror padding; {key}={whole} predicts "
                "each image in one tile"
            )


def _rounded_up(side: int) -> int:
    """The smallest multiple of the network's output stride from ``side``."""
    return -(-side // OUTPUT_STRIDE) * OUTPUT_STRIDE


def checked_prediction(cfg: DictConfig) -> tuple[PredictSettings, list[Path]]:
    """crackseg-predict's settings and the images of its ``input``, its output folder and
    model file checked first."""
    refuse_earlier_outputs(Path(cfg.paths.output_dir))
    settings = PredictSettings.from_config(cfg)
    if settings.backend == "torch":
        checkpoint_file(settings.ckpt_path)
    else:
        require_installed(("onnxruntime",), "backend=onnx")
        onnx_model_file(settings.onnx_path)
    return settings, list_input_images(Path(settings.input).expanduser())


def checked_export(cfg: DictConfig) -> list[Path]:
    """crackseg-export's packages, checkpoint, ``check_images`` and ``opset`` checked first
    (the opset last: it takes onnx, which loads in most of a second); the images to compare
    on."""
    require_installed(("onnx", "onnxruntime", "onnxscript"), "crackseg-export")
    checkpoint_file(cfg.ckpt_path)
    images = check_image_files(cfg.check_images)
    onnx = optional_import("onnx", "crackseg-export")
    if cfg.opset > (newest := onnx.defs.onnx_opset_version()):
        raise ConfigError(
            f"opset must be at most {newest} (onnx {onnx.__version__}), not {cfg.opset}"
        )
    return images


def check_image_files(folder: str | None) -> list[Path]:
    """The images of ``check_images`` (a folder, or one image); none where it is left out."""
    if folder is None:
        return []
    if str(folder) == "":  # an unset shell variable: not the current folder
        raise ConfigError("check_images= is empty: name a folder or image, or leave it out")
    source = Path(folder).expanduser()
    if not source.exists():
        raise DataError(f"check_images={source} does not exist")
    return list_input_images(source)


def optional_import(name: str, purpose: str) -> ModuleType:
    """Import a package of the ``deploy`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise CracksegError(_not_installed(name, purpose)) from error


def require_installed(names: tuple[str, ...], purpose: str) -> None:
    """Refuse in one line a command needing a package of the ``deploy`` extra that is not
    installed (looked up, not imported)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise CracksegError(_not_installed(name, purpose))


def _not_installed(name: str, purpose: str) -> str:
    return f"{purpose} needs {name}, which is not installed: {DEPLOY_EXTRA}"


def onnx_model_file(path: str | Path) -> Path:
    """``path`` as an existing file, or one line saying what it is instead (a folder,
    nothing, a PyTorch checkpoint, a text file such as crackseg-export's export.json)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CracksegError(f"ONNX model {path} is a folder: name the .onnx file in it")
    if not path.is_file():
        raise CracksegError(f"ONNX model {path} does not exist")
    with path.open("rb") as file:
        head = file.read(64)
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CracksegError(
            f"ONNX model {path} begins as a PyTorch checkpoint does (a zip archive or a "
            f"pickle), not as an ONNX model: a checkpoint is predicted with backend=torch "
            f"ckpt_path={path}, or exported with crackseg-export"
        )
    if not head or is_text(head):
        kind = "an empty file" if not head else "a text file"
        raise CracksegError(
            f"ONNX model {path} is {kind}, not an ONNX model (crackseg-export writes model.onnx)"
        )
    return path


def check_precision(precision: Any) -> str:
    text = str(precision)
    if text not in PRECISIONS:
        raise ConfigError(f"precision must be auto, 32 or bf16, not {as_typed(precision)}")
    return text


def _optional_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
