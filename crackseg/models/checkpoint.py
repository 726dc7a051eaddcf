"""Reading trained weights back: the module, its thresholds and how it saw its inputs.

Checkpoints are read with ``weights_only`` (a checkpoint is data, never code to run) and
upgraded in memory when they were written by an earlier version of crackseg, so weights
trained before a change to the module's layout still evaluate and predict. torch is
imported where a checkpoint is read: a command naming a missing or foreign file
(:func:`checkpoint_file`) is refused before it loads.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from crackseg.errors import CracksegError
from crackseg.models.module_settings import DEFAULT_OPTIM, LossSettings, SpeedSettings

if TYPE_CHECKING:
    from crackseg.models.lit_segdec import SegDecModule

log = logging.getLogger(__name__)

#: The 1/8 segmentation head's FeatureNorm bias, learned since it was found to be learned in
#: the published code; earlier checkpoints have none, which equals a bias of 0.
SEG_BIAS_KEY = "net.seg_mask.1.bias"


#: How the files of ``torch.save`` begin: a zip archive (the format since PyTorch 1.6), or
#: the older format's pickle stream (protocol 2 or later).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
NOT_A_CHECKPOINT = "not a PyTorch checkpoint"
HOLDS_CODE = (
    "it holds Python objects besides weights, which crackseg does not load "
    "(a checkpoint is data, never code to run)"
)


def is_text(head: bytes) -> bool:
    """Whether a file's first bytes are text (printable, tabs, line ends), as no model is."""
    return all(byte >= 0x20 or byte in b"\t\n\r\f" for byte in head)


def _not_a_checkpoint(head: bytes) -> str | None:
    """What a file is instead of a checkpoint, judged by its first bytes; None where it
    begins as ``torch.save`` writes."""
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return None
    if not head:
        return f"{NOT_A_CHECKPOINT} (an empty file)"
    if is_text(head):
        return f"{NOT_A_CHECKPOINT} (a text file)"
    return NOT_A_CHECKPOINT


def _load_failure(error: Exception) -> str:
    """Why torch could not load a file that begins as a checkpoint, in crackseg's words:
    torch's own message advises loading with ``weights_only=False``, which runs the
    file's code, and a checkpoint is data."""
    if isinstance(error, pickle.UnpicklingError):
        return HOLDS_CODE if "Unsupported global" in str(error) else NOT_A_CHECKPOINT
    first = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
    return f"truncated or damaged ({first})"


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as a file that begins as ``torch.save`` writes, or one clear line naming
    what it is instead (a folder, nothing, a text file)."""
    return _checkpoint_head(path)[0]


def _checkpoint_head(path: str | Path) -> tuple[Path, bytes]:
    """The checkpoint file's path and first bytes, checked (:func:`checkpoint_file`)."""
    ckpt = Path(path).expanduser()
    if ckpt.is_dir():
        raise CracksegError(
            f"checkpoint {ckpt} is a folder: name a .ckpt file (a run's are in checkpoints/)"
        )
    if not ckpt.is_file():
        raise CracksegError(f"checkpoint {ckpt} does not exist")
    try:
        with ckpt.open("rb") as handle:
            head = handle.read(512)
    except OSError as error:
        raise CracksegError(f"cannot read checkpoint {ckpt}: {error.strerror}") from error
    instead = _not_a_checkpoint(head)
    if instead is not None:
        raise CracksegError(f"cannot read checkpoint {ckpt}: {instead}")
    return ckpt, head


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file's dict, or one clear line when it is missing or unreadable.

    ``mmap`` maps the tensors instead of reading them: for a look at the step or the
    config, which then costs no more than reading the small part asked for (the older
    format cannot be mapped and is read whole).
    """
    import torch

    ckpt, head = _checkpoint_head(path)
    mmap = mmap and head.startswith(ZIP_MAGIC)
    try:
        with warnings.catch_warnings():  # a pickle of something else: refused just below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for a corrupt file
        reason = _load_failure(error)
        raise CracksegError(f"cannot read checkpoint {ckpt}: {reason}") from error
    if not isinstance(state, dict):
        raise CracksegError(f"cannot read checkpoint {ckpt}: it holds no checkpoint")
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint with trained weights, or one clear line."""
    import torch

    state = load_checkpoint_file(path)
    if "state_dict" not in state:
        bare = bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())
        reason = (
            "it holds weights alone (a state_dict), not the checkpoint crackseg-train saves "
            "with its settings"
            if bare
            else "it holds no trained weights"
        )
        raise CracksegError(f"cannot read checkpoint {Path(path).expanduser()}: {reason}")
    return state


def checkpoint_step(path: str | Path) -> int:
    """The training step a checkpoint was saved at: what a resumed run logs from."""
    return int(load_checkpoint_file(path, mmap=True)["global_step"])


def checkpoint_run_config(path: str | Path) -> DictConfig | None:
    """The config a checkpoint's run was composed with (stored in its hyperparameters)."""
    text = load_checkpoint_file(path, mmap=True).get("hyper_parameters", {}).get("run_config")
    return OmegaConf.create(text) if text else None


