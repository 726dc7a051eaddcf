"""A sweep's figures: each swept numeric parameter against the test metrics, over seeds.

The paper's headline is such a curve: image AP, AUC and Dice against the number of training
positives that keep their masks (``data.num_segmented``), from weak supervision (0) to full.
That one is drawn as ``mixed_supervision.png`` with the actual number of segmented
positives on a log-like x axis (0 and "all" included, both ends marked); every other
numeric swept parameter (dilate, P, Max, delta, ...) gets ``sweep_<key>.png``. Points are
means over the finished jobs of a setting (the seeds), error bars their sample standard
deviation; where several parameters are swept, each setting of the others is a line. Folds
(``data.fold``, DAGM's classes) are repeats, as seeds are: no figure of their own, no line
each, their jobs in the points' means (the paper's results are means over folds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crackseg.atomic import atomic_save_figure
from crackseg.sweep.summary import FOLD_KEYS, mean_std

#: The metrics drawn, with their axis labels.
CURVE_METRICS = (("image_ap", "image AP"), ("image_auc", "image AUC"), ("dice_mean", "mean Dice"))
NUM_SEGMENTED = "data.num_segmented"
MIXED_SUPERVISION_FIGURE = "mixed_supervision.png"


@dataclass
class Curve:
    """One line of a sweep figure: the swept values ``x`` and, per metric, mean and std;
    ``full`` is the index of the fully supervised point (``data.num_segmented=null``), if
    the sweep ran one."""

    key: str
    label: str
    full: int | None = None
    x: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    mean: dict[str, list[float]] = field(default_factory=dict)
    std: dict[str, list[float]] = field(default_factory=dict)


def figure_name(key: str) -> str:
    return MIXED_SUPERVISION_FIGURE if key == NUM_SEGMENTED else f"sweep_{key}.png"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _x_value(key: str, value: str, rows: list[dict[str, Any]]) -> float | None:
    """Where a setting sits on the x axis: its number, or for ``data.num_segmented`` the
    number of positives its jobs actually segmented (``null`` = all of them)."""
    if key == NUM_SEGMENTED:
        counts = [r["num_segmented"] for r in rows if _number(r.get("num_segmented")) is not None]
        if counts:
            return statistics.fmean(counts)
    return _number(value)


def numeric_keys(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The swept keys whose values in the finished jobs, the ones drawn, are numbers
    (``data.num_segmented``'s null included): a failed job's value (``"x"``) draws nothing."""
    found = []
    for key in (k for k in keys if k not in FOLD_KEYS):
        values = {str(r[key]) for r in rows if r["status"] == "finished"}
        allowed_null = key == NUM_SEGMENTED
        numeric = all(_number(v) is not None or (allowed_null and v == "null") for v in values)
        if values and numeric and not values <= {"true", "false", "True", "False"}:
            found.append(key)
    return found


def sweep_curves(rows: list[dict[str, Any]], key: str, keys: Sequence[str]) -> list[Curve]:
    """The lines of ``key``'s figure from ``crackseg.sweep.summary.collect_runs`` rows:
    one per setting of the other swept ``keys`` but folds, points sorted by x, finished jobs
    only."""
    others = [k for k in keys if k != key and k not in FOLD_KEYS]
    lines: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        label = ", ".join(f"{k}={row[k]}" for k in others)
        lines.setdefault(label, {}).setdefault(str(row[key]), []).append(row)
    curves = []
    for label, settings in lines.items():
        points = []
        for value, members in settings.items():
            x = _x_value(key, value, members)
            if x is not None:
                points.append((x, value == "null", members))
        curve = Curve(key, label)
        for x, full, members in sorted(points, key=lambda p: p[0]):
            if key == NUM_SEGMENTED and full:
                curve.full = len(curve.x)
            curve.x.append(x)
            curve.n.append(len(members))
            for metric, _ in CURVE_METRICS:
                mean, std = mean_std([r.get(metric) for r in members])
                curve.mean.setdefault(metric, []).append(math.nan if mean is None else mean)
                curve.std.setdefault(metric, []).append(0.0 if std is None else std)
        if curve.x:
            curves.append(curve)
    return curves


def draw_sweep_curves(curves: list[Curve], key: str, title: str = "") -> Figure:
    """One panel per metric, mean ± std against ``key`` (not saved: see write_sweep_figures)."""
    fig = Figure(figsize=(4.2 * len(CURVE_METRICS), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    xs = sorted({x for curve in curves for x in curve.x})
    for index, (metric, label) in enumerate(CURVE_METRICS):
        ax = fig.add_subplot(1, len(CURVE_METRICS), index + 1)
        for curve in curves:
            ax.errorbar(
                curve.x,
                curve.mean[metric],
                yerr=curve.std[metric],
                marker="o",
                capsize=3,
                label=curve.label or None,
            )
            if curve.full is not None and len(curve.x) > 1:
                # The fully supervised level, to read off how much of it fewer masks reach.
                level = curve.mean[metric][curve.full]
                ax.axhline(level, linestyle="--", linewidth=0.8, alpha=0.6)
        _x_axis(ax, key, xs, {c.x[c.full] for c in curves if c.full is not None})
        ax.set(ylabel=label)
        ax.grid(alpha=0.3)
        if index == 0 and any(c.label for c in curves):
            ax.legend(fontsize="small")
    fig.supxlabel(_x_label(key))
    if title:
        fig.suptitle(title)
    return fig


def _x_label(key: str) -> str:
    if key == NUM_SEGMENTED:
        return "segmented training positives (the rest: image label only)"
    return key


def _x_axis(ax: Any, key: str, xs: list[float], full: set[float]) -> None:
    """Log-like where the values span decades: symlog keeps 0 (weak supervision) on it;
    the ``full`` values (every positive segmented) are marked "all"."""
    if not xs:
        return
    if key == NUM_SEGMENTED:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(xs)
        labels = [f"{x:g}\nall" if x in full else f"{x:g}" for x in xs]
        if xs[0] == 0:
            labels[0] = "0\nweak"
        ax.set_xticklabels(labels)
        ax.set_xlim(-0.3, max(xs[-1] * 1.6, 1.0))  # one value of 0 (weak runs alone) too
    elif min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
    else:
        ax.set_xticks(xs)


def write_sweep_figures(
    folder: str | Path, rows: list[dict[str, Any]], keys: Sequence[str]
) -> list[Path]:
    """Draw every numeric swept key of a sweep into its figure in ``folder``."""
    written = []
    for key in numeric_keys(rows, keys):
        curves = sweep_curves(rows, key, keys)
        if not curves:
            continue
        over = "seeds and folds" if set(keys) & set(FOLD_KEYS) else "seeds"
        title = "mixed supervision" if key == NUM_SEGMENTED else f"{key} (mean ± std over {over})"
        fig = draw_sweep_curves(curves, key, title)
        written.append(atomic_save_figure(fig, Path(folder) / figure_name(key)))
    return written
