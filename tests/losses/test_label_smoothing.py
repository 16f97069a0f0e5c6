import math

import pytest
import torch

from histoseek.losses import LabelSmoothingCrossEntropy


def test_matches_hand_computed_value():
    # logits (2, 0, -1), target 0, T = 0.5 → scaled (4, 0, -2); ε = 0.1.
    log_z = math.log(math.exp(4) + math.exp(0) + math.exp(-2))
    log_p = [4 - log_z, 0 - log_z, -2 - log_z]
    expected = 0.9 * -log_p[0] + 0.1 * -sum(log_p) / 3
    assert expected == pytest.approx(0.35391, abs=1e-5)

    loss = LabelSmoothingCrossEntropy(smoothing=0.1, temperature=0.5)
    value = loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_reduces_to_cross_entropy_without_smoothing_or_temperature():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 0.0]])
    targets = torch.tensor([2, 0])
    loss = LabelSmoothingCrossEntropy(smoothing=0.0, temperature=1.0)(logits, targets)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item())


def test_averages_over_the_batch():
    loss = LabelSmoothingCrossEntropy(0.1, 0.5)
    a = loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    b = loss(torch.tensor([[0.0, 3.0]]), torch.tensor([0]))
    both = loss(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    assert both.item() == pytest.approx((a.item() + b.item()) / 2)


@pytest.mark.parametrize("smoothing, temperature", [(-0.1, 1.0), (1.0, 1.0), (0.1, 0.0)])
def test_rejects_invalid_settings(smoothing, temperature):
    with pytest.raises(ValueError):
        LabelSmoothingCrossEntropy(smoothing, temperature)
