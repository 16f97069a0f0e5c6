"""A moving average of the weights, which validation scores and model.pt keeps when asked for."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The weights (and BatchNorm statistics) averaged exponentially over about
    `horizon_steps` optimiser steps; until that many steps have passed, their plain mean.

    The plain mean at first keeps the random start of the new layers from lingering in the
    average, as a fixed decay from step 1 would.
    """

    def __init__(self, model: nn.Module, horizon_steps: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.horizon_steps = horizon_steps

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in `model`'s weights after optimiser step `step` (1 for the first)."""
        share = 1.0 / max(1.0, min(step, self.horizon_steps))
        averages, currents = self.model.state_dict().values(), model.state_dict().values()
        for average, current in zip(averages, currents, strict=True):
            if average.is_floating_point():
                average.lerp_(current, share)
            else:  # counters such as BatchNorm's num_batches_tracked
                average.copy_(current)
