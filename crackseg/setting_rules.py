"""Checking a command's settings before anything runs: a value against its rule, a required
value given, the arguments of a command that is not Hydra's (:class:`OneLineParser`). Each
refusal is one line naming the setting (crackseg.errors.ConfigError). What the config files
themselves set is crackseg.config_files."""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crackseg import version_line
from crackseg.errors import ConfigError

_MISSING = object()

#: key -> (accepts the value, what it must be).
Rules = dict[str, tuple[Callable[[Any], bool], str]]


def is_integer(value: Any) -> bool:
    """An int, and not a bool (``True`` is an int to Python, not to a setting)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool: ``inf`` passes ``> 0`` (``optim.lr=inf``,
    ``pixel_size_mm=inf``) and would fail only once the work is under way."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_typed(value: Any) -> str:
    """A setting's value as a command line types it, for a message: ``null``, ``true``,
    ``'abc'`` (quoted: a word where a number was meant), ``1.5``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def plain_settings(node: Any) -> Any:
    """A config node as plain dicts and lists (what a settings group, a checkpoint's
    hyperparameters or a JSON file holds), resolved; a missing value (``???``) is an error.
    Anything else is returned as it is."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    return node


#: A value Hydra's command line and a shell both read as it is, unquoted.
_PLAIN_VALUE = re.compile(r"[\w./+:@%-]+", re.ASCII)


def as_override(key: str, value: object) -> str:
    """``key=value`` to type on a command line: quoted for the shell and for Hydra where the
    value holds a space, a letter outside ASCII or a character either reads as syntax
    (``'data.split_file="/tmp/g ü.csv"'``)."""
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return f"{key}={text}"
    # In Hydra's quoted value a backslash escapes only a quote, or the closing one: double
    # the backslashes there, then escape the quotes.
    escaped = re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" if m[2] else "") + m[2], text)
    return shlex.quote(f'{key}="{escaped}"')


#: Settings a command cannot go without (``???`` in its config), and how to give them.
REQUIRED = {
    "ckpt_path": "ckpt_path=PATH.ckpt",
    "input": "input=IMAGE_OR_FOLDER",
    "data.root": "data.root=PATH",
}


def check_required(cfg: DictConfig, keys: tuple[str, ...] = tuple(REQUIRED)) -> None:
    """Refuse a required setting left out (``???``), null, or given empty (``input=`` with
    an unset shell variable would otherwise read as the current folder). Keys the config
    does not have are not checked. The value is read as written, unresolved: one a job's
    environment gives (``${oc.env:...}``) is given."""
    for key in keys:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or name not in node.keys():  # noqa: SIM118
            continue  # (``name in node`` is False for ``???``)
        if OmegaConf.to_container(node, resolve=False)[name] in (None, "", "???"):
            raise ConfigError(f"{REQUIRED[key]} is required")


def check_rules(cfg: DictConfig, rules: Rules) -> None:
    """Refuse the first value that its rule (``key -> (accepts, what it must be)``) does not
    accept; keys the config does not have are not checked."""
    for key, (accepts, expected) in rules.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING and not accepts(value):
            raise ConfigError(f"{key} must be {expected}, not {as_typed(value)}")


class OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes end as every other mistake: one ``error:`` line, exit 2.

    argparse would print its usage and a ``PROG: error:`` line and exit; this raises a
    :class:`ConfigError` naming the command instead, for the command to print as its other
    errors (``crackseg-data``, ``crackseg-summary``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=version_line())

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def closest_setting(block: str, key: str, known: list[str]) -> str:
    """`` (did you mean BLOCK.NAME?)`` for the known setting closest to a mistyped ``key``
    (``NAME`` at the top of a config, ``block`` empty), else `` (known: ...)``."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    prefix = f"{block}." if block else ""
    return f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(known)})"
