"""The CGD training losses, one per module."""

from histoseek.losses.batch_hard_triplet import BatchHardTripletLoss
from histoseek.losses.label_smoothing import LabelSmoothingCrossEntropy

__all__ = ["BatchHardTripletLoss", "LabelSmoothingCrossEntropy"]
