import pytest
import torch

from histoseek.losses import BatchHardTripletLoss


def _points(*xs: float) -> torch.Tensor:
    return torch.tensor([[x, 0.0] for x in xs])


def test_matches_hand_computed_value():
    # Points on a line: a=0, b=1 (class 0); c=1.5, d=4 (class 1); margin 0.5.
    # a: pos 1,   neg 1.5 → 0      b: pos 1,   neg 0.5 → 1.0
    # c: pos 2.5, neg 0.5 → 2.5    d: pos 2.5, neg 3   → 0     mean 0.875
    loss = BatchHardTripletLoss(margin=0.5)
    value = loss(_points(0, 1, 1.5, 4), torch.tensor([0, 0, 1, 1]))
    assert value.item() == pytest.approx(0.875, abs=1e-6)


def test_anchor_without_positive_is_left_out():
    loss = BatchHardTripletLoss(margin=0.5)
    # e = 10 is alone in class 2: no triplet for it, and it is too far to be anyone's negative.
    value = loss(_points(0, 1, 1.5, 4, 10), torch.tensor([0, 0, 1, 1, 2]))
    assert value.item() == pytest.approx(0.875, abs=1e-6)


def test_zero_when_classes_are_separated_by_more_than_the_margin():
    loss = BatchHardTripletLoss(margin=0.1)
    assert loss(_points(0, 0.1, 5, 5.1), torch.tensor([0, 0, 1, 1])).item() == 0.0


def test_gradient_is_finite_for_identical_embeddings():
    embeddings = torch.ones(4, 3, requires_grad=True)
    loss = BatchHardTripletLoss(0.1)(embeddings, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert loss.item() == pytest.approx(0.1)


def test_batch_with_one_class_gives_zero_and_keeps_graph():
    embeddings = torch.randn(3, 2, requires_grad=True)
    loss = BatchHardTripletLoss(0.1)(embeddings, torch.tensor([1, 1, 1]))
    loss.backward()
    assert loss.item() == 0.0