def grouped_hparams(flat: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a checkpoint saved before the module's settings came in groups
    (one flat list of arguments) as the groups; a key it lacks takes the group's default."""
    optimizer = flat.get("optim") or DEFAULT_OPTIM
    if "lr" in flat:  # before the optimiser was a config
        optimizer = {**DEFAULT_OPTIM, "lr": flat["lr"]}
    shape = {k: flat[f"input_{k}"] for k in ("channels", "height", "width") if f"input_{k}" in flat}
    return {
        "network": flat.get("net", {}),
        "input_shape": shape,
        "loss": {f.name: flat[f.name] for f in fields(LossSettings) if f.name in flat},
        "optim": {"optimizer": optimizer, "scheduler": flat.get("scheduler")},
        "speed": {f.name: flat[f.name] for f in fields(SpeedSettings) if f.name in flat},
        "input_scaling": flat.get("input_scaling"),
        "run_config": flat.get("run_config"),
    }


def upgrade(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """Bring an older checkpoint's hyperparameters and weights to the current module."""
    import torch

    hparams = dict(checkpoint.get("hyper_parameters", {}))
    if "network" not in hparams:
        hparams = grouped_hparams(hparams)
    state = dict(checkpoint["state_dict"])
    full_resolution = bool(hparams["network"].get("full_resolution", False))
    if full_resolution:  # the unused 1/8 head is no longer built beside the full-resolution one
        state = {k: v for k, v in state.items() if not k.startswith("net.seg_mask.")}
    elif SEG_BIAS_KEY not in state and "net.seg_mask.1.scale" in state:
        state[SEG_BIAS_KEY] = torch.zeros_like(state["net.seg_mask.1.scale"])
    upgraded = {**checkpoint, "hyper_parameters": hparams, "state_dict": state}
    for name, stand_in in (("image_threshold", "image"), ("seg_threshold", "segmentation")):
        if name not in state:
            log.warning(
                "%s was saved without its %s: 0.5 stands in "
                "(crackseg-eval thresholds=validation chooses it)",
                source,
                name.replace("_", " "),
            )
            state[name] = torch.tensor(0.5)
            # no validation chose it: said as for any threshold 0.5 stands in for
            from crackseg.models.lit_segdec import STAND_IN_THRESHOLDS

            known = upgraded.get(STAND_IN_THRESHOLDS) or []
            upgraded[STAND_IN_THRESHOLDS] = [*known, stand_in]
    return upgraded


def load_module(path: str | Path) -> SegDecModule:
    """The trained module of a checkpoint, on the CPU and in eval mode.

    The LightningModule (and so Lightning) is imported only here, once the file has been
    read: a missing or unreadable checkpoint is refused without Lightning's import.
    """
    checkpoint = upgrade(read_checkpoint(path), source=str(path))
    from crackseg.models.lit_segdec import SegDecModule

    try:
        module = SegDecModule(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, ValueError) as error:
        reason = _state_dict_error_summary(str(error))
        raise CracksegError(f"checkpoint {path} does not fit this version: {reason}") from error
    module.on_load_checkpoint(checkpoint)
    return module.eval()


#: How torch starts the line of each parameter whose shape differs from the network's.
SIZE_MISMATCH = "size mismatch for "


def _state_dict_error_summary(message: str, names_shown: int = 3) -> str:
    """torch's multi-line message (``Error(s) in loading state_dict``: its missing and
    unexpected keys, its size mismatches on the lines below, one a line) as one line, each
    list of keys, and the size mismatches, cut to the first ``names_shown`` and a count."""
    lines = [line.strip().rstrip(".").strip() for line in message.splitlines() if line.strip()]
    details = lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines
    short = []
    for line in details:
        head, colon, names = line.partition(": ")
        keys = [k.strip() for k in names.split(",")] if colon and '"' in names else []
        if len(keys) > names_shown:
            line = f"{head}: {', '.join(keys[:names_shown])}, ... ({len(keys)} in all)"
        short.append(line)
    mismatches = [line for line in short if line.startswith(SIZE_MISMATCH)]
    if len(mismatches) > names_shown:
        cut = set(mismatches[names_shown:])
        short = [line for line in short if line not in cut]
        short.append(f"... ({len(mismatches)} size mismatches in all)")
    return "; ".join(short)


#: What to do with a checkpoint saved before any validation, for a command that uses its
#: thresholds.
VALIDATED_CHECKPOINT = "use one saved after a validation (checkpoints/best-*.ckpt)"


def check_saved_thresholds(module: SegDecModule, path: str | Path, remedy: str) -> None:
    """The thresholds a checkpoint carries must be a validation's: refused when none had run
    before it was saved (they are 0.5, chosen by nobody), a warning when they were chosen
    on earlier weights of the run (a checkpoint saved after an epoch not validated, or in
    the middle of one)."""
    if module.thresholds_step is None:
        raise CracksegError(
            f"{path} holds no thresholds a validation chose (0.5 stands in): {remedy}"
        )
    if module.thresholds_step != module.weights_step:
        log.warning(
            "%s: its thresholds were chosen on validation at step %d, on earlier weights "
            "than these (step %s); %s",
            path,
            module.thresholds_step,
            module.weights_step,
            remedy,
        )


def load_validated_module(path: str | Path) -> SegDecModule:
    """:func:`load_module` for a command that predicts with the checkpoint's thresholds
    (crackseg-predict, crackseg-export): refused when no validation chose them."""
    module = load_module(path)
    check_saved_thresholds(module, path, VALIDATED_CHECKPOINT)
    return module


def thresholds(module: SegDecModule) -> tuple[float, float]:
    """(image threshold, segmentation threshold) the module's weights were validated with."""
    return float(module.image_threshold), float(module.seg_threshold)


def trained_run_config(module: SegDecModule) -> DictConfig:
    """The config the module's training run was composed with (empty for old checkpoints)."""
    return OmegaConf.create(module.hparams.get("run_config") or "{}")
