"""Helpers for the service tests: a quick deterministic stand-in for the model."""

from __future__ import annotations

import threading

import numpy as np

from histoseek.embedder import ImageEmbedder
from histoseek.model.cgd import ModelConfig

IMAGE_SIZE = 32
DIM = 48
#: Long enough that every thread of a test has queued its query before the batch window
#: closes; a batch is sent as soon as it is full, so a passing test never waits this long.
WIDE_WINDOW_S = 5.0


class StubBackend:
    """A deterministic stand-in model: 8×8-pixel block means of the preprocessed image.

    Each image is embedded on its own, so a batch gives exactly the rows single images give;
    it records the size of every batch it is handed.
    """

    name = "stub (cpu)"
    dim = DIM

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(images))
        rows = []
        for image in images:
            blocks = image.reshape(3, 4, IMAGE_SIZE // 4, 4, IMAGE_SIZE // 4).mean(axis=(2, 4))
            vector = blocks.reshape(-1) - blocks.mean()
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows).astype(np.float32)


def stub_embedder(batch_size: int = 8) -> ImageEmbedder:
    """An ImageEmbedder around a fresh StubBackend."""
    return ImageEmbedder(
        backend=StubBackend(),
        config=ModelConfig(image_size=IMAGE_SIZE, dim=DIM),
        reference="builtin",
        fingerprint="stub-fingerprint",
        class_names=[],
        batch_size=batch_size,
        workers=0,
    )
