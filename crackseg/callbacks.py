"""A run's outputs made by Lightning callbacks: the training history, validation images,
the weak positives' ranking, and the evaluation report. (The run machinery's own callbacks,
the validation schedule and the checkpoint on a stop among them, are in
:mod:`crackseg.runs.training_control`.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from crackseg.atomic import atomic_write_csv, atomic_write_text
from crackseg.data.datamodule import input_scaling
from crackseg.evaluation import weak_ranking
from crackseg.evaluation.metrics import json_ready, score_text, truth_mask
from crackseg.evaluation.plots import (
    dice_panel_name,
    plot_precision_recall,
    plot_roc,
    plot_training_curves,
    save_dice_panel,
    spread_indices,
)
from crackseg.evaluation.report import HPARAMS, hparams_of, weak_positives, write_run_report
from crackseg.models.lit_segdec import validation_group
from crackseg.run_files import (
    DICE_PANELS_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    PR_FIGURE,
    RANKING_FILE,
    ROC_FIGURE,
    SCORES_FILE,
    TRAINING_CURVES_FIGURE,
)
from crackseg.runs.hydra_run import override_key, saved_overrides, typed_overrides
from crackseg.runs.trained_settings import TrainedImages

# Under these names the configs of runs started before the machinery's callbacks moved to
# crackseg.runs.training_control build them (resume=RUN_DIR continues with the saved config).
from crackseg.runs.training_control import (  # noqa: F401
    CheckpointsFollowTheRunFolder,
    FailOnDivergedLoss,
    StopCheckpoint,
)
from crackseg.runs.training_control import (  # noqa: F401
    ValidationSchedule as ValidateOnLastEpoch,  # its name then
)

log = logging.getLogger(__name__)

HISTORY_KEYS = (
    "train/loss_seg",
    "train/loss_dec",
    "train/loss",
    "train/lambda_seg",
    "train/lambda_dec",
    "val/image_ap",
    "val/image_auc",
    "val/dice",
)

#: ``test_scores.csv``: every test image's decision score, decision and Dice.
SCORES_COLUMNS = ("sample_id", "image", "label", "decision_score", "decision", "dice")


def started_overrides(run_dir: Path) -> list[str]:
    """The overrides the run in ``run_dir`` was started with: those Hydra saved in its
    ``.hydra/`` (a resumed run's command line says only ``resume=``), else this command's."""
    saved = saved_overrides(run_dir)
    return saved if saved is not None else typed_overrides()


_ABSENT = object()


def typed_hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The settings typed on the command line (``overrides``) besides the run parameters (a
    sweep's swept keys among them, ``loss.decision_target``, ``data.fold``), so that
    TensorBoard's HParams tab tells every job of a sweep apart: the value the run used, or
    the typed one for a config group's choice."""
    known = set(HPARAMS.values())
    typed = {}
    for override in overrides:
        key = override_key(override)
        if key in known or key.startswith("hydra") or "=" not in override:
            continue
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or OmegaConf.is_config(value):  # a config group's choice
            value = override.split("=", 1)[1]
        if value is not None:  # left out: a key keeps one type in every run (hparams_of)
            typed[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return typed


def forward_as_run(
    trainer: pl.Trainer, pl_module: pl.LightningModule, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's decision and segmentation probabilities for ``images``, computed in the
    run's precision (bf16 autocast in a bf16-mixed run), as its validation and test steps
    computed theirs: the pictures show what the scores were made of. A network compiled for
    training (``model.compile``) runs eagerly here: these few batches of their own sizes would
    each compile it again."""
    with (
        torch.no_grad(),
        trainer.precision_plugin.forward_context(),
        torch.compiler.set_stance("force_eager"),
    ):
        return pl_module(images.to(pl_module.device))


class TrainingHistory(pl.Callback):
    """Keeps the per-epoch scalars and draws the training curves when fitting ends."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer: pl.Trainer, prefix: str) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        for key in HISTORY_KEYS:
            value = trainer.callback_metrics.get(key)
            if key.startswith(prefix) and value is not None:
                self.history.setdefault(key, []).append((trainer.current_epoch, float(value)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, "train/")
        if trainer.optimizers and not trainer.sanity_checking:
            # the optimiser's own, not the logged float32 copy (0.01 is 0.009999999776...)
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            self.history.setdefault("train/lr", []).append((trainer.current_epoch, lr))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run before the module logs its metrics there.
        self._record(trainer, "val/")

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / HISTORY_FILE, json.dumps(self.history, indent=1))
        plot_training_curves(self.history, self.output_dir / TRAINING_CURVES_FIGURE)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()}


class ValidationImages(pl.Callback):
    """Logs a few validation images with their predicted masks to TensorBoard."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return
        dataset = trainer.datamodule.dataset(trainer.datamodule.val_split)
        positives = [i for i, s in enumerate(dataset.samples) if s.is_positive]
        chosen = (positives or list(range(len(dataset))))[: self.num_images]
        if not chosen:
            return
        items = [dataset[i] for i in chosen]  # each read from disk once
        batch = torch.stack([item["image"] for item in items])
        masks = torch.stack([item["mask"] for item in items])
        scores, seg = forward_as_run(trainer, pl_module, batch)
        # One row per image: the image (grey), the ground truth, the predicted probabilities.
        grey = batch.mean(dim=1, keepdim=True).cpu()
        rows = torch.cat([grey, masks, seg.cpu()], dim=3).clamp(0, 1)
        # The step Lightning logs the validation scalars at: a resumed run's logger drops
        # what was logged from its checkpoint's step on, images included.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        group = validation_group(trainer)
        trainer.logger.experiment.add_images(f"{group}/predictions", rows, global_step=step)


class WeakRanking(pl.Callback):
    """After testing, ranks the weak training positives by how uncertain the tested weights'
    segmentation of them is (crackseg.evaluation.weak_ranking) into ``weak_ranking.csv``."""

    def __init__(self, output_dir: str, batch_size: int = 8) -> None:
        self.output_dir = Path(output_dir)
        self.batch_size = batch_size

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        weak = datamodule.data_split.weak_train_indices()
        if not weak:
            return
        dataset = datamodule.dataset("train")
        threshold = float(pl_module.seg_threshold)
        entries = []
        for start in range(0, len(weak), self.batch_size):
            chosen = weak[start : start + self.batch_size]
            images = torch.stack([dataset[i]["image"] for i in chosen])
            scores, seg = forward_as_run(trainer, pl_module, images)
            for index, score, probabilities in zip(chosen, scores.cpu(), seg.cpu(), strict=True):
                sample = dataset.samples[index]
                value, pixels, mean = weak_ranking.uncertainty(probabilities[0], threshold)
                entries.append(
                    {
                        "sample_id": sample.sample_id,
                        "image": str(sample.image_path),
                        "uncertainty": value,
                        "decision_score": float(score),
                        "crack_pixels": pixels,
                        "mean_crack_probability": mean,
                    }
                )
        path = self.output_dir / RANKING_FILE
        weak_ranking.write_ranking(path, weak_ranking.rank(entries))
        log.info("%d weak positives ranked for annotation in %s", len(entries), path)


def warn_of_another_scale(trained: Any, datamodule: Any) -> None:
    """Warn where weights trained on images fed at their own size (tiles, ``input_scaling``
    mode ``native``) are evaluated on test images resized to that size: whole photographs
    squeezed to a tile's size show cracks at a scale the network never saw, and the scores
    are those of another task (crackseg-predict tiles a photograph instead)."""
    if not trained or trained.get("mode") != "native":
        return
    size = datamodule.input_size
    test = input_scaling(datamodule.data_split.splits["test"], size.height, size.width)
    if test is None or test["mode"] == "native":
        return
    log.warning(
        "the checkpoint was trained on %dx%d images fed at their own size (tiles, or images "
        "made at that size); the test images here, most %dx%d, are resized to %dx%d, a scale "
        "it never saw: cut them into tiles of its size (crackseg-data tile), or score whole "
        "photographs with crackseg-predict reference_masks=DIR",
        size.height,
        size.width,
        test["source_height"],
        test["source_width"],
        size.height,
        size.width,
    )


class EvaluationReport(pl.Callback):
    """After testing, writes metrics.json, the curves, the Dice panels and report.md.

    ``run_config`` is the config whose run parameters the report and TensorBoard's HParams
    tab show (an evaluation's: the weights' training run with the data evaluated); without
    it only the files of the numbers are written. ``trained_here``: the weights were trained
    on this data module's split, so its count of segmented positives is theirs (the HParams
    tab's ``num_segmented``); an evaluation's is not, unless ``training_split_rebuilt`` (an
    evaluation on their own data, their training split rebuilt as it was); where neither,
    the report and metrics.json give no count.
    ``trained_images``: the images the weights trained on (an evaluation's, from their
    checkpoint), so a test split that holds some is said to (``test_images_trained_on``).
    ``evaluated``: an evaluation's weights and where its thresholds come from
    (``evaluated_checkpoint``, ``thresholds_from``: ``checkpoint`` or ``validation``), into
    metrics.json and the report.
    """

    def __init__(
        self,
        output_dir: str,
        num_dice_panels: int = 7,
        run_config: DictConfig | None = None,
        title: str = "",
        trained_here: bool = True,
        training_split_rebuilt: bool = False,
        trained_images: TrainedImages | None = None,
        evaluated: Mapping[str, str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.evaluated = dict(evaluated or {})
        self.trained_images = trained_images
        self._trained_test_ids: list[str] | None = None
        self.num_dice_panels = num_dice_panels
        self.run_config = run_config
        self.title = title
        self.trained_here = trained_here
        self.counts_segmented = trained_here or training_split_rebuilt

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.trained_here and trainer.is_global_zero:
            warn_of_another_scale(pl_module.hparams.get("input_scaling"), trainer.datamodule)
            if trained := self._test_images_trained_on(trainer):
                total = len(trainer.datamodule.data_split.splits["test"])
                log.warning(
                    "%d of the %d test images are %s (%s): their scores overstate the weights",
                    len(trained),
                    total,
                    self.trained_images.what,
                    ", ".join(trained[:3]) + (", ..." if len(trained) > 3 else ""),
                )

    def _test_images_trained_on(self, trainer: pl.Trainer) -> list[str]:
        """The test split's sample ids of :attr:`trained_images` (found once: copies are
        found by content)."""
        if self.trained_images is None:
            return []
        if self._trained_test_ids is None:
            datamodule = trainer.datamodule
            test = datamodule.data_split.splits["test"]
            self._trained_test_ids = self.trained_images.among(test, datamodule.root)
        return self._trained_test_ids

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results = pl_module.test_results
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        metrics = self._metrics(trainer, results)
        atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
        self._write_scores(trainer, results, float(pl_module.image_threshold))
        plot_roc(*results["roc"], results["image_auc"], out / ROC_FIGURE)  # undefined: says so
        plot_precision_recall(*results["pr"], results["image_ap"], out / PR_FIGURE)
        dice_files = self._dice_panels(trainer, pl_module, results)
        if self.run_config is not None:
            if isinstance(trainer.logger, TensorBoardLogger):
                self._log_hparams(trainer, trainer.logger, metrics)
            counts = trainer.datamodule.data_split.counts()
            shown = metrics | {"dice_files": dice_files}
            segmented = metrics["num_segmented"]
            write_run_report(out, self.run_config, self.title, shown, counts, segmented)
        log.info("evaluation written to %s", out)

    def _metrics(self, trainer: pl.Trainer, results: dict[str, Any]) -> dict[str, Any]:
        """metrics.json: the test results, the split's counts, the training's masks."""
        split = trainer.datamodule.data_split
        counts = split.counts()
        metrics = json_ready(results)
        for name, (pos, neg) in counts.items():
            metrics[f"{name}_positives"], metrics[f"{name}_negatives"] = pos, neg
            metrics[f"{name}_samples"] = pos + neg
        # another data's split (counts_segmented false) says nothing of the weights' training
        num_segmented = split.num_segmented if self.counts_segmented else None
        metrics["num_segmented"] = num_segmented
        metrics["num_weak"] = weak_positives(counts["train"][0], num_segmented)
        metrics["precision"] = str(trainer.precision)
        metrics.update(self.evaluated)
        if self.trained_images is not None:
            metrics["test_images_trained_on"] = len(self._test_images_trained_on(trainer))
        return metrics

    def _log_hparams(
        self, trainer: pl.Trainer, logger: TensorBoardLogger, metrics: dict[str, Any]
    ) -> None:
        """TensorBoard's HParams tab: the run parameters, the settings typed, the metrics."""
        final = {f"hparams/{k}": v for k, v in metrics.items() if _is_number(v)}
        typed = typed_hparams(self.run_config, started_overrides(self.output_dir))
        hparams = hparams_of(self.run_config, metrics["num_segmented"]) | typed
        # at the last step, which a run resumed after this purges and logs again
        logger.log_hyperparams(hparams, final, step=trainer.global_step)

    def _write_scores(
        self, trainer: pl.Trainer, results: dict[str, Any], image_threshold: float
    ) -> None:
        """``test_scores.csv``: every test image's decision score, decision and Dice."""
        samples = trainer.datamodule.dataset("test").samples
        positive = results["positive_indices"].tolist()
        dice_of = dict(zip(positive, results["dice_per_image"].tolist(), strict=True))
        rows = []
        for index, label, score in zip(
            results["indices"].tolist(),
            results["labels"].tolist(),
            results["scores"].tolist(),
            strict=True,
        ):
            sample = samples[index]
            dice = dice_of.get(index)
            rows.append(
                [
                    sample.sample_id,
                    str(sample.image_path),
                    int(label),
                    score_text(score),
                    int(score >= image_threshold),
                    "" if dice is None else f"{dice:.6f}",
                ]
            )
        atomic_write_csv(self.output_dir / SCORES_FILE, SCORES_COLUMNS, rows)

    def _dice_panels(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, results: dict[str, Any]
    ) -> list[str]:
        dice = results.get("dice_per_image")
        if dice is None or len(dice) == 0 or self.num_dice_panels <= 0:
            return []
        dataset = trainer.datamodule.dataset("test")
        threshold = float(pl_module.seg_threshold)
        score_of = dict(zip(results["indices"].tolist(), results["scores"].tolist(), strict=True))
        files = []
        for rank in spread_indices(list(dice), self.num_dice_panels):
            index = int(results["positive_indices"][rank])
            item = dataset[index]
            _, seg = forward_as_run(trainer, pl_module, item["image"][None])
            name = dice_panel_name(float(dice[rank]), dataset.samples[index].sample_id)
            image = item["image"].permute(1, 2, 0).numpy()
            save_dice_panel(
                image.squeeze(-1) if image.shape[-1] == 1 else image,
                truth_mask(item["mask"][0]).numpy(),
                seg[0, 0].cpu().numpy(),
                threshold,
                score_of[index],
                float(dice[rank]),
                self.output_dir / DICE_PANELS_DIR / name,
            )
            files.append(name)
        return files


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
