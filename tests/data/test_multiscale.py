"""Multi-scale training: one random side per batch, drawn from the configured sizes."""

import pytest
import torch

from histoseek.data.transforms import MultiScaleResize
from histoseek.errors import HistoseekError


def test_each_batch_gets_one_of_the_sizes_and_keeps_its_content():
    resize = MultiScaleResize([48, 64, 80], seed=0)
    batch = torch.full((3, 3, 64, 64), 0.25)
    sides = set()
    for _ in range(30):
        out = resize(batch)
        assert out.shape[:2] == (3, 3) and out.shape[2] == out.shape[3]
        assert torch.allclose(out, torch.tensor(0.25))
        sides.add(out.shape[-1])
    assert sides == {48, 64, 80}


def test_the_draws_repeat_with_the_seed():
    batch = torch.zeros(1, 3, 32, 32)
    runs = [MultiScaleResize([32, 40, 48], seed=5) for _ in range(2)]
    sides = [[resize(batch).shape[-1] for _ in range(20)] for resize in runs]
    assert sides[0] == sides[1] and len(set(sides[0])) > 1


@pytest.mark.parametrize("sizes", [[], [16, 64]])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(HistoseekError, match="32 px or more"):
        MultiScaleResize(sizes)
