"""The run's ``report.md``, shaped like the seed report (docs: seed/crack_segmentation_results.md).

Section order, headings and table row names follow the seed line by line, so a new run's
report can be diffed against it; what the seed lacks comes after it: the rows its tables
lack (weak positives, the decision target, the loss over a batch, the precision) after
their rows, and the AUC/AP/F-measure line, Dice and IoU and notes on edge cases after its
last section. Seed quirks not copied: the duplicated "Input width" row, Windows path
separators in the image links, and Dice panels named by the rounded value's shortest form
(``0.12_dice_2523.png``, where docs/method.md §7 asks for 3 decimals: ``0.120_dice_2523.png``);
and the curves are PNG files (``ROC.png``), where the seed's were JPEG, lossless for lines
and text. One difference is of protocol, not of form: the Results table counts the test
images at the image threshold chosen on validation, the seed's at the best F-measure of the
test scores themselves, which the report keeps as a second, labelled table
(docs/protocol.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf

from crackseg.atomic import atomic_write_text
from crackseg.data.splits import SET_ROWS, set_table
from crackseg.markdown import markdown_table
from crackseg.paper_settings import weak_run_departures
from crackseg.run_files import DICE_PANELS_DIR, PR_FIGURE, REPORT_FILE, ROC_FIGURE

log = logging.getLogger(__name__)

DATASET_ROWS = (
    "Input channels",
    "Input height",
    "Input width",
    "Train samples",
    "Test samples",
    "Validation samples",
    "Segmented samples",
)
"""The seed's Dataset table rows, in its order."""

SPLITS_COUNTED = ("train", "test", "val")
"""The splits the seed's tables count, in its order."""


class RunParameter(NamedTuple):
    """A run parameter as the report, TensorBoard's HParams tab and the config checks see it."""

    key: str
    """The config key a user types (docs/running.md, "The names you type")."""
    kind: str
    """How its value is printed and checked: int, number, float, bool or str."""
    row: str | None = None
    """The report's Run parameters row (as the seed spells it); None: not in the table."""
    hparam: str | None = None
    """Its name in TensorBoard's HParams tab; None: not shown there."""
    seed_row: bool = True
    """A row of the seed's own table (always written) or one it lacks (written after the
    seed's rows, only when the config has the key)."""


#: The one list of run parameters, in the seed report's row order.
RUN_PARAMETERS = (
    RunParameter("data.batch_size", "int", "Batch size", "batch_size"),
    RunParameter("trainer.max_epochs", "int", "Epochs", "epochs"),
    RunParameter("optim.lr", "number", "Learning rate", "lr"),
    RunParameter("loss.delta_cls", "number", "Delta CLS Loss", "delta_cls"),
    RunParameter("data.dilate", "int", "Dilate", "dilate"),
    RunParameter("loss.dynamic_balance", "bool", "Dynamically balanced loss", "dynamic_balance"),
    RunParameter(
        "data.frequency_sampling", "bool", "Frequency-of-use sampling", "frequency_sampling"
    ),
    RunParameter(
        "loss.gradient_adjustment", "bool", "Gradien-flow adjustment", "gradient_adjustment"
    ),
    RunParameter("loss.weighted_seg", "bool", "Weighted segmentation loss", "weighted_seg"),
    RunParameter(
        "loss.weighted_seg_max", "float", "Weighted segmentation loss Max", "weighted_seg_max"
    ),
    RunParameter("loss.weighted_seg_p", "float", "Weighted segmentation loss P", "weighted_seg_p"),
    RunParameter("use_best_model", "bool", "Use best model", "use_best_model"),
    RunParameter("validate", "bool", "Validate", "validate"),
    RunParameter("validate_on_test", "bool", "Validate on test", "validate_on_test"),
    # Rows the seed's table lacks: what changes a run's numbers beyond it.
    RunParameter(
        "loss.decision_target", "str", "Decision target", "decision_target", seed_row=False
    ),
    RunParameter(
        "loss.batch_reduction", "str", "Loss over a batch", "batch_reduction", seed_row=False
    ),
    RunParameter("trainer.precision", "str", "Precision", "precision", seed_row=False),
    # In the HParams tab only (the Dataset table reports the segmented samples).
    RunParameter("data.num_segmented", "int", hparam="num_segmented"),
    RunParameter("seed", "int", hparam="seed"),
)

#: Hyperparameters shown in TensorBoard's HParams tab, by name -> config key.
HPARAMS = {p.hparam: p.key for p in RUN_PARAMETERS if p.hparam is not None}

