"""Global descriptors that pool a feature map (N, C, H, W) into one vector per image (N, C)."""

from __future__ import annotations

import torch
from torch import nn

from histoseek.errors import HistoseekError


class SPoC(nn.Module):
    """Sum-pooling of convolutions: the spatial mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class MAC(nn.Module):
    """Maximum activation of convolutions: the spatial max."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


class GeM(nn.Module):
    """Generalised mean pooling, (mean x^p)^(1/p); p = 3 as in CGD."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Clamping keeps the fractional power real-valued and its gradient finite; it is run
        # in float32 even under autocast because x^3 overflows float16 for large activations.
        with torch.autocast(device_type=x.device.type, enabled=False):
            pooled = x.float().clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
            return pooled.pow(1.0 / self.p)


DESCRIPTORS = {"S": SPoC, "M": MAC, "G": GeM}


def parse_gd_config(gd_config: str) -> str:
    """Validate a gd-config string such as 'SMG': letters S, M, G, each at most once."""
    config = gd_config.upper()
    if not config or any(c not in DESCRIPTORS for c in config) or len(set(config)) != len(config):
        raise HistoseekError(
            f"invalid gd-config {gd_config!r}: use each of S (SPoC), M (MAC), G (GeM) at most "
            "once, e.g. SMG, SG or MG"
        )
    return config


def build_descriptor(letter: str) -> nn.Module:
    """The descriptor module for one gd-config letter."""
    return DESCRIPTORS[letter]()
