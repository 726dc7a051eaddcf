"""A tiny SegDecModule and batches with a thin crack, for tests that train it directly
through Lightning (no data module, no run folder)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from crackseg.data.data_settings import InputSize
from crackseg.models.lit_segdec import SegDecModule
from crackseg.models.module_settings import SpeedSettings

#: SegDecNet's arguments for a network that trains in well under a second on 64x128 inputs.
TINY_NET = {"channels": (8, 16, 16), "volume_channels": 32, "volume_kernel": 5}


def tiny_module(**settings: object) -> SegDecModule:
    """A SegDecModule of :data:`TINY_NET` for 64x128 inputs; ``settings`` its other arguments."""
    return SegDecModule(network=TINY_NET, input_shape=InputSize(height=64, width=128), **settings)


def crack_batch(size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """``size`` 3x64x128 samples as the data module yields them; the first half has a thin
    vertical crack, fully segmented."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, 1, 64, 128)
    mask[: size // 2, 0, 8:56, 60:63] = 1
    image = torch.rand(size, 3, 64, 128, generator=generator) * 0.5 + mask * 0.4
    return {
        "image": image,
        "mask": mask,
        "weight": torch.ones_like(mask),
        "label": (mask.amax(dim=(1, 2, 3)) > 0).float(),
        "segmented": torch.ones(size, dtype=torch.bool),
        "mask_known": torch.ones(size, dtype=torch.bool),
        "index": torch.arange(size),
    }


def crack_loader() -> DataLoader:
    """The four samples of :func:`crack_batch` in batches of two."""
    items = [{k: v[i] for k, v in crack_batch(4).items()} for i in range(4)]
    return DataLoader(items, batch_size=2)


def fit_tiny(speed: SpeedSettings, **trainer_settings: object) -> tuple[float, SegDecModule]:
    """Two epochs of :func:`tiny_module` on :func:`crack_loader`, validated after each, with
    nothing written; its last training loss and the module."""
    torch.manual_seed(0)
    module = tiny_module(speed=speed)
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,  # as conf/trainer/default.yaml: training runs first
    }
    trainer = pl.Trainer(max_epochs=2, **(quiet | trainer_settings))
    trainer.fit(module, crack_loader(), crack_loader())
    return float(trainer.callback_metrics["train/loss"]), module
