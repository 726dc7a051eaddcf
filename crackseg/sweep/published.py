"""What a sweep's summary says about the paper's settings (docs/method.md §10): the Table 4 row
each job stands for, and the jobs whose weak runs depart from the published ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackseg.errors import CracksegError
from crackseg.paper_settings import table4_label, weak_run_departures

log = logging.getLogger(__name__)

#: The swept key of the Table 4 sweeps (conf/sweep/paper_*_components.yaml).
TABLE4_KEY = "table4_row"


def add_table4_labels(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Name each row's Table 4 row (``table4``) where ``table4_row`` is swept; return the
    added column, so the summary reads as the paper's table."""
    if TABLE4_KEY not in keys:
        return []
    for row in rows:
        try:
            row["table4"] = table4_label(int(row[TABLE4_KEY]))
        except (ValueError, CracksegError):  # a value typed by hand, outside 1..14
            row["table4"] = "not a Table 4 row"
    return ["table4"]


def departures(root: Path, rows: list[dict[str, Any]]) -> list[str]:
    """summary.md's lines naming the jobs that depart from the published weak settings."""
    found = []
    for row in rows:
        config = Path(root) / row["job"] / ".hydra" / "config.yaml"
        if not config.is_file():
            continue
        try:
            notes = weak_run_departures(OmegaConf.load(config))
        except (OSError, ValueError, TypeError, yaml.YAMLError, OmegaConfBaseException) as error:
            # unreadable, or an interpolation this process cannot resolve
            log.debug("cannot read the settings of %s: %s", config, error)
            continue
        if notes:
            found.append(f"- `{row['job']}`: {notes[0]}")
    if not found:
        return []
    return ["", "## Departures from the published settings", "", *found]
