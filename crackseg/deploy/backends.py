"""The trained network behind one interface: a PyTorch checkpoint or an exported ONNX file.

Both take a batch of uint8 RGB (or grey) tiles, NHWC, and return the decision probabilities
and the crack probability maps, so the prediction pipeline never knows which one runs. An
ONNX file carries what the pipeline needs beside the weights (thresholds, input size and
scaling) as metadata, written by ``crackseg-export``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf

from crackseg import __version__
from crackseg.data.data_settings import DECISION_STRIDE, OUTPUT_STRIDE
from crackseg.deploy.settings import (
    DEVICE_NAMES,
    PredictSettings,
    check_precision,
    onnx_model_file,
    optional_import,
)
from crackseg.errors import ConfigError, CracksegError, plural
from crackseg.models.checkpoint import (
    load_validated_module,
    thresholds,
    trained_run_config,
)
from crackseg.models.precision import BF16, FLOAT32, native_precision, prefers_channels_last

if TYPE_CHECKING:
    from crackseg.models.lit_segdec import SegDecModule

log = logging.getLogger(__name__)

#: onnxruntime's execution providers crackseg asks for.
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: Prefix of the ONNX metadata keys crackseg writes.
METADATA_PREFIX = "crackseg."
#: How the exported network expects its input, stored in the ONNX metadata for other tools.
INPUT_FORMAT = "float32 NCHW, RGB (or grey when input_channels is 1), values in [0, 1]"
#: The input sizes the network takes (data_settings.check_input_size): an ONNX file holds no
#: check of its own, and onnxruntime runs any size, with wrong outputs or NaN for others.
INPUT_SIZES = (
    f"height and width multiples of {OUTPUT_STRIDE}, each at least {DECISION_STRIDE}, one of "
    f"them at least {2 * DECISION_STRIDE}; other sizes give wrong outputs or NaN, unrefused"
)
OUTPUT_FORMAT = (
    "decision: [N] probability that the image holds a defect; "
    "segmentation: [N, 1, H, W] crack probability of every pixel"
)


@dataclass(frozen=True)
class ModelInfo:
    """What prediction needs to know about a trained network besides its weights.

    ``input_scaling`` is how training images reached the input size (``mode`` native or
    resize, and the most common source size), ``None`` for checkpoints that predate it.
    """

    input_channels: int
    input_height: int
    input_width: int
    input_scaling: dict[str, Any] | None
    image_threshold: float
    seg_threshold: float
    #: The thresholds no validation chose (SegDecModule.stand_in_thresholds).
    stand_in_thresholds: tuple[str, ...] = ()

    def to_metadata(self) -> dict[str, str]:
        values = {
            "input_channels": str(self.input_channels),
            "input_height": str(self.input_height),
            "input_width": str(self.input_width),
            "input_scaling": json.dumps(self.input_scaling),
            "image_threshold": repr(self.image_threshold),
            "seg_threshold": repr(self.seg_threshold),
            "stand_in_thresholds": json.dumps(list(self.stand_in_thresholds)),
            "input_format": INPUT_FORMAT,
            "input_sizes": INPUT_SIZES,
            "output_format": OUTPUT_FORMAT,
            "version": __version__,
        }
        return {METADATA_PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str) -> ModelInfo:
        values = {
            k.removeprefix(METADATA_PREFIX): v
            for k, v in metadata.items()
            if k.startswith(METADATA_PREFIX)
        }
        try:
            return cls(
                input_channels=int(values["input_channels"]),
                input_height=int(values["input_height"]),
                input_width=int(values["input_width"]),
                input_scaling=json.loads(values["input_scaling"]),
                image_threshold=float(values["image_threshold"]),
                seg_threshold=float(values["seg_threshold"]),
                # (a file exported before it was recorded: none known)
                stand_in_thresholds=tuple(json.loads(values.get("stand_in_thresholds", "[]"))),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise CracksegError(
                f"{source} lacks crackseg's metadata ({error}): export it with crackseg-export"
            ) from error

    @classmethod
    def of_module(cls, module: SegDecModule) -> ModelInfo:
        shape = module.input_shape
        image_threshold, seg_threshold = thresholds(module)
        scaling = module.hparams.get("input_scaling")
        return cls(
            input_channels=shape.channels,
            input_height=shape.height,
            input_width=shape.width,
            input_scaling=dict(scaling) if scaling is not None else None,
            image_threshold=image_threshold,
            seg_threshold=seg_threshold,
            stand_in_thresholds=module.stand_in_thresholds or (),  # None: none known
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    name = str(name)
    if not DEVICE_NAMES.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but torch sees no CUDA GPU (use device=cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device={name} but there are {count} CUDA GPUs (cuda:0..{count - 1})"
            )
    return device


def prediction_precision(trained: str | None, device: torch.device) -> str:
    """``precision=auto``: as the checkpoint was trained (``trained``, its run's
    ``trainer.precision``), so that predictions meet the thresholds its validation chose,
    where the device computes that natively: bf16 where it trained in bf16 and this device
    computes in bf16 natively, else float32 (emulated bf16 is slower than float32; crackseg-
    eval, which reproduces, evaluates in the trained precision everywhere); for a checkpoint
    that does not say, bf16 where the device computes in it natively."""
    if device.type == "cuda":
        torch.cuda.init()  # this process forks none: the GPU answers here, not a child process
    # of the GPU named (cuda:1), not of the first one
    native = native_precision(device.type, device.index) == BF16
    if trained is None:
        chosen, why = ("bf16" if native else "32"), f"natively on this {device.type}"
    else:
        bf16 = str(trained).startswith("bf16") and native
        chosen, why = ("bf16" if bf16 else "32"), f"the checkpoint trained in {trained}"
    log.info("precision: %s (precision=auto: %s)", chosen, why)
    return chosen


class TorchBackend:
    """A checkpoint's module on a device, in float32 or under bfloat16 autocast, its
    activations NHWC where training's ``model.channels_last=auto`` would store them so (bf16
    on a CPU with AMX: the paper's network predicts 2x faster there)."""

    def __init__(self, module: SegDecModule, device: torch.device, precision: str = "32") -> None:
        self.module = module.eval().to(device)
        self.device = device
        self.bf16 = check_precision(precision) == "bf16"
        self.info = ModelInfo.of_module(module)
        if device.type == "cuda":  # as training (trainer.benchmark): tiles share one size
            torch.backends.cudnn.benchmark = True
        self.memory_format = torch.contiguous_format
        if prefers_channels_last(device.type, BF16 if self.bf16 else FLOAT32):
            self.memory_format = torch.channels_last
            self.module.net.convolutions_channels_last()
            log.info("channels_last (as model.channels_last=auto trains on this machine)")

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            batch = torch.from_numpy(tiles).to(self.device, non_blocking=True)
            # As the training data set does: uint8 HWC -> float CHW / 255, in the layout
            # training runs in (another one would pick other kernels, rounding differently).
            images = batch.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
            images = images.float() / 255
            scores, maps = self.module(images)
        return scores.float().cpu().numpy(), maps[:, 0].float().cpu().numpy()


