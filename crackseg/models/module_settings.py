"""The LightningModule's settings, in groups: the network, the loss, the optimiser and the
speed options (its input size is the data's, crackseg.data.data_settings.InputSize).

Frozen dataclasses, so a module's settings are read as one typed value each, and a
checkpoint stores them as plain dicts (its hyperparameters) that build them again. Each
group also takes such a dict, which is how a checkpoint's module is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from crackseg.data.data_settings import WEIGHT_MAP_LOSS_KEYS
from crackseg.setting_rules import plain_settings

if TYPE_CHECKING:
    import torch

#: Plain SGD at the seed run's learning rate (docs/method.md §8; §10 lists the other runs'), when no
#: optimiser config is given.
DEFAULT_OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}
#: What the decision loss is trained against (crackseg.models.losses.decision_targets).
DECISION_TARGETS = ("label", "mask_max", "mask_max_all")
#: How per-sample losses become the batch's (crackseg.models.losses, its docstring).
BATCH_REDUCTIONS = ("mean", "sum")


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

    @classmethod
    def from_config(cls, cfg: DictConfig) -> OptimSettings:
        """The ``optim`` and ``scheduler`` configs of a training config, resolved."""
        return cls(plain_settings(cfg.optim), plain_settings(OmegaConf.select(cfg, "scheduler")))


def build_optimizer(
    settings: OptimSettings, parameters: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimiser ``settings`` describe, of ``parameters``."""
    return instantiate({**settings.optimizer, "_partial_": True})(parameters)


def build_schedule(settings: OptimSettings, optimizer: torch.optim.Optimizer) -> dict | None:
    """Lightning's schedule of ``optimizer`` that ``settings`` describe (the scheduler and
    its ``interval``), or None without a scheduler."""
    if not settings.scheduler:
        return None
    scheduler = dict(settings.scheduler)
    interval = scheduler.pop("interval", "epoch")
    built = instantiate({**scheduler, "_partial_": True})(optimizer)
    return {"scheduler": built, "interval": interval}


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


#: The keys of a training config's ``loss`` block, all read: LossSettings' fields, the
#: network's gradient adjustment (NetworkSettings; ``weak_gradient_adjustment`` chooses it in
#: weak runs, crackseg.runs.resolvers) and the data's weight map (crackseg.data.
#: data_settings.weight_map_of).
LOSS_KEYS = (
    *(f.name for f in fields(LossSettings)),
    "gradient_adjustment",
    "weak_gradient_adjustment",
    "weighted_seg",
    *WEIGHT_MAP_LOSS_KEYS.values(),
)
#: The keys of its ``model`` block: the model config's name (in the run's name and its
#: report), the network (``net``) and the speed options (SpeedSettings).
MODEL_KEYS = ("name", "net", *(f.name for f in fields(SpeedSettings)))
#: The keys of ``model.net``: the network's settings, but its gradient adjustment, which is
#: the loss's (``loss.gradient_adjustment``).
NET_KEYS = tuple(f.name for f in fields(NetworkSettings) if f.name != "gradient_adjustment")
#: Each block of module settings in a training config, and the keys read from it.
SETTINGS_BLOCKS = {"loss": LOSS_KEYS, "model": MODEL_KEYS, "model.net": NET_KEYS}


def unread_keys(cfg: DictConfig) -> dict[str, list[str]]:
    """The keys of each block of :data:`SETTINGS_BLOCKS` that nothing reads (a typing
    mistake that would train as if it were not there), by block; blocks absent from
    ``cfg`` or without such keys are left out."""
    unread = {}
    for block, known in SETTINGS_BLOCKS.items():
        node = OmegaConf.select(cfg, block, default=None)
        if isinstance(node, DictConfig) and (keys := [k for k in node if k not in known]):
            unread[block] = [str(k) for k in keys]
    return unread


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
