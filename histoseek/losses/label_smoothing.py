"""Label-smoothing cross-entropy on temperature-scaled logits (CGD's auxiliary loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelSmoothingCrossEntropy(nn.Module):
    """(1 - ε)·NLL(target) + ε·mean over classes of −log p, with p = softmax(logits / T)."""

    def __init__(self, smoothing: float = 0.1, temperature: float = 0.5):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError("label smoothing must be in [0, 1)")
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.smoothing = smoothing
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float() / self.temperature, targets, label_smoothing=self.smoothing
        )
