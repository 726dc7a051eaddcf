"""Pictures of a run: ROC and precision-recall curves, training curves, per-sample dice panels.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot, so
nothing changes the global backend and nothing is kept in pyplot's figure registry (the test
loop writes many panels); each figure is still cleared explicitly once saved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crackseg.atomic import atomic_save_figure, escape_undecodable_names
from crackseg.evaluation.report import format_metric

log = logging.getLogger(__name__)


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no display needed)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _curve_axes(xlabel: str, ylabel: str, title: str, defined: bool):  # noqa: ANN202
    """A square unit-range figure; a one-class split gets a note instead of a curve."""
    fig = _new_figure(5, 5)
    ax = fig.add_subplot()
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if not defined:
        ax.text(0.5, 0.5, "undefined: the split has one class", ha="center", va="center")
    return fig, ax


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path) -> None:
    """ROC curve with the AUC in the legend (``ROC.png`` in a run folder).

    Empty arrays (a one-class split) still give a picture that says the curve is undefined,
    so the report's link never points at a missing file.
    """
    fpr = np.asarray(fpr, dtype=float)
    tpr = np.asarray(tpr, dtype=float)
    fig, ax = _curve_axes("False positive rate", "True positive rate", "ROC curve", fpr.size > 0)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    if fpr.size:
        ax.plot(fpr, tpr, color="tab:blue", linewidth=2, label=f"ROC (AUC = {format_metric(auc)})")
    ax.legend(loc="lower right")
    atomic_save_figure(fig, path)


def plot_precision_recall(
    precision: np.ndarray, recall: np.ndarray, ap: float, path: str | Path
) -> None:
    """Precision-recall curve with the AP in the legend (``precision-recall.png``)."""
    precision = np.asarray(precision, dtype=float)
    recall = np.asarray(recall, dtype=float)
    fig, ax = _curve_axes("Recall", "Precision", "Precision-recall curve", precision.size > 0)
    if precision.size:
        ax.plot(
            recall,
            precision,
            color="tab:orange",
            linewidth=2,
            label=f"PR (AP = {format_metric(ap)})",
        )
        ax.legend(loc="lower left")
    atomic_save_figure(fig, path)


def _plot_series(
    ax: Axes, series: dict[str, list[tuple[int, float]]], marker: str, empty: str
) -> None:
    """One line per (epoch, value) series with a legend; ``empty`` written where there is none."""
    for name, points in series.items():
        epochs, values = zip(*points, strict=True)
        ax.plot(epochs, values, marker=marker, label=name)
    if series:
        ax.legend()
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def curve_panels(
    history: dict[str, list[tuple[int, float]]],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """The series of the training curves' two panels: the losses (names containing
    ``loss``) and the validation metrics (``val/``). The loss weights and the learning rate
    (``train/lambda_seg``, ``train/lr``, ...) are in history.json, not drawn."""
    losses = {k: v for k, v in history.items() if v and "loss" in k}
    validation = {k: v for k, v in history.items() if v and k.startswith("val/")}
    return losses, validation


def plot_training_curves(history: dict[str, list[tuple[int, float]]], path: str | Path) -> None:
    """Losses per epoch (left, log scale when all positive) and validation metrics (right).

    ``history`` maps a logged name (``train/loss_seg``, ``train/loss_dec``, ``train/loss``,
    ``val/image_ap``, ...) to (epoch, value) pairs: :func:`curve_panels` chooses what each
    panel draws. Empty or missing series are skipped, so a run that never validated still
    gets its loss picture.
    """
    losses, others = curve_panels(history)
    fig = _new_figure(11, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)

    _plot_series(ax_loss, losses, ".", "no losses logged")
    if losses and all(v > 0 for points in losses.values() for _, v in points if math.isfinite(v)):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training losses")
    _plot_series(ax_val, others, "o", "no validation logged")
    ax_val.set(xlabel="epoch", ylabel="value", title="Validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    atomic_save_figure(fig, path)


def _display_image(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (also CxHxW) image, uint8 or float, as float in [0, 1] for imshow."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if np.issubdtype(img.dtype, np.integer) or img.dtype == bool:
        img = img.astype(np.float32) / (1.0 if img.dtype == bool else 255.0)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def save_dice_panel(
    image: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    score: float,
    dice: float,
    path: str | Path,
) -> None:
    """Image, ground truth, segmentation probabilities, thresholded segmentation side by side.

    The probabilities are shown on a fixed 0..1 scale with a colorbar so panels of different
    samples compare. The panel width follows the image's aspect ratio, so tall crack images
    (640x232) and small ones (64x64) both stay readable.
    """
    img = _display_image(image)
    target = np.asarray(target).astype(bool)
    probs = np.asarray(probs, dtype=np.float32)
    height, width = target.shape[:2]
    panel_h = 3.6
    panel_w = min(max(panel_h * width / max(height, 1), 1.6), panel_h)
    fig = _new_figure(4 * panel_w + 0.9, panel_h + 0.9)
    axes = fig.subplots(1, 4)

    if img.ndim == 2:
        axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    else:
        axes[0].imshow(img)
    axes[0].set_title("Image", fontsize=9)
    axes[1].imshow(target, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("Ground truth", fontsize=9)
    shown = axes[2].imshow(probs, cmap="jet", vmin=0, vmax=1)
    axes[2].set_title("Segmentation", fontsize=9)
    fig.colorbar(shown, ax=axes[2], fraction=0.08, pad=0.03)
    axes[3].imshow(probs >= threshold, cmap="gray", vmin=0, vmax=1)
    axes[3].set_title(f"Seg >= {threshold:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"decision score {score:.4f}   dice {dice:.3f}", fontsize=10)
    atomic_save_figure(fig, path)


def dice_panel_name(dice: float, sample_id: str) -> str:
    """``<dice with 3 decimals>_dice_<sample id>.png``, as docs/method.md section 7 names panels.

    Path separators in the id become ``_`` so the panel always lands in ``dices/`` itself;
    bytes of a name that are not UTF-8 are written as their escapes (``caf_xe9``), so that
    the name is the one report.md links.
    """
    escaped = escape_undecodable_names(str(sample_id))
    safe_id = escaped.replace("/", "_").replace("\\", "_")
    return f"{dice:.3f}_dice_{safe_id}.png"


def spread_indices(values: Sequence[float], count: int) -> list[int]:
    """Indices of ``count`` samples spread from the worst to the best value.

    Ranks are evenly spaced over the ascending order and include the minimum and the
    maximum, so the report shows failures as well as successes, not only the best cases.
    Returned worst first, without duplicates; all indices when there are fewer values.
    """
    order = np.argsort(np.asarray(values, dtype=float), kind="stable")
    n = len(order)
    if count <= 0 or n == 0:
        return []
    if count >= n:
        return [int(i) for i in order]
    ranks = np.round(np.linspace(0, n - 1, count)).astype(int)
    picked: list[int] = []
    for rank in ranks:
        index = int(order[rank])
        if index not in picked:
            picked.append(index)
    return picked
