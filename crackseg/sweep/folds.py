"""Cross-validation joined at a sweep's folder: the mean ± std over the folds, and the test
scores of all folds pooled.

The published code joins KolektorSDD's 3 folds (join_folds_results.py) by the mean of the
folds' AP and AUC, and sums the false positives and negatives each fold counts at its own
threshold; it joins no DAGM classes (each class is a run of its own). A multirun over
``data.fold`` (or ``data.dagm_class``) gets the mean ± std over the folds here, per setting of
its other swept keys and seed, and beside it crackseg's own addition: AUC and AP over the test
scores of all folds taken together (pooled). The two differ when the folds' scores are not on
one scale; a fold that did not finish leaves both incomplete, which the table counts.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import torch

from crackseg.atomic import atomic_write_csv
from crackseg.evaluation.metrics import image_metrics
from crackseg.markdown import markdown_table
from crackseg.run_files import SCORES_FILE
from crackseg.sweep.published import add_table4_labels
from crackseg.sweep.summary import FOLD_KEYS, format_mean_std, last_grid, mean_std

log = logging.getLogger(__name__)

CSV_NAME = "folds.csv"
#: Per-job metrics averaged over the folds.
FOLD_METRICS = ("image_auc", "image_ap", "image_ap_trapezoid", "dice_mean")
#: Those computed again over the test scores of all folds pooled.
POOLED_METRICS = ("image_auc", "image_ap", "image_ap_trapezoid")


def fold_key(keys: list[str]) -> str | None:
    """The swept key that names the folds, if the sweep has one."""
    return next((k for k in keys if k in FOLD_KEYS), None)


def read_test_scores(job: Path) -> tuple[list[float], list[int]] | None:
    """(decision scores, labels) of a job's ``test_scores.csv``; None where it has none."""
    path = job / SCORES_FILE
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [float(r["decision_score"]) for r in rows], [int(r["label"]) for r in rows]
    except (OSError, KeyError, ValueError) as error:
        log.warning("cannot read %s: %s", path, error)
        return None


def pooled_folds(root: Path, rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """One row per setting of the other swept keys and seed: the folds that finished and
    gave test scores out of the setting's folds (those of its jobs, and those the grid of
    the sweep's last run gives it that no job started yet), AUC and AP over their pooled
    scores, and the mean ± std over them."""
    fold = fold_key(keys)
    if fold is None:
        return []
    grid = last_grid(root) or []
    others = [k for k in keys if k != fold]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((*(str(row[k]) for k in others), str(row["seed"])), []).append(row)
    joined = []
    for setting, members in groups.items():
        scores: list[float] = []
        labels: list[int] = []
        used = []
        for row in members:
            read = read_test_scores(root / row["job"]) if row["status"] == "finished" else None
            if read is not None:
                scores += read[0]
                labels += read[1]
                used.append(row)
        out: dict[str, Any] = dict(zip([*others, "seed"], setting, strict=True))
        of_the_grid = {
            job[fold]
            for job in grid
            if fold in job and all(job.get(k, value) == value for k, value in out.items())
        }
        folds = {str(r[fold]) for r in members} | of_the_grid
        out["folds"] = f"{len(used)}/{len(folds)}"
        out["fold_values"] = " ".join(str(r[fold]) for r in used)
        pooled = image_metrics(torch.tensor(scores), torch.tensor(labels)) if scores else {}
        for name in POOLED_METRICS:
            value = pooled.get(name)
            out[f"pooled_{name}"] = value if value is not None and math.isfinite(value) else None
        for name in FOLD_METRICS:
            mean, std = mean_std([r.get(name) for r in used])
            out[f"{name}_mean"], out[f"{name}_std"] = mean, std
            out[name] = format_mean_std(mean, std)
        joined.append(out)
    return joined


def write_pooled_folds(
    root: Path, rows: list[dict[str, Any]], keys: list[str], out: Path | None = None
) -> list[str]:
    """Write ``folds.csv`` into ``out`` (the sweep's folder ``root`` by default) and return
    summary.md's section on it (nothing where no fold key was swept)."""
    joined = pooled_folds(root, rows, keys)
    if not joined:
        return []
    fold = fold_key(keys)
    add_table4_labels(joined, keys)
    setting = [k for k in joined[0] if k not in ("folds", "fold_values") and not _metric(k)]
    columns = [*setting, "folds", "fold_values", *(f"pooled_{m}" for m in POOLED_METRICS)]
    columns += [f"{m}_{s}" for m in FOLD_METRICS for s in ("mean", "std")]
    atomic_write_csv(
        (root if out is None else out) / CSV_NAME,
        columns,
        (["" if row.get(c) is None else row[c] for c in columns] for row in joined),
    )

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    header = [
        *setting,
        "folds",
        "AUC pooled",
        "AP pooled",
        "AP (trapezoid) pooled",
        *(f"{m} (mean ± std)" for m in FOLD_METRICS),
    ]
    lines = [
        f"## Folds joined (`{fold}`)",
        "",
        "AUC and AP over the test scores of all folds pooled, beside the mean ± std over "
        "the folds (the published code reports KolektorSDD by the mean of its folds' AUC and "
        "AP, its AP the trapezoidal one); `folds`: those that finished of all "
        f"({CSV_NAME} holds the numbers).",
        "",
    ]
    rows = [
        [
            *(row[k] for k in setting),
            row["folds"],
            *(number(row[f"pooled_{m}"]) for m in POOLED_METRICS),
            *(row[m] for m in FOLD_METRICS),
        ]
        for row in joined
    ]
    return ["", *lines, *markdown_table(header, rows)]


def _metric(key: str) -> bool:
    return key.startswith("pooled_") or any(key.startswith(m) for m in FOLD_METRICS)