#: What every report says about how its numbers were made.
REPORT_NOTES = (
    "Dice and IoU are per test positive, against the undilated ground-truth mask at the input "
    "size (taken at one half where it was resized); an empty prediction on a positive scores 0.",
    "A split with only positives or only negatives has no defined AUC or AP: they are "
    "reported as n/a (null in metrics.json).",
)

NOT_AVAILABLE = "n/a"
_MISSING = object()


def is_undefined(value: Any) -> bool:
    """A metric a split cannot give (the AUC of one class): nan, or None in metrics.json."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def format_metric(value: Any, digits: int = 4) -> str:
    """A metric with fixed decimals, n/a where it is undefined (:func:`is_undefined`)."""
    if is_undefined(value):
        return NOT_AVAILABLE
    return f"{float(value):.{digits}f}"


def _count(value: Any) -> str:
    return NOT_AVAILABLE if is_undefined(value) else str(int(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A table as the seed writes them: columns at least 11 characters wide."""
    return markdown_table(header, rows, min_width=11)


def _split_pair(split_counts: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    """(positives, negatives) of a split, None where it is not counted."""
    pair = split_counts.get(key)
    if pair is None:
        return None
    positives, negatives = pair
    return int(positives), int(negatives)


def _format_value(value: Any, kind: str) -> object:
    """Turn a config value into what ``str()`` prints like the seed (1, 0.01, 1.0, True)."""
    if value is _MISSING or value is None:
        return NOT_AVAILABLE
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    number = float(value)
    return int(number) if number.is_integer() else number


def run_parameters_from_config(cfg: Any) -> list[tuple[str, object]]:
    """The Run parameters table rows, read from the composed Hydra config.

    Values are returned so that ``str()`` prints them as the seed does: learning rate 1
    (even if the config says 1.0), delta 0.01, Max 1.0, P 2.0, True/False. A key of the
    seed's table the config lacks is reported as n/a (and logged) rather than failing the
    end of a long run.
    """
    rows: list[tuple[str, object]] = []
    for parameter in RUN_PARAMETERS:
        if parameter.row is None:
            continue
        value = OmegaConf.select(cfg, parameter.key, default=_MISSING)
        if value is _MISSING and not parameter.seed_row:
            continue
        if value is _MISSING:
            log.warning(
                "Report: config has no %s; '%s' is written as n/a", parameter.key, parameter.row
            )
        elif parameter.key == "use_best_model" and value:
            # without validation there are no best weights: the final ones were tested
            value = OmegaConf.select(cfg, "validate", default=True)
        rows.append((parameter.row, _format_value(value, parameter.kind)))
    return rows


def hparams_of(cfg: Any, num_segmented: int | None = None) -> dict[str, Any]:
    """The swept run parameters as TensorBoard accepts them (numbers, booleans, strings), a
    name keeping one type in every run, which TensorBoard needs to sort and filter them:
    ``num_segmented`` is the count of positives that kept their masks where it is given (a
    ``data.num_segmented`` of null, every positive, is a count too), and a null setting is
    left out."""
    values = {}
    for name, key in HPARAMS.items():
        value = OmegaConf.select(cfg, key)
        if name == "num_segmented" and num_segmented is not None:
            value = num_segmented
        if value is not None:
            values[name] = value
    return values


def dataset_table_from_counts(
    cfg: Any, split_counts: Mapping[str, tuple[int, int]], num_segmented: int | None
) -> dict[str, object]:
    """The Dataset table rows: input size from ``data.*``, sample counts from the splits.

    ``split_counts`` maps 'train' / 'val' / 'test' to (positives, negatives);
    ``num_segmented`` is the number of training positives that kept their masks, the other
    training positives are weak (image label only); None where it is unknown (an evaluation
    on other data than the weights trained on).
    """
    table: dict[str, object] = {}
    for name, key in (
        ("Input channels", "data.input_channels"),
        ("Input height", "data.input_height"),
        ("Input width", "data.input_width"),
    ):
        value = OmegaConf.select(cfg, key, default=None)
        table[name] = NOT_AVAILABLE if value is None else int(value)
    for key in SPLITS_COUNTED:
        pair = _split_pair(split_counts, key)
        table[f"{SET_ROWS[key]} samples"] = NOT_AVAILABLE if pair is None else sum(pair)
    table["Segmented samples"] = NOT_AVAILABLE if num_segmented is None else int(num_segmented)
    train = _split_pair(split_counts, "train")
    if train is not None:
        weak = weak_positives(train[0], num_segmented)
        table["Weak positives (image label only)"] = NOT_AVAILABLE if weak is None else weak
    return table


def weak_positives(train_positives: int, num_segmented: int | None) -> int | None:
    """How many training positives are weak (image label only); None where the count of
    segmented ones is unknown."""
    return None if num_segmented is None else max(train_positives - int(num_segmented), 0)


def _auto_notes(metrics: Mapping[str, Any]) -> list[str]:
    """Notes the numbers themselves call for, so an n/a never goes unexplained."""
    notes = []
    if is_undefined(metrics.get("image_auc")) or is_undefined(metrics.get("image_ap")):
        notes.append(
            "Image AUC and AP are undefined (n/a): the test split holds only one class, or "
            "scores that are not numbers."
        )
    without = int(metrics.get("positives_without_mask") or 0)
    if without:
        notes.append(
            f"{without} test positive{'s have' if without > 1 else ' has'} no mask pixel (an "
            "empty or missing mask, or a crack too thin for the input size): counted apart, "
            "left out of Dice and IoU (`positives_without_mask` in metrics.json)."
        )
    if metrics.get("seg_threshold") == 0:
        notes.append(
            "The segmentation threshold chosen on validation is 0: every pixel reaches it, so "
            "the masks mark whole images (the segmentation head does not tell cracks from "
            "background yet: train longer, or check the masks)."
        )
    trained_on = int(metrics.get("test_images_trained_on") or 0)
    if trained_on:
        notes.append(
            f"{trained_on} of the test images are images the weights trained on, "
            "photographs of tiles they trained on, or copies of either "
            "(`test_images_trained_on` in metrics.json): these numbers overstate them."
        )
    if is_undefined(metrics.get("dice_mean")):
        notes.append(
            "Dice and IoU are undefined (n/a): "
            + (
                "no test positive has a mask pixel."
                if without
                else "the test split has no positives."
            )
        )
    return notes


def _confusion_table(metrics: Mapping[str, Any], prefix: str) -> list[str]:
    """The seed's Results table: rows Positives/Negatives, columns True/False."""

    def count(key: str) -> str:
        return _count(metrics.get(prefix + key))

    return _table(
        ("", "True", "False"),
        (
            ("**Positives**", count("tp"), count("fn")),
            ("**Negatives**", count("tn"), count("fp")),
        ),
    )


def _accuracy(metrics: Mapping[str, Any], prefix: str) -> str:
    """ ", accuracy NN.NN %" of the counts under ``prefix``, or nothing when undefined."""
    counts = [metrics.get(prefix + k) for k in ("tp", "fp", "tn", "fn")]
    if any(is_undefined(c) for c in counts) or sum(int(c) for c in counts) == 0:
        return ""
    tp, fp, tn, fn = (int(c) for c in counts)
    return f", accuracy {100.0 * (tp + tn) / (tp + fp + tn + fn):.2f} %"


def _dataset_section(
    dataset: Mapping[str, object], split_counts: Mapping[str, tuple[int, int]]
) -> list[str]:
    """The dataset's table and the positives and negatives of each split."""
    lines = ["## Dataset", ""]
    ordered = [name for name in DATASET_ROWS if name in dataset]
    ordered += [name for name in dataset if name not in DATASET_ROWS]
    lines += _table(("Parameter", "Value"), ((name, dataset[name]) for name in ordered))
    lines += ["", ""]
    return lines + set_table({key: _split_pair(split_counts, key) for key in SPLITS_COUNTED})


def _dice_section(dice_files: Sequence[str]) -> list[str]:
    """Links to the Dice panels of the test positives."""
    lines = ["## Dice test outputs", ""]
    for name in dice_files:
        file_name = Path(str(name).replace("\\", "/")).name
        lines.append(f"![test_output]({DICE_PANELS_DIR}/{file_name})")
    if not dice_files:
        lines.append("(no test positives, so no dice panels)")
    return lines


def _test_metrics_section(
    metrics: Mapping[str, Any], chosen_on: str, validated_on_test: bool
) -> list[str]:
    """Image-level metrics, the published protocol's counts, Dice and IoU, the thresholds."""
    lines = ["", "## Test metrics", ""]
    stand_ins = _stand_in_thresholds(metrics, validated_on_test)
    how = "the best F-measure there"
    if "image" in stand_ins:
        how = (
            "standing in: scores of one class, or not numbers, have no threshold of best F-measure"
        )
    lines.append(
        "Image level (test split): "
        f"AUC: {format_metric(metrics.get('image_auc'))}, "
        f"AP: {format_metric(metrics.get('image_ap'))}. "
        "The Results table counts the test images at the image threshold chosen on the "
        f"{chosen_on} ({format_metric(metrics.get('image_threshold'))}, {how}), "
        f"applied unchanged: F-measure {format_metric(metrics.get('f_measure'))}"
        f"{_accuracy(metrics, '')}."
    )
    # (a run's metrics written before the tested weights' AP was recorded: the best's)
    tested = metrics.get("tested_val_image_ap", metrics.get("best_val_image_ap"))
    if not is_undefined(tested):
        source = ", on the test split," if validated_on_test else ""
        line = f"Validation AP{source} of the weights tested: {format_metric(tested)}"
        best = metrics.get("best_val_image_ap")
        # (the final weights may be the best: their epoch scored it)
        other = format_metric(best) not in (format_metric(tested), NOT_AVAILABLE)
        if metrics.get("tested_final_weights") and other:
            line += f" (the run's best, other weights: {format_metric(best)})"
        lines += ["", line]
    if "test_best_f_threshold" in metrics:
        lines += ["", "### Results by the published protocol", ""]
        threshold = format_metric(metrics.get("test_best_f_threshold"))
        if is_undefined(metrics.get("test_best_f_measure")):  # a test split of one class
            lines.append(
                "A test split of one class has no threshold of best F-measure, which the "
                f"published code and the seed's table count at; the counts at {threshold} "
                f"stand in{_accuracy(metrics, 'test_best_f_')}."
            )
        else:
            lines.append(
                f"The threshold with the best F-measure on the test split itself ({threshold}), "
                "as the published code and the seed's table count; it is chosen by looking at "
                "the test labels, so it flatters the result: F-measure "
                f"{format_metric(metrics.get('test_best_f_measure'))}"
                f"{_accuracy(metrics, 'test_best_f_')}."
            )
        if "image_ap_trapezoid" in metrics:  # the AP the paper's numbers are
            trapezoid = format_metric(metrics["image_ap_trapezoid"])
            lines.append(f"Its AP, the trapezoidal area under the PR curve: {trapezoid}.")
        lines += [""]
        lines += _confusion_table(metrics, "test_best_f_")
    lines += [""]
    lines += _table(
        ("Pixel level (test positives)", "Mean", "Std"),
        (
            (
                "Dice",
                format_metric(metrics.get("dice_mean")),
                format_metric(metrics.get("dice_std")),
            ),
            ("IoU", format_metric(metrics.get("iou_mean")), format_metric(metrics.get("iou_std"))),
        ),
    )
    seg_threshold = format_metric(metrics.get("seg_threshold"), 2)
    if "segmentation" in stand_ins:
        threshold_line = (
            f"Segmentation threshold: {seg_threshold}, standing in: no positive of the "
            f"{chosen_on} has a mask pixel to choose it by"
        )
    else:
        threshold_line = (
            f"Segmentation threshold: {seg_threshold}, chosen on the {chosen_on} (the one "
            "maximising mean Dice there)"
        )
        if not validated_on_test:
            threshold_line += ", never on the test split"
    val_dice = metrics.get("seg_threshold_val_dice", _MISSING)
    if val_dice is not _MISSING:
        threshold_line += f"; validation mean Dice at it: {format_metric(val_dice)}"
    return lines + ["", threshold_line + "."]


def _stand_in_thresholds(metrics: Mapping[str, Any], validated_on_test: bool) -> list[str]:
    """The thresholds (``image``, ``segmentation``) that 0.5 stood in for, no validation
    having chosen them. Metrics written before runs recorded it: an image threshold of 0.5
    on a validation split of one class."""
    # Imported here: the metrics load torchmetrics (a second to start), which the command
    # line's checks, importing this module for its settings table, never need.
    from crackseg.evaluation.metrics import DEFAULT_THRESHOLD

    if "stand_in_thresholds" in metrics:
        return list(metrics["stand_in_thresholds"])
    split = "test" if validated_on_test else "val"
    counts = (metrics.get(f"{split}_positives"), metrics.get(f"{split}_negatives"))
    one_class = 0 in counts and metrics.get("image_threshold") == DEFAULT_THRESHOLD
    return ["image"] if one_class else []


def _notes_section(
    metrics: Mapping[str, Any], notes: Sequence[str], validated_on_test: bool
) -> list[str]:
    """Where the thresholds were chosen, the run's notes, and those the metrics call for."""
    threshold_note = (
        "This run validated on the test split (`validate_on_test`, as the published code does "
        "for KolektorSDD, KolektorSDD2 and DAGM): both thresholds were chosen on the test "
        "labels, which flatters the counts and the Dice at them; AUC and AP do not depend on "
        "a threshold."
        if validated_on_test
        else "The segmentation threshold is chosen on the validation split (the one maximising "
        "mean Dice over its positives) and applied unchanged to the test split."
    )
    all_notes = list(dict.fromkeys([threshold_note, *notes, *_auto_notes(metrics)]))
    return ["", "## Notes", ""] + ([f"- {note}" for note in all_notes] or ["- none"])


def _thresholds_of_the_checkpoint(metrics: Mapping[str, Any]) -> bool:
    """An evaluation that took its weights' own thresholds (``thresholds=checkpoint``)."""
    evaluated = bool(metrics.get("evaluated_checkpoint"))
    return evaluated and metrics.get("thresholds_from") == "checkpoint"


def _heading(title: str, metrics: Mapping[str, Any]) -> list[str]:
    """A training run's heading; an evaluation's (``evaluated_checkpoint``) names its
    weights and where their thresholds come from."""
    evaluated = metrics.get("evaluated_checkpoint")
    if not evaluated:
        return [f"# Results of training on {title}", ""]
    thresholds = (
        "their own, chosen on their training run's data"
        if _thresholds_of_the_checkpoint(metrics)
        else "chosen again on this data (`thresholds=validation`)"
    )
    return [
        f"# Results of evaluating weights on {title}",
        "",
        f"Weights: `{evaluated}`, trained with the run parameters below; thresholds: "
        f"{thresholds}. The dataset table counts the data evaluated.",
        "",
    ]


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    dataset: Mapping[str, object],
    split_counts: Mapping[str, tuple[int, int]],
    run_parameters: Sequence[tuple[str, object]],
    metrics: Mapping[str, Any],
    dice_files: Sequence[str],
    notes: Sequence[str] = (),
    validated_on_test: bool = False,
) -> Path:
    """Write ``run_dir/report.md`` in the seed report's shape and return its path.

    ``title`` completes "# Results of training on ..." (the seed: "crack_segmentation
    dataset"); ``dataset`` is :func:`dataset_table_from_counts`' dict; ``metrics`` holds the
    keys of ``image_metrics`` and ``pixel_metrics`` (nan or None where undefined; an optional
    ``seg_threshold_val_dice`` is the validation mean Dice at the chosen threshold);
    ``dice_files`` are panel file names inside ``run_dir/dices``; ``validated_on_test``: the
    run validated on the test split (``validate_on_test``), so its thresholds and best
    validation AP come from the test labels, and the report says so. Links are relative with
    forward slashes, so the report renders wherever the run folder is moved.
    """
    chosen_on = "test split (`validate_on_test`)" if validated_on_test else "validation split"
    if _thresholds_of_the_checkpoint(metrics):
        chosen_on = f"{chosen_on} of the weights' training run"
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = _heading(title, metrics)
    lines += _dataset_section(dataset, split_counts)
    lines += ["", "## Run parameters"]
    lines += _table(("Parameter", "Value"), run_parameters)
    lines += ["", "", "## Results", ""]
    lines += _confusion_table(metrics, "")
    lines += ["", "", f"![AUC](./{ROC_FIGURE})", f"![Ap](./{PR_FIGURE})", ""]
    lines += _dice_section(dice_files)
    lines += _test_metrics_section(metrics, chosen_on, validated_on_test)
    lines += _notes_section(metrics, notes, validated_on_test)

    path = run_dir / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    log.info("Wrote %s", path)
    return path


def write_run_report(
    run_dir: Path,
    cfg: Any,
    title: str,
    metrics: Mapping[str, Any],
    split_counts: Mapping[str, tuple[int, int]],
    num_segmented: int | None,
) -> Path:
    """``report.md`` of a run composed with ``cfg``, from its test metrics and split sizes."""
    return write_report(
        run_dir,
        title=title,
        dataset=dataset_table_from_counts(cfg, split_counts, num_segmented),
        split_counts=split_counts,
        run_parameters=run_parameters_from_config(cfg),
        metrics=metrics,
        dice_files=metrics["dice_files"],
        notes=[*REPORT_NOTES, *weak_run_departures(cfg)],
        validated_on_test=bool(cfg.get("validate_on_test", False)),
    )
