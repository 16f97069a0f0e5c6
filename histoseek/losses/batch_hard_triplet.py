"""Batch-hard triplet loss (Hermans et al. 2017), CGD's ranking loss."""

from __future__ import annotations

import torch
from torch import nn


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all rows, with a finite gradient at zero distance."""
    squared = embeddings.pow(2).sum(dim=1)
    gram = embeddings @ embeddings.T
    dist2 = (squared.unsqueeze(0) + squared.unsqueeze(1) - 2.0 * gram).clamp(min=0.0)
    # sqrt'(0) is infinite; adding eps only where the distance is zero keeps gradients finite.
    zero = dist2 == 0
    return (dist2 + zero.float() * 1e-16).sqrt() * (~zero).float()


class BatchHardTripletLoss(nn.Module):
    """For each anchor: relu(d(hardest positive) − d(hardest negative) + margin), averaged.

    Anchors without any positive or negative in the batch have no triplet and are left out.
    """

    def __init__(self, margin: float = 0.1):
        super().__init__()
        if margin < 0:
            raise ValueError("margin must be non-negative")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distances(embeddings.float())
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive_mask = same & ~eye
        negative_mask = ~same
        hardest_positive = dist.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
        hardest_negative = dist.masked_fill(~negative_mask, float("inf")).amin(dim=1)
        valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
        if not valid.any():
            return embeddings.sum() * 0.0
        losses = torch.relu(hardest_positive - hardest_negative + self.margin)
        return losses[valid].mean()
