"""The LightningModule: losses, the dynamic balance, thresholds, validation and test metrics."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from crackseg.data.data_settings import InputSize
from crackseg.evaluation.collector import PerImageOutputs, WeightedMean
from crackseg.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    NUM_BINS,
    choose_seg_threshold,
    confusion_at,
    image_metrics,
    pixel_histograms,
    pixel_metrics,
    truth_mask,
)
from crackseg.models.losses import (
    decision_targets,
    downsample_to_output,
    loss_weights,
    reduce_batch,
    segdec_loss,
)
from crackseg.models.module_settings import (
    LossSettings,
    NetworkSettings,
    OptimSettings,
    SpeedSettings,
    as_group,
    build_optimizer,
    build_schedule,
    from_keys,
)
from crackseg.models.precision import use_channels_last
from crackseg.models.segdecnet import SegDecNet, SegDecOutput
from crackseg.models.volume_kernel import VolumeKernelChoice
from crackseg.setting_rules import plain_settings


def validation_group(trainer: pl.Trainer) -> str:
    """Where a validation's scores are logged: ``val`` while training (one point an epoch),
    ``val_tested`` for the validation of the weights a run tests (the best ones, after
    training, or a checkpoint's in crackseg-eval), which on the ``val`` curve would read as
    one more epoch."""
    return "val" if trainer.state.fn == TrainerFn.FITTING else "val_tested"


#: The checkpoint key of :attr:`SegDecModule.thresholds_step`.
THRESHOLDS_STEP = "thresholds_step"
#: The checkpoint key of :attr:`SegDecModule.stand_in_thresholds`.
STAND_IN_THRESHOLDS = "stand_in_thresholds"
#: The training losses logged once per epoch: the mean over the samples each applies to.
TRAIN_LOSSES = ("loss_seg", "loss_dec", "loss")


class SegDecModule(pl.LightningModule):
    """Trains :class:`SegDecNet` with the mixed-supervision losses of docs/method.md §4.

    The settings come in groups (crackseg.models.module_settings), each the dataclass, its
    fields' dict or None for its defaults: ``network`` (so a checkpoint rebuilds its own
    architecture), ``input_shape`` (the size the network is trained for), ``loss``,
    ``optim`` (optimiser and scheduler) and ``speed``. ``input_scaling`` records how
    training images reached the input size (set from the data when fitting starts);
    ``run_config`` is the composed training config as YAML. :meth:`from_config` builds the
    module a training config describes.

    The image threshold (best F-measure) and the segmentation threshold (best mean Dice) are
    chosen on the validation split and kept as buffers, so a checkpoint carries them and
    evaluation or prediction never re-chooses them on the data they are judged on. Those of
    a checkpoint saved after an epoch that was not validated (``last.ckpt``, one saved on a
    stop) were chosen for earlier weights (:func:`crackseg.models.checkpoint.check_saved_thresholds`
    warns of it).
    """

    def __init__(
        self,
        network: NetworkSettings | dict[str, Any] | None = None,
        input_shape: InputSize | dict[str, Any] | None = None,
        loss: LossSettings | dict[str, Any] | None = None,
        optim: OptimSettings | dict[str, Any] | None = None,
        speed: SpeedSettings | dict[str, Any] | None = None,
        input_scaling: dict[str, Any] | None = None,
        run_config: str | None = None,
    ) -> None:
        super().__init__()
        self.network_settings = as_group(NetworkSettings, network)
        self.input_shape = as_group(InputSize, input_shape)
        self.loss_settings = as_group(LossSettings, loss)
        self.optim_settings = as_group(OptimSettings, optim)
        self.speed = as_group(SpeedSettings, speed)
        # NHWC activations: `auto` is made concrete for the machine by setup(), and is off
        # outside a Trainer; `true` is on from here.
        self.channels_last = self.speed.channels_last is True
        # Plain dicts, which a checkpoint stores and this constructor takes back. The run's
        # own hyperparameters go to TensorBoard with the final metrics instead.
        hparams = {
            "network": asdict(self.network_settings),
            "input_shape": asdict(self.input_shape),
            "loss": asdict(self.loss_settings),
            "optim": asdict(self.optim_settings),
            "speed": asdict(self.speed),
            "input_scaling": input_scaling,
            "run_config": run_config,
        }
        self.save_hyperparameters(hparams, logger=False)
        self.net = SegDecNet(in_channels=self.input_shape.channels, **hparams["network"])
        self.volume_kernel = VolumeKernelChoice(self.net, self.speed.volume_im2col)
        if not self.speed.compile:
            # One image of the input size, which Lightning's model summary runs once to fill
            # its FLOPs column (0 everywhere without it). Not for a compiled network: that one
            # eval-mode pass would compile it a second time.
            shape = self.input_shape
            self.example_input_array = torch.zeros(1, shape.channels, shape.height, shape.width)
        self.register_buffer("image_threshold", torch.tensor(DEFAULT_THRESHOLD))
        self.register_buffer("seg_threshold", torch.tensor(DEFAULT_THRESHOLD))
        # The training step of the weights a validation chose the thresholds on (None: never
        # chosen, DEFAULT_THRESHOLD), and that of the weights a checkpoint loaded: a
        # checkpoint saved after an epoch not validated carries earlier weights' thresholds.
        self.thresholds_step: int | None = None
        self.weights_step: int | None = None
        # Those of the thresholds the last validation could not choose, DEFAULT_THRESHOLD
        # standing in: "image" (a split of one class, or scores that are not numbers),
        # "segmentation" (no positive with a mask pixel); None where unknown (a checkpoint
        # saved before they were recorded).
        self.stand_in_thresholds: tuple[str, ...] | None = ()
        self.train_means = torch.nn.ModuleDict({name: WeightedMean() for name in TRAIN_LOSSES})
        self._log_epoch_constants = True
        self.val_outputs = PerImageOutputs()
        self.test_outputs = PerImageOutputs()
        self.last_val_image_ap = math.nan
        # Validation mean Dice at the chosen segmentation threshold; None until validated.
        self.last_val_dice: float | None = None
        # The best validation AP of the training run (what a sweeper optimises); set by the
        # training pipeline before testing, reported with the test metrics.
        self.best_val_image_ap = math.nan
        # Whether the weights tested are the run's final ones where others scored the best
        # validation AP (use_best_model off; crackseg.runs.trainer.validate_chosen_weights).
        self.tested_final_weights = False
        self.test_results: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: DictConfig, run_config: str | None = None) -> SegDecModule:
        """The module a training config describes: the network of ``model`` with the
        ``loss``'s gradient adjustment, the input shape of ``data``, the ``loss``, and the
        ``optim`` and ``scheduler`` configs.

        Reads only these keys, so the saved config of a run started before the settings
        groups (whose ``model`` block repeated loss and data keys) builds the same module.
        A new run's ``loss`` and ``model`` keys that nothing reads, and optimiser or
        scheduler settings torch refuses, are refused before (crackseg.runs.config_checks).
        """
        model = cfg.model
        network = plain_settings(model.net) | {"gradient_adjustment": cfg.loss.gradient_adjustment}
        data = cfg.data
        return cls(
            network=NetworkSettings(**network),
            input_shape=InputSize(data.input_channels, data.input_height, data.input_width),
            loss=from_keys(LossSettings, cfg.loss),
            optim=OptimSettings.from_config(cfg),
            speed=from_keys(SpeedSettings, model),
            run_config=run_config,
        )

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device.type
        self.channels_last = use_channels_last(
            self.speed.channels_last, device, str(self.trainer.precision)
        )
        if self.channels_last:
            already = self.net.volume[0].weight.is_contiguous(memory_format=torch.channels_last)
            self.net.convolutions_channels_last()
            if self.speed.channels_last == "auto" and not already:  # once, not every stage
                rank_zero_info("channels_last (model.channels_last=auto on this machine)")
        if self.speed.compile and stage == "fit":
            self.net.compile(mode=self.speed.compile)  # in place: checkpoints keep their keys

    def _net_outputs(self, images: Tensor) -> SegDecOutput:
        """The network's logits, the images in the memory layout the run trains in."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Decision probabilities [B] and segmentation probabilities [B,1,H,W] at input size."""
        out = self._net_outputs(images)
        # Probabilities are upsampled, not logits (docs/method.md §7): the two do not commute.
        seg = torch.sigmoid(out.segmentation.float())
        if seg.shape[-2:] != images.shape[-2:]:
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(out.decision.float()), seg

    # -- training ----------------------------------------------------------------------
    def current_loss_weights(self) -> tuple[float, float]:
        """(λ_seg, λ_dec) of this epoch (docs/method.md §4)."""
        settings = self.loss_settings
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 1
        return loss_weights(
            self.current_epoch, max_epochs, settings.delta_cls, settings.dynamic_balance
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        settings = self.loss_settings
        out = self._net_outputs(batch["image"])
        segmented = batch["segmented"]
        soft_mask = downsample_to_output(batch["mask"])
        if self.net.full_resolution:
            seg_target, seg_weight = batch["mask"], batch["weight"]
        else:
            seg_target, seg_weight = soft_mask, downsample_to_output(batch["weight"])
        targets = decision_targets(
            batch["label"], soft_mask, segmented, batch["mask_known"], settings.decision_target
        )
        lambda_seg, lambda_dec = self.current_loss_weights()
        # In float32 whatever the precision the network ran in.
        with torch.autocast(self.device.type, enabled=False):
            loss, seg_losses, dec_losses = segdec_loss(
                out.segmentation,
                seg_target,
                seg_weight,
                out.decision,
                targets,
                segmented,
                (lambda_seg, lambda_dec),
                settings.batch_reduction,
                processes=self.trainer.world_size if self._trainer is not None else 1,
            )

        # Logged as per-sample means over the epoch whatever the reduction: the segmentation
        # loss over segmented samples only, so weak positives never dilute it.
        seg_mean = reduce_batch(seg_losses.detach(), segmented)
        dec_mean = dec_losses.detach().mean()
        means = self.train_means
        means["loss_seg"].update(seg_losses.detach(), segmented.to(seg_losses.dtype))
        means["loss_dec"].update(dec_losses.detach())
        # One value per sample (no weight tensor to copy to the device every step).
        means["loss"].update((lambda_seg * seg_mean + lambda_dec * dec_mean).expand_as(dec_losses))
        for name in TRAIN_LOSSES:
            self.log(f"train/{name}", means[name], on_step=False, on_epoch=True, prog_bar=True)
        if self._log_epoch_constants and self._trainer is not None:
            # Constant within an epoch: logged once, as every value logged from the host is
            # copied to the device, and such a copy waits for the device.
            self._log_epoch_constants = False
            values = {
                "train/lambda_seg": lambda_seg,
                "train/lambda_dec": lambda_dec,
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            }
            self.log_dict(values, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._log_epoch_constants = True

    def configure_optimizers(self) -> Any:
        # The training config checks build them once before (crackseg.runs.config_checks).
        optimizer = build_optimizer(self.optim_settings, self.net.parameters())
        schedule = build_schedule(self.optim_settings, optimizer)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- what checkpoints carry beyond the weights -------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint carries the volume convolution's kernel (what ``auto`` chose), so
        a resumed run and a prediction compute as the run did, and the step whose weights
        its thresholds were chosen on. (A checkpoint taken mid-epoch carries the epoch's
        running loss sums too: crackseg.runs.training_control.EpochLossesAcrossStops.)"""
        self.volume_kernel.save(checkpoint)
        checkpoint[THRESHOLDS_STEP] = self.thresholds_step
        stand_ins = self.stand_in_thresholds
        checkpoint[STAND_IN_THRESHOLDS] = None if stand_ins is None else list(stand_ins)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.weights_step = checkpoint.get("global_step", 0)
        # one saved before the step was: its thresholds taken as its weights' own
        self.thresholds_step = checkpoint.get(THRESHOLDS_STEP, self.weights_step)
        stand_ins = checkpoint.get(STAND_IN_THRESHOLDS)
        self.stand_in_thresholds = None if stand_ins is None else tuple(stand_ins)
        self.volume_kernel.load(checkpoint)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.volume_kernel.chosen:  # set, taken from a checkpoint, or timed already
            return
        self.volume_kernel.choose(
            self.trainer,
            self.device.type,
            batch["image"].shape,
            self.channels_last,
            self.speed.compile,
        )

    def on_train_start(self) -> None:
        # Also when resuming mid-epoch, where Lightning does not start the epoch again.
        self._log_epoch_constants = True
        datamodule = getattr(self.trainer, "datamodule", None)
        scaling = getattr(datamodule, "input_scaling", None)
        if scaling is not None:
            self.hparams["input_scaling"] = scaling

    # -- evaluation --------------------------------------------------------------------
    def _collect(self, batch: dict[str, Tensor], outputs: PerImageOutputs) -> None:
        scores, seg = self(batch["image"])
        histograms = pixel_histograms(seg[:, 0], truth_mask(batch["mask"][:, 0]), NUM_BINS)
        outputs.update(batch["index"], scores, batch["label"], histograms)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, self.val_outputs)

    @staticmethod
    def _take_epoch_outputs(outputs: PerImageOutputs) -> tuple[dict[str, Tensor], Tensor]:
        """The split's gathered outputs and which of its images are positive, the collector
        emptied for the next epoch."""
        gathered = outputs.per_image()
        outputs.reset()
        return gathered, gathered["labels"] == 1

    def on_validation_epoch_end(self) -> None:
        gathered, positives = self._take_epoch_outputs(self.val_outputs)
        image = image_metrics(gathered["scores"], gathered["labels"])
        seg_threshold, dice = choose_seg_threshold(gathered["histograms"][positives])
        # An undefined AP (one-class split) must not win the best checkpoint.
        ap = _finite(image["image_ap"])
        if not self.trainer.sanity_checking:
            self.image_threshold.fill_(image["image_threshold"])
            self.seg_threshold.fill_(seg_threshold)
            self.thresholds_step = self.global_step
            unchosen = {"image": image["best_f_measure"], "segmentation": dice}
            self.stand_in_thresholds = tuple(k for k, v in unchosen.items() if math.isnan(v))
            self.last_val_image_ap = image["image_ap"]  # undefined stays undefined
            self.last_val_dice = dice
        # The gathered values are equal on every rank; sync_dist only quiets Lightning.
        sync = {"sync_dist": True}
        group = validation_group(self.trainer)
        self.log(f"{group}/image_ap", ap, prog_bar=True, **sync)
        self.log(f"{group}/image_auc", _finite(image["image_auc"]), **sync)
        self.log(f"{group}/image_threshold", image["image_threshold"], **sync)
        self.log(f"{group}/dice", _finite(dice), **sync)
        self.log(f"{group}/seg_threshold", seg_threshold, **sync)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, self.test_outputs)

    def on_test_epoch_end(self) -> None:
        gathered, positives = self._take_epoch_outputs(self.test_outputs)
        scores, labels = gathered["scores"], gathered["labels"]
        # The thresholds chosen on validation, applied unchanged; the best-F threshold of the
        # test scores themselves (the published protocol) is kept apart, clearly named.
        image = image_metrics(scores, labels, threshold=float(self.image_threshold))
        published = confusion_at(scores, labels, image["best_f_threshold"])
        pixel = pixel_metrics(gathered["histograms"][positives], float(self.seg_threshold))
        scored = torch.from_numpy(pixel.pop("scored"))
        self.test_results = {
            **{k: v for k, v in image.items() if not k.startswith("best_f_")},
            "test_best_f_threshold": image["best_f_threshold"],
            "test_best_f_measure": image["best_f_measure"],
            **{f"test_best_f_{k}": published[k] for k in ("tp", "fp", "tn", "fn")},
            **pixel,
            "best_val_image_ap": self.best_val_image_ap,
            # the validation AP of the weights tested (the final ones, with use_best_model
            # off, where the best were others); undefined where none validated them
            "tested_val_image_ap": self.last_val_image_ap,
            "tested_final_weights": self.tested_final_weights,
            "indices": gathered["indices"].cpu().numpy(),
            "scores": scores.cpu().numpy(),
            "labels": labels.cpu().numpy(),
            # the positives scored, in the order of dice_per_image
            "positive_indices": gathered["indices"][positives].cpu()[scored].numpy(),
        }
        if self.last_val_dice is not None:
            self.test_results["seg_threshold_val_dice"] = self.last_val_dice
        if self.stand_in_thresholds is not None:  # the thresholds 0.5 stood in for
            self.test_results["stand_in_thresholds"] = list(self.stand_in_thresholds)
        for key in ("image_auc", "image_ap", "f_measure", "dice_mean", "iou_mean"):
            self.log(f"test/{key}", _finite(self.test_results[key]), sync_dist=True)


def _finite(value: float) -> float:
    """An undefined metric (a one-class split) is logged as 0: NaN breaks TensorBoard's charts.

    The report and metrics.json keep it undefined (n/a, null).
    """
    return 0.0 if value is None or math.isnan(value) else float(value)