class OnnxBackend:
    """An exported network run by onnxruntime; thresholds and input settings from its metadata."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ort = optional_import("onnxruntime", "backend=onnx")
        path = onnx_model_file(path)
        device = str(device)
        providers = onnx_providers(device, ort.get_available_providers(), torch.cuda.device_count())
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own types for a bad file
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CracksegError(f"cannot read ONNX model {path}: {reason}") from error
        check_cuda_provider(device, providers, self.session.get_providers())
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(metadata, str(path))
        check_signature(self.session, self.info, path)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        log.info("onnxruntime providers: %s", ", ".join(self.session.get_providers()))

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32) / 255
        try:
            scores, maps = self.session.run(None, {self.input_name: batch})
        except Exception as error:  # onnxruntime raises its own types
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            shape = " x ".join(str(d) for d in batch.shape)
            message = f"onnxruntime cannot run {self.path} on {shape} inputs: {reason}"
            raise CracksegError(message) from error
        return scores.astype(np.float32), maps[:, 0].astype(np.float32)


def check_signature(session: Any, info: ModelInfo, path: Path) -> None:
    """The network of an ONNX file must take and give what crackseg's metadata says: one
    N x C x H x W input and two outputs (a file labelled so by hand may hold another one)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    wanted = ("N", info.input_channels, "H", "W")
    problem = None
    if len(inputs) != 1:
        problem = f"it takes {len(inputs)} inputs, not 1"
    else:
        shape = list(inputs[0].shape)
        fixed = [(d, w) for d, w in zip(shape, wanted, strict=False) if isinstance(d, int)]
        if len(shape) != 4 or any(d != w and isinstance(w, int) for d, w in fixed):
            given = " x ".join(str(d) for d in shape)
            problem = f"its input is {given}, not {' x '.join(str(w) for w in wanted)}"
        elif len(outputs) != 2:
            problem = f"it gives {len(outputs)} outputs, not 2 (decision, segmentation)"
    if problem is not None:
        raise CracksegError(f"{path} is not the network its crackseg metadata describes: {problem}")


