"""The LightningModule: losses, the dynamic balance, validation and test metrics."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from crackseg.data.labels import downsample_to_output
from crackseg.evaluation.collector import PerImageOutputs
from crackseg.evaluation.metrics import (
    NUM_BINS,
    choose_seg_threshold,
    image_metrics,
    pixel_histograms,
    pixel_metrics,
)
from crackseg.models.losses import decision_loss, loss_weights, segmentation_loss, total_loss
from crackseg.models.segdecnet import SegDecNet


class SegDecModule(pl.LightningModule):
    """Trains :class:`SegDecNet` with the mixed-supervision losses of METHOD.md §4.

    ``net`` holds the network's arguments (so a checkpoint rebuilds its own architecture);
    ``input_*`` record the size it was trained for, checked when a checkpoint is evaluated;
    ``run_config`` is the composed training config as YAML, for the report of a later evaluation.
    Validation logs the image AP the best checkpoint is chosen by and picks the
    segmentation threshold on the validation split; the test step uses that threshold.
    """

    def __init__(
        self,
        net: dict[str, Any],
        name: str = "segdec",
        lr: float = 1.0,
        delta_cls: float = 0.01,
        dynamic_balance: bool = True,
        input_channels: int = 3,
        input_height: int = 640,
        input_width: int = 232,
        run_config: str | None = None,
    ) -> None:
        super().__init__()
        # The run's own hyperparameters go to TensorBoard with the final metrics instead.
        self.save_hyperparameters(logger=False)
        self.net = SegDecNet(in_channels=input_channels, **net)
        self.val_outputs = PerImageOutputs()
        self.test_outputs = PerImageOutputs()
        # Chosen on the validation split by the last validation (never on the test split).
        self.seg_threshold = 0.5
        self.test_results: dict[str, Any] = {}

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Decision probabilities [B] and segmentation probabilities [B,1,H,W] at input size."""
        out = self.net(images)
        seg = out.segmentation
        if seg.shape[-2:] != images.shape[-2:]:
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(out.decision), torch.sigmoid(seg)

    # -- training ----------------------------------------------------------------------
    def loss_weights(self) -> tuple[float, float]:
        hp = self.hparams
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 1
        return loss_weights(self.current_epoch, max_epochs, hp.delta_cls, hp.dynamic_balance)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.net(batch["image"])
        target, weight = batch["mask"], batch["weight"]
        if not self.net.full_resolution:
            target, weight = downsample_to_output(target), downsample_to_output(weight)
        loss_seg = segmentation_loss(out.segmentation, target, weight, batch["segmented"])
        loss_dec = decision_loss(out.decision, batch["label"])
        lambda_seg, lambda_dec = self.loss_weights()
        loss = total_loss(loss_seg, loss_dec, lambda_seg, lambda_dec)
        size = batch["image"].shape[0]
        log = {"on_step": False, "on_epoch": True, "batch_size": size, "sync_dist": True}
        self.log("train/loss_seg", loss_seg, **log)
        self.log("train/loss_dec", loss_dec, **log)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log_dict({"train/lambda_seg": lambda_seg, "train/lambda_dec": lambda_dec}, **log)
        return loss

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=self.hparams.lr)

    # -- evaluation --------------------------------------------------------------------
    def _collect(self, batch: dict[str, Tensor], outputs: PerImageOutputs) -> None:
        scores, seg = self(batch["image"])
        histograms = pixel_histograms(seg[:, 0], batch["mask"][:, 0] > 0.5, NUM_BINS)
        outputs.update(batch["index"], scores, batch["label"], histograms)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, self.val_outputs)

    @staticmethod
    def _epoch_outputs(outputs: PerImageOutputs) -> tuple[dict[str, Tensor], dict, Tensor]:
        """The split's gathered outputs, its image-level metrics and which images are positive."""
        gathered = outputs.compute()
        outputs.reset()
        image = image_metrics(gathered["scores"], gathered["labels"])
        return gathered, image, gathered["labels"] == 1

    def on_validation_epoch_end(self) -> None:
        gathered, image, positives = self._epoch_outputs(self.val_outputs)
        threshold, dice = choose_seg_threshold(gathered["histograms"][positives])
        self.seg_threshold = threshold
        # An undefined AP (one-class split) must not win the best checkpoint.
        ap = image["image_ap"] if not math.isnan(image["image_ap"]) else 0.0
        # The gathered values are equal on every rank; sync_dist only quiets Lightning.
        log = {"sync_dist": True}
        self.log("val/image_ap", ap, prog_bar=True, **log)
        self.log("val/image_auc", _finite(image["image_auc"]), **log)
        self.log("val/dice", _finite(dice), **log)
        self.log("val/seg_threshold", threshold, **log)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, self.test_outputs)

    def on_test_epoch_end(self) -> None:
        gathered, image, positives = self._epoch_outputs(self.test_outputs)
        pixel = pixel_metrics(gathered["histograms"][positives], self.seg_threshold)
        self.test_results = {
            **image,
            **pixel,
            "indices": gathered["indices"].cpu().numpy(),
            "scores": gathered["scores"].cpu().numpy(),
            "labels": gathered["labels"].cpu().numpy(),
            "positive_indices": gathered["indices"][positives].cpu().numpy(),
        }
        for key in ("image_auc", "image_ap", "f_measure", "dice_mean", "iou_mean"):
            self.log(f"test/{key}", _finite(self.test_results[key]), sync_dist=True)


def _finite(value: float) -> float:
    """An undefined metric (a one-class split) is logged as 0: NaN breaks TensorBoard's charts.

    The report and metrics.json keep it undefined (n/a, null).
    """
    return 0.0 if value is None or math.isnan(value) else float(value)
