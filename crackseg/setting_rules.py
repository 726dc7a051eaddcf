"""Checking a command's settings before anything runs: a value against its rule, a required
value given. Each refusal is one line naming the setting (crackseg.errors.ConfigError)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crackseg.errors import ConfigError

_MISSING = object()

#: key -> (accepts the value, what it must be).
Rules = dict[str, tuple[Callable[[Any], bool], str]]


def is_integer(value: Any) -> bool:
    """An int, and not a bool (``True`` is an int to Python, not to a setting)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Settings a command cannot go without (``???`` in its config), and how to give them.
REQUIRED = {
    "ckpt_path": "ckpt_path=PATH.ckpt",
    "input": "input=IMAGE_OR_FOLDER",
    "data.root": "data.root=PATH",
}


def check_required(cfg: DictConfig, keys: tuple[str, ...] = tuple(REQUIRED)) -> None:
    """Refuse a required setting left out (``???``), null, or given empty (``input=`` with
    an unset shell variable would otherwise read as the current folder). Keys the config
    does not have are not checked."""
    for key in keys:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or name not in node.keys():  # noqa: SIM118
            continue  # (``name in node`` is False for ``???``)
        if OmegaConf.is_missing(node, name) or node[name] in (None, ""):
            raise ConfigError(f"{REQUIRED[key]} is required")


def check_rules(cfg: DictConfig, rules: Rules) -> None:
    """Refuse the first value that its rule (``key -> (accepts, what it must be)``) does not
    accept; keys the config does not have are not checked."""
    for key, (accepts, expected) in rules.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING and not accepts(value):
            raise ConfigError(f"{key} must be {expected}, not {value!r}")
