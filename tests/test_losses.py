"""Losses and their schedule (METHOD.md §4)."""

import pytest
import torch

from crackseg.models.losses import decision_loss, loss_weights, segmentation_loss


@pytest.mark.parametrize(
    "epoch,expected",
    [(0, (1.0, 0.0)), (5, (0.5, 0.05)), (9, (0.1, 0.09))],
)
def test_dynamic_balance_schedule(epoch, expected):
    lambda_seg, lambda_dec = loss_weights(epoch, 10, delta=0.1, dynamic_balance=True)
    assert lambda_seg == pytest.approx(expected[0])
    assert lambda_dec == pytest.approx(expected[1])


def test_static_weights_without_dynamic_balance():
    assert loss_weights(7, 10, delta=0.01, dynamic_balance=False) == (1.0, 0.01)


def _batch(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, 1, 4, 4, generator=g)
    target = (torch.rand(size, 1, 4, 4, generator=g) > 0.7).float()
    weight = torch.rand(size, 1, 4, 4, generator=g) + 0.5
    return logits, target, weight


def test_weak_positive_does_not_change_the_segmentation_loss():
    logits, target, weight = _batch(3)
    without = segmentation_loss(logits[:2], target[:2], weight[:2], torch.tensor([True, True]))
    with_weak = segmentation_loss(logits, target, weight, torch.tensor([True, True, False]))
    assert with_weak == pytest.approx(without.item(), abs=1e-7)
    # And the weak sample really is excluded, not averaged in with its (zero) mask.
    everything = segmentation_loss(logits, target, weight, torch.tensor([True, True, True]))
    assert everything.item() != pytest.approx(without.item(), abs=1e-4)


def test_segmentation_loss_is_weighted_bce():
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]]])
    weight = torch.tensor([[[[3.0, 1.0]]]])
    # BCE at logit 0 is ln 2 for either target; weighted mean = (3 + 1) / 2 * ln 2.
    loss = segmentation_loss(logits, target, weight, torch.tensor([True]))
    assert loss.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())


def test_all_weak_batch_has_zero_segmentation_loss():
    logits, target, weight = _batch(2)
    assert segmentation_loss(logits, target, weight, torch.tensor([False, False])).item() == 0


def test_decision_loss():
    loss = decision_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
