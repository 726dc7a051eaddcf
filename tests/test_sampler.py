"""Balanced epochs and frequency-of-use sampling (docs/method.md §5)."""

from collections import Counter

import numpy as np
import pytest

from crackseg.data.sampler import BalancedNegativeSampler, frequency_weights


def _sampler(num_pos, num_neg, **kwargs):
    positives = list(range(num_pos))
    negatives = list(range(num_pos, num_pos + num_neg))
    return BalancedNegativeSampler(positives, negatives, **kwargs)


@pytest.mark.parametrize("frequency_of_use", [True, False])
def test_balanced_epoch(frequency_of_use):
    sampler = _sampler(30, 50, frequency_of_use=frequency_of_use, seed=3)
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == 60
    counts = Counter(epoch)
    assert all(counts[i] == 1 for i in range(30))  # every positive once
    negatives = [i for i in epoch if i >= 30]
    assert len(negatives) == 30 and len(set(negatives)) == 30  # without replacement


def test_frequency_weights_by_hand():
    # c = [0, 2, 4, 4]: s = 1 - c/4 = [1, .5, 0, 0]; median .25 -> s = [1.75, 1.25, .75, .75]
    # p ∝ s ** (4 ln 4)
    weights = frequency_weights(np.array([0, 2, 4, 4]))
    expected = np.array([1.75, 1.25, 0.75, 0.75]) ** (4 * np.log(4))
    np.testing.assert_allclose(weights, expected / expected.sum())
    np.testing.assert_allclose(frequency_weights(np.zeros(5)), np.full(5, 0.2))


def test_least_used_negatives_are_favoured():
    sampler = _sampler(5, 10, frequency_of_use=True, seed=0)
    first = {i for i in sampler.global_epoch_list(0) if i >= 5}
    second = {i for i in sampler.global_epoch_list(1) if i >= 5}
    # After epoch 0 the unused half weighs (1.5/0.5) ** (4 ln 10) ≈ 24 000 times more.
    assert first.isdisjoint(second) and len(first | second) == 10


def test_frequency_of_use_spreads_usage_more_evenly_than_random():
    def spread(frequency_of_use):
        sampler = _sampler(20, 100, frequency_of_use=frequency_of_use, seed=1)
        return sampler.usage_counts(20).std()

    assert spread(True) < 0.5 * spread(False)


def test_usage_counts_replay_is_deterministic_and_order_free():
    a = _sampler(20, 50, seed=7)
    b = _sampler(20, 50, seed=7)
    a.global_epoch_list(3)  # a jumps around, b goes in order
    late = a.global_epoch_list(6)
    for epoch in range(7):
        early = b.global_epoch_list(epoch)
    np.testing.assert_array_equal(late, early)
    assert a.usage_counts(6).sum() == 6 * 20


def test_fewer_negatives_than_positives_never_crashes():
    sampler = _sampler(6921, 987, frequency_of_use=True, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = np.fromiter(iter(sampler), dtype=np.int64)
        assert len(indices) == 2 * 6921
        negatives = indices[indices >= 6921]
        assert len(negatives) == 6921
        assert len(np.unique(negatives)) == 987  # every negative shown
    counts = sampler.usage_counts(3)
    assert counts.min() >= 3 and counts.sum() == 3 * 6921


def test_ranks_take_disjoint_shards_of_one_global_list():
    ranks = [_sampler(11, 20, seed=2, num_replicas=2, rank=r) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 11  # 22 samples, 11 each
    global_list = ranks[0].global_epoch_list(4).tolist()
    assert sorted(shards[0] + shards[1]) == sorted(global_list)
    interleaved = [x for pair in zip(*shards, strict=True) for x in pair]
    assert interleaved == global_list


def test_uneven_global_list_is_padded_for_every_rank():
    ranks = [_sampler(5, 10, seed=0, num_replicas=4, rank=r) for r in range(4)]
    lengths = {len(list(s)) for s in ranks}
    assert lengths == {3}  # 10 samples over 4 ranks -> 3 each, two repeated


@pytest.mark.parametrize(
    ("batches_done", "finished", "epoch", "skipped"),
    [
        (2, False, 3, 8),
        (15, True, 4, 0),  # all 15 batches of 4 items
        (5, True, 4, 0),  # an epoch cut short (trainer.limit_train_batches=5)
        (15, None, 4, 0),  # a checkpoint saved before the epoch's end was recorded
    ],
)
def test_a_restored_sampler_continues_where_its_checkpoint_was_written(
    batches_done, finished, epoch, skipped
):
    """Mid-epoch: the rest of that epoch. After its last batch: the next epoch, as Lightning
    starts the resumed run's first pass before it sets the sampler's epoch, so the finished
    epoch must not come back with every item skipped (or those after the batches done)."""
    trained = _sampler(30, 50, seed=3, augmentation_seeds=True)
    trained.set_epoch(3)
    state = trained.checkpoint_state(batches_done, epoch_finished=bool(finished))
    if finished is None:
        del state["epoch_finished"]
    resumed = _sampler(30, 50, seed=3, augmentation_seeds=True)
    resumed.restore(state, batch_size=4)
    uninterrupted = _sampler(30, 50, seed=3, augmentation_seeds=True)
    uninterrupted.set_epoch(epoch)
    assert list(resumed) == list(uninterrupted)[skipped:]
    assert len(list(resumed)) == 60  # the pass after is a whole epoch again
