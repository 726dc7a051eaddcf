"""What counts as a change of a run's settings where it continues (a run resumed, a sweep
run again over its folder): the keys that may differ, those compared under their names of
today, and the first few differences as a user reads them."""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: The settings that name files or folders, in the order their relative paths are anchored
#: (crackseg.runs.resume.anchor_relative_paths): those the others are made of first.
PATH_KEYS = (
    "paths.data_dir",
    "paths.log_dir",
    "data.root",
    "data.split_file",
    "data.tile.source",
    "data.extra_segmented.ranking",
)


#: Config keys (glob patterns) that may differ between a run and its resumption: how it is
#: resumed, how it shares the CPU, how many loader workers read its data (a machine with
#: fewer cores; each item's augmentation is seeded by its place in the epoch, not by the
#: worker), what its console shows, how fast its network runs (the speed options: a run
#: started before ``model.channels_last: auto`` saved ``false``), and where its folder is (a
#: run folder may be moved). The GPU a job of a local parallel sweep is given
#: (``trainer.devices=[k]``) is compared as a number of devices.
RESUME_FREE_KEYS = (
    "resume",
    "model.channels_last",
    "model.compile",
    "model.volume_im2col",
    "skip_finished",
    "share_cpu_cores",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "paths.output_dir",
    "trainer.default_root_dir",
    "callbacks.*.dirpath",
    "callbacks.*.output_dir",
    "logger.save_dir",
)

#: Keys the configs of runs started before the settings groups held as copies of other
#: keys (the model block read the loss, data and optimiser groups; the data block the
#: loss's weight map) or as the class Hydra built: the sources are compared, so these never
#: count as a difference when such a run continues.
MIRRORED_KEYS = (
    "model._target_",
    "model._recursive_",
    "model.net.gradient_adjustment",
    "model.optim",
    "model.optim.*",
    "model.scheduler",
    "model.scheduler.*",
    "model.delta_cls",
    "model.dynamic_balance",
    "model.decision_target",
    "model.batch_reduction",
    "model.input_channels",
    "model.input_height",
    "model.input_width",
    "data._target_",
    "data.weighted_seg",
    "data.weighted_seg_max",
    "data.weighted_seg_p",
    "data.weighted_seg_per_component",
)

#: Settings added after runs may have started, with the value that gives the behaviour those
#: runs had (or, for a check, the check): a config saved before a key existed compares as if
#: it held that value.
ADDED_KEYS = {
    "validation_schedule": "every_n",
    "callbacks.validation_schedule.schedule": "every_n",
    "loss.weak_gradient_adjustment": "published",
    "callbacks.fail_on_diverged_loss._target_": "crackseg.runs.training_control.FailOnDivergedLoss",
}

#: Settings renamed after runs may have started (their prefix: the old name, the new one).
RENAMED_KEYS = {"callbacks.validate_on_last_epoch.": "callbacks.validation_schedule."}

#: Classes moved or renamed after runs may have started: a config saved with the old
#: ``_target_`` (still importable under it) builds the same callback.
MOVED_TARGETS = {
    "crackseg.callbacks.StopCheckpoint": "crackseg.runs.training_control.StopCheckpoint",
    "crackseg.callbacks.FailOnDivergedLoss": "crackseg.runs.training_control.FailOnDivergedLoss",
    "crackseg.callbacks.ValidateOnLastEpoch": "crackseg.runs.training_control.ValidationSchedule",
}


def config_differences(old: DictConfig, new: DictConfig, limit: int = 3) -> list[str]:
    """``key: old -> new`` for the first few settings that differ (resolved values)."""
    # both: a config of today may name the callbacks as before too (crackseg.callbacks)
    flat_old, flat_new = _as_named_today(_flatten(old)), _as_named_today(_flatten(new))
    for key, value in ADDED_KEYS.items():
        if key in flat_new:
            flat_old.setdefault(key, value)
    keys = sorted(set(flat_old) | set(flat_new))
    changed = [
        f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}"
        for k in keys
        if _compared(k, flat_old.get(k)) != _compared(k, flat_new.get(k))
        and not any(fnmatch.fnmatchcase(k, free) for free in (*RESUME_FREE_KEYS, *MIRRORED_KEYS))
    ]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _as_named_today(flat: dict[str, Any]) -> dict[str, Any]:
    """A saved config's settings under today's names (:data:`RENAMED_KEYS`,
    :data:`MOVED_TARGETS`)."""
    named = {}
    for key, value in flat.items():
        for old, new in RENAMED_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        if key.endswith("._target_"):
            value = MOVED_TARGETS.get(value, value)
        named[key] = value
    return named


def _compared(key: str, value: Any) -> Any:
    """A setting as resumption compares it: ``trainer.devices`` as a number of devices, so
    a job given another GPU than before (``[1]`` for ``[0]`` or ``1``) may resume; a path
    (:data:`PATH_KEYS`) as the file it names from here, so a run once resumed from
    elsewhere (its paths then made absolute: crackseg.runs.resume.anchor_relative_paths)
    is the same."""
    if key == "trainer.devices" and isinstance(value, list):
        return len(value)
    if key in PATH_KEYS and isinstance(value, str) and not value.startswith("~"):
        return os.path.normpath(os.path.abspath(value))
    return value


def _flatten(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
