"""A torchmetrics state that gathers per-image outputs across processes."""

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
