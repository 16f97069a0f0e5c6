"""The one interface every embedding backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Turns a batch of preprocessed images into L2-normalised embeddings."""

    #: Short backend name shown to users, e.g. "torch (cpu)".
    name: str
    #: Embedding dimension.
    dim: int
    #: What it computes in: one of EMBEDDING_PRECISIONS.
    precision: str
    #: Batches that may run side by side, one per calling thread (1: one at a time).
    batch_threads: int

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed an NCHW float32 batch (already resized and normalised) → (N, dim) float32."""
        ...
