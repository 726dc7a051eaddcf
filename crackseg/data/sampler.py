"""Balanced epochs and frequency-of-use sampling of negatives (docs/method.md §5).

Every epoch shows each positive once and ``neg_per_pos`` negatives per positive, shuffled
together. With frequency-of-use on, negatives shown least so far are favoured.

The epoch's list is a pure function of the seed and the epoch number: the usage counts are
replayed from epoch 0 (cheap: it touches index arrays only). So the sampler is correct with
any number of loader workers (it is iterated in the main process), after resuming, and under
distributed training, where every rank computes the same global list and takes its shard.

For training it also hands each item an augmentation seed drawn from (seed, epoch, position
in the epoch), so the random flips and contrast changes do not depend on loader workers,
and a run resumed in the middle of an epoch (:meth:`resume_at`) repeats them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Selection probabilities favouring rarely shown negatives.

    ``s = 1 - c / max(c)``; ``s = s - median(s) + 1``; ``p ∝ s ** (4 ln N)``; uniform before
    any negative has been shown.
    """
    num = len(counts)
    if counts.max() == 0:
        return np.full(num, 1.0 / num)
    score = 1.0 - counts / counts.max()
    score = score - np.median(score) + 1.0
    weights = score ** (4.0 * math.log(num)) if num > 1 else np.ones(1)
    if np.count_nonzero(weights) == 0:
        weights = np.ones(num)
    return weights / weights.sum()


def draw_negatives(rng: np.random.Generator, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Draw ``count`` negative positions by ``probabilities``.

    Without replacement while there are enough negatives; with fewer negatives than asked
    for, every negative is shown once and the rest are drawn with replacement.
    """
    num = len(probabilities)
    if count <= num:
        # Negatives with zero weight can only be drawn once the others are exhausted.
        p = probabilities + (1e-12 if np.count_nonzero(probabilities) < count else 0.0)
        return rng.choice(num, size=count, replace=False, p=p / p.sum())
    extra = rng.choice(num, size=count - num, replace=True, p=probabilities)
    return np.concatenate([np.arange(num), extra])


class BalancedNegativeSampler(Sampler[int]):
    """Yields dataset indices: all positives plus ``neg_per_pos`` times as many negatives,
    per epoch.

    ``positives``/``negatives`` are indices into the dataset. ``num_replicas``/``rank``
    default to the process group when one is initialised. With ``augmentation_seeds`` it
    yields ``(index, seed)`` pairs, which :class:`~crackseg.data.dataset.CrackDataset` accepts.
    """

    def __init__(
        self,
        positives: Sequence[int],
        negatives: Sequence[int],
        *,
        frequency_of_use: bool = True,
        neg_per_pos: int = 1,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        augmentation_seeds: bool = False,
    ) -> None:
        if not positives and not negatives:
            raise ValueError("the training split is empty")
        self.positives = np.asarray(positives, dtype=np.int64)
        self.negatives = np.asarray(negatives, dtype=np.int64)
        self.frequency_of_use = frequency_of_use
        self.neg_per_pos = neg_per_pos
        self.seed = seed
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank
        self.augmentation_seeds = augmentation_seeds
        # (epoch, items of this rank's shard already trained on) after a mid-epoch resume.
        self._resume: tuple[int, int] | None = None
        # Replay cache: usage counts after `_counts_epoch` epochs.
        self._counts = np.zeros(len(self.negatives), dtype=np.int64)
        self._counts_epoch = 0

    @property
    def num_replicas(self) -> int:
        if self._num_replicas is not None:
            return self._num_replicas
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def negatives_per_epoch(self) -> int:
        if len(self.negatives) == 0:
            return 0
        # Without positives (e.g. a negatives-only split) show every negative once.
        return len(self.positives) * self.neg_per_pos or len(self.negatives)

    def _negative_positions(self, epoch: int, counts: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 1])
        if self.frequency_of_use:
            probabilities = frequency_weights(counts)
        else:
            probabilities = np.full(len(counts), 1.0 / len(counts))
        return draw_negatives(rng, probabilities, self.negatives_per_epoch)

    def usage_counts(self, epoch: int) -> np.ndarray:
        """How often each negative was shown in epochs 0 .. epoch-1."""
        if epoch < self._counts_epoch:
            self._counts = np.zeros(len(self.negatives), dtype=np.int64)
            self._counts_epoch = 0
        while self._counts_epoch < epoch:
            if len(self.negatives):
                chosen = self._negative_positions(self._counts_epoch, self._counts)
                np.add.at(self._counts, chosen, 1)
            self._counts_epoch += 1
        return self._counts.copy()

    def global_epoch_list(self, epoch: int) -> np.ndarray:
        """The epoch's shuffled indices, the same on every rank."""
        parts = [self.positives]
        if len(self.negatives):
            parts.append(self.negatives[self._negative_positions(epoch, self.usage_counts(epoch))])
        indices = np.concatenate(parts)
        return np.random.default_rng([self.seed, epoch, 2]).permutation(indices)

    def __len__(self) -> int:
        total = len(self.positives) + self.negatives_per_epoch
        return math.ceil(total / self.num_replicas)

    def resume_at(self, epoch: int, items_done: int) -> None:
        """Make the next pass over ``epoch`` skip the first ``items_done`` items of the shard."""
        self._resume = (epoch, items_done)

    def checkpoint_state(self, batches_done: int, epoch_finished: bool) -> dict:
        """What a checkpoint keeps to resume mid-epoch: this sampler's state, the batches of
        its epoch already trained on, and whether the epoch was over (its last batch
        trained: a training epoch may be cut short of the sampler's length)."""
        return {
            "sampler": self.state_dict(),
            "batches_done": batches_done,
            "epoch_finished": epoch_finished,
        }

    def restore(self, state: dict, batch_size: int) -> None:
        """Continue from :meth:`checkpoint_state`: the next pass skips the batches done, so
        a resumed run sees the samples and augmentations an uninterrupted one would have.

        A checkpoint written after the epoch's last batch (``last.ckpt`` at an epoch's end)
        continues with the next epoch: Lightning starts the resumed run's first pass before
        it sets the sampler's epoch, and loader workers draw from the sampler at once, so
        that pass would be the finished epoch's with every item skipped.
        """
        self.load_state_dict(state["sampler"])
        items_done = state["batches_done"] * batch_size
        if state.get("epoch_finished", items_done >= len(self)):  # not recorded before
            self.set_epoch(self.epoch + 1)
        else:
            self.resume_at(self.epoch, items_done)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = self.global_epoch_list(self.epoch)
        replicas = self.num_replicas
        # Every rank must see as many batches: repeat the head of the list to even out.
        indices = np.resize(indices, len(self) * replicas)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        shard = slice(self.rank, None, replicas)
        if not self.augmentation_seeds:
            return iter(indices[shard][start:].tolist())
        seeds = np.random.SeedSequence([self.seed, self.epoch, 3]).generate_state(len(indices))
        pairs = zip(indices[shard][start:].tolist(), seeds[shard][start:].tolist(), strict=True)
        return iter(pairs)

    def state_dict(self) -> dict:
        """The sampler's position: seed, epoch and the usage counts before that epoch."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "usage_counts": self.usage_counts(self.epoch).tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["usage_counts"]) != len(self.negatives):
            raise ValueError(
                f"the checkpoint's sampler has {len(state['usage_counts'])} negatives, "
                f"this training split {len(self.negatives)}"
            )
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._counts = np.asarray(state["usage_counts"], dtype=np.int64)
        self._counts_epoch = self.epoch
