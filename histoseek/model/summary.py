"""Parameter and FLOP counts of a CGD model, as `histoseek info` reports them."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from histoseek.model.cgd import CGD


@dataclass(frozen=True)
class ModelSummary:
    """Size and cost of a model at one input size."""

    parameters: int
    flops: float
    input_size: int


def summarize(model: CGD, input_size: int = 224) -> ModelSummary:
    """Count parameters and thop FLOPs (multiply-accumulates, as thop and the CGD paper count)."""
    from thop import profile

    parameters = sum(p.numel() for p in model.parameters())
    # thop attaches counters to every module it visits, so it works on a throwaway copy.
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        flops, _ = profile(
            probe, inputs=(torch.zeros(1, 3, input_size, input_size),), verbose=False
        )
    return ModelSummary(parameters, float(flops), input_size)
