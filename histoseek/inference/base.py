"""The one interface every embedding backend implements, and the check of what they give."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from histoseek.errors import HistoseekError

#: How far from 1 an embedding's length may be: float32 rounding, not a different vector.
UNIT_LENGTH_TOLERANCE = 1e-3


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


def checked_embeddings(
    embeddings: np.ndarray, count: int, dim: int, model: str, remedy: str
) -> np.ndarray:
    """A backend's output for `count` images as float32, refused unless it is `count` rows of
    `dim` finite numbers, each of unit length; the error blames `model` and ends in `remedy`.

    Every backend passes its output through here: an export that computes something else than
    the model its metadata describes would otherwise rank by wrong similarities, or fail later
    with a traceback or a misleading message.
    """
    shape = np.shape(embeddings)
    if shape != (count, dim):
        wanted = f"({count}, {dim})"
        problem = f"gives an array of shape {shape} for {count} image(s), not {wanted}"
    elif not np.isfinite(embeddings).all():
        problem = "embeds an image as numbers that are not finite (NaN or infinite)"
    else:
        lengths = np.linalg.norm(np.asarray(embeddings, np.float64), axis=1)
        off = np.abs(lengths - 1.0) > UNIT_LENGTH_TOLERANCE
        if not off.any():
            return np.asarray(embeddings, np.float32)
        length = lengths[int(np.argmax(off))]
        problem = f"embeds an image as a vector of length {length:.4g}, not of unit length"
    raise HistoseekError(f"{model} {problem}; {remedy}")