def onnx_providers(device: str, available: list[str], gpus: int) -> list[Any]:
    """onnxruntime's execution providers for ``device``, given the providers this onnxruntime
    has and the number of CUDA GPUs visible (as torch counts them): ``auto`` asks for CUDA
    only where both are there; ``cuda`` or ``cuda:N`` without them (or without GPU N) is
    refused."""
    if not DEVICE_NAMES.fullmatch(device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    has_cuda = CUDA_PROVIDER in available
    if device == "cpu" or (device == "auto" and not (has_cuda and gpus > 0)):
        return [CPU_PROVIDER]
    index = int(device.split(":")[1]) if ":" in device else 0
    if gpus == 0:
        raise ConfigError(f"device={device} but no CUDA GPU is visible (use device=cpu)")
    if index >= gpus:
        raise ConfigError(
            f"device={device} but {plural(gpus, 'CUDA GPU')} visible (cuda:0..{gpus - 1})"
        )
    if not has_cuda:
        raise ConfigError(
            f"device={device} but this onnxruntime has no CUDA provider "
            "(install onnxruntime-gpu, or use device=cpu)"
        )
    return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]


def check_cuda_provider(device: str, requested: list[Any], used: list[str]) -> None:
    """onnxruntime falls back to the CPU when its CUDA provider fails to load (missing CUDA
    or cuDNN libraries): refused where ``device`` named CUDA, a warning under ``auto``."""
    if requested == [CPU_PROVIDER] or CUDA_PROVIDER in used:
        return
    reason = (
        "onnxruntime's CUDA provider did not start (are the CUDA and cuDNN libraries "
        "onnxruntime-gpu needs installed? see onnxruntime's messages above)"
    )
    if device != "auto":
        raise ConfigError(f"device={device} but {reason}; device=cpu runs on the CPU")
    log.warning("device=auto runs on the CPU: %s", reason)


def open_backend(settings: PredictSettings) -> TorchBackend | OnnxBackend:
    """The backend a prediction run asked for, its settings checked (PredictSettings)."""
    if settings.backend == "onnx":
        return OnnxBackend(settings.onnx_path, settings.device)
    device = resolve_device(settings.device)
    module = load_validated_module(settings.ckpt_path)
    precision = settings.precision
    if precision == "auto":
        trained = OmegaConf.select(trained_run_config(module), "trainer.precision")
        precision = prediction_precision(trained, device)
    return TorchBackend(module, device, precision)
