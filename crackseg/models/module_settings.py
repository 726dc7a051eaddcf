"""The LightningModule's settings, in groups: the network, the loss, the optimiser and the
speed options (its input size is the data's, crackseg.data.data_settings.InputSize).

Frozen dataclasses, so a module's settings are read as one typed value each, and a
checkpoint stores them as plain dicts (its hyperparameters) that build them again. Each
group also takes such a dict, which is how a checkpoint's module is rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from crackseg.models.losses import BATCH_REDUCTIONS, DECISION_TARGETS

#: Plain SGD at the seed run's learning rate (docs/method.md §8; §10 lists the other runs'), when no
#: optimiser config is given.
DEFAULT_OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}


@dataclass(frozen=True)
class NetworkSettings:
    """:class:`~crackseg.models.segdecnet.SegDecNet`'s arguments besides the input channels
    (docs/method.md §2); the defaults are the paper's network."""

    channels: tuple[int, ...] = (32, 64, 64)
    volume_channels: int = 1024
    volume_kernel: int = 15
    decision_channels: tuple[int, ...] = (8, 16, 32)
    gradient_adjustment: bool = True
    full_resolution: bool = False
    full_resolution_width: int = 32

    def __post_init__(self) -> None:
        # a config or a checkpoint gives lists; the settings stay immutable
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "decision_channels", tuple(self.decision_channels))


@dataclass(frozen=True)
class LossSettings:
    """How the losses of docs/method.md §4 are weighted, targeted and reduced over a batch."""

    delta_cls: float = 0.01
    dynamic_balance: bool = True
    decision_target: str = "label"
    batch_reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.decision_target not in DECISION_TARGETS:
            raise ValueError(f"decision_target must be one of {DECISION_TARGETS}")
        if self.batch_reduction not in BATCH_REDUCTIONS:
            raise ValueError(f"batch_reduction must be one of {BATCH_REDUCTIONS}")


@dataclass(frozen=True)
class OptimSettings:
    """Hydra configs of a partial optimiser and scheduler (``_target_``, ``_partial_: true``,
    arguments; the scheduler's ``interval`` is Lightning's, epoch by default)."""

    optimizer: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIM))
    scheduler: dict[str, Any] | None = None


@dataclass(frozen=True)
class SpeedSettings:
    """Options that change speed, and results only as another summation order rounds
    differently (benchmarks/README.md says where each helps):
    activations stored NHWC (``auto``: where the machine prefers it,
    crackseg.models.precision.prefers_channels_last), torch.compile of the network for
    training (a mode: default, reduce-overhead for CUDA graphs at small batches,
    max-autotune), and the volume convolution as im2col and matrix products
    (crackseg.models.layers.VolumeConv2d; ``auto``: where it times faster at the first
    training batch, crackseg.models.volume_kernel)."""

    channels_last: bool | str = "auto"
    compile: str | None = None
    volume_im2col: bool | str = "auto"


Group = TypeVar("Group")


def from_keys(kind: type[Group], config: Mapping[str, Any]) -> Group:
    """The settings group ``kind`` from the keys of ``config`` named as its fields: a key
    the config lacks (a run saved before the option) keeps its default, and the config's
    other keys belong to other groups (a ``loss`` config's gradient_adjustment is the
    network's, its weight map the data's)."""
    return kind(**{f.name: config[f.name] for f in fields(kind) if f.name in config})


def as_group(kind: type[Group], value: Group | Mapping[str, Any] | None) -> Group:
    """``value`` as the settings group ``kind``: itself, built from its fields' dict, or
    the defaults (None)."""
    if value is None:
        return kind()
    return value if isinstance(value, kind) else kind(**value)
