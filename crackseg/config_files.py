"""What the config files under conf/ set, read as files without composing them, and what
the class a config's ``_target_`` names takes: the checks of a setting no command reads
(crackseg.runs.lifecycle) and the hints of an error line (crackseg.error_lines) ask them."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any


def target_arguments(target: object) -> list[str] | None:
    """The arguments the class or function a config's ``_target_`` names takes
    (Lightning's Trainer: ``max_epochs``, ``max_steps``, ...); None where that cannot be
    told: it takes any (``**kwargs``), or cannot be imported (its own error, later)."""
    if not isinstance(target, str):
        return None
    from hydra.utils import get_object

    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except Exception:
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind != p.VAR_POSITIONAL and p.name != "self"]


def keys_set_at_the_top(config_name: str, choices: dict[str, Any]) -> frozenset[str]:
    """The keys the configs a command composed set at the top of its config: its own
    (``train.yaml``) and those of its chosen options placed there (``# @package _global_``:
    an experiment, a sweep). ``choices``: Hydra's ``runtime.choices``."""
    found = set(_keys_of(f"{config_name}.yaml", top_only=False))
    for group, choice in choices.items():
        if isinstance(choice, str) and not group.startswith("hydra"):
            found.update(_keys_of(f"{group}/{choice}.yaml", top_only=True))
    return frozenset(found - {"defaults"})


def keys_a_config_sets(group: str, choices: dict[str, Any]) -> frozenset[str]:
    """The keys the chosen option of config group ``group`` sets in its block
    (``scheduler=step``: ``step_size``, ``gamma`` and ``interval``, which crackseg reads
    itself); none where ``group`` is no group of the command."""
    choice = choices.get(group)
    if not isinstance(choice, str):
        return frozenset()
    return frozenset(_keys_of(f"{group}/{choice}.yaml", top_only=False))


@functools.cache
def groups_of_command(config_name: str) -> frozenset[str]:
    """The config groups a command's own config chooses from (``train.yaml``: data, model,
    ..., experiment), not those of Hydra."""
    import yaml

    import crackseg

    path = Path(crackseg.CONFIG_DIR) / f"{config_name}.yaml"
    if not path.is_file():  # a config of the user's own
        return frozenset()
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    groups = {next(iter(e)).removeprefix("optional ") for e in defaults if isinstance(e, dict)}
    return frozenset(g for g in groups if not g.startswith(("override ", "hydra")))


@functools.cache
def _keys_of(relative: str, top_only: bool) -> tuple[str, ...]:
    """The keys of conf/RELATIVE; with ``top_only``, only where it is placed at the top of
    the config (``# @package _global_``). None where there is no such file."""
    import yaml

    import crackseg

    path = Path(crackseg.CONFIG_DIR) / relative
    if not path.is_file():
        return ()
    text = path.read_text()
    if top_only and "@package _global_" not in text.split("\n", 1)[0]:
        return ()
    return tuple(yaml.safe_load(text) or {})
