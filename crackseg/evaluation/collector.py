"""torchmetrics states that gather across processes what a step sees: every image's outputs
of an evaluated split (PerImageOutputs), and the training losses' weighted running means over
an epoch (WeightedMean)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PerImageOutputs(Metric):
    """Decision scores, labels and pixel histograms of every image of a split.

    States are concatenated across ranks; ``compute`` sorts by dataset index and drops the
    duplicates a distributed sampler adds to even out its shards.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("indices", "scores", "labels", "histograms"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, indices: Tensor, scores: Tensor, labels: Tensor, histograms: Tensor) -> None:
        self.indices.append(indices.detach().long())
        self.scores.append(scores.detach().float())
        self.labels.append(labels.detach().long())
        self.histograms.append(histograms.detach().long())

    def compute(self) -> dict[str, Tensor]:
        def cat(values: list[Tensor] | Tensor) -> Tensor:
            return torch.cat(values) if isinstance(values, list) else values

        indices = cat(self.indices)
        order = torch.argsort(indices, stable=True)
        indices = indices[order]
        keep = torch.ones_like(indices, dtype=torch.bool)
        keep[1:] = indices[1:] != indices[:-1]
        chosen = order[keep]
        return {
            "indices": indices[keep],
            "scores": cat(self.scores)[chosen],
            "labels": cat(self.labels)[chosen],
            "histograms": cat(self.histograms)[chosen],
        }

    def per_image(self) -> dict[str, Tensor]:
        """:meth:`compute`'s tensors, each with its axis of images: torchmetrics gives a
        result of one element back as a scalar, which a split of one image is."""
        computed = self.compute()
        return {
            name: value.reshape(-1) if value.dim() == 0 else value
            for name, value in computed.items()
        }


class WeightedMean(Metric):
    """A weighted running mean (sum of value * weight over sum of weight), synced across ranks.

    torchmetrics' MeanMetric drops the weights when its NaN check is disabled, and the check
    itself waits for the device every update; this keeps both the weights and the pace.
    A zero weight leaves the mean unchanged (a weak positive adds nothing to the epoch's
    segmentation loss). The states are the running sums a resumed epoch continues from.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, values: Tensor, weights: Tensor | None = None) -> None:
        values = values.detach().double()
        weights = torch.ones_like(values) if weights is None else weights.detach().double()
        self.total += (values * weights).sum()
        self.weight += weights.sum()

    def compute(self) -> Tensor:
        """The mean; 0 where nothing had weight (an epoch of weak positives only has no
        segmentation loss, as each of its batches has none), never NaN."""
        return torch.where(self.weight > 0, self.total / self.weight.clamp(min=1e-300), 0.0).float()
