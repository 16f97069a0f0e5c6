"""Embedding a list of image files: parallel decoding, batched inference, a progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.data.dataset import ImageDataset, make_loader
from histoseek.data.transforms import EvalTransform
from histoseek.inference.base import Embedder
from histoseek.model.cgd import ModelConfig
from histoseek.report.progress import image_progress


@dataclass
class EmbeddedFiles:
    """Embeddings of the readable files (in input order) and the indices that could not be read."""

    embeddings: np.ndarray
    indices: np.ndarray
    failed: list[int]


def embed_files(
    embedder: Embedder,
    config: ModelConfig,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    description: str = "embedding",
) -> EmbeddedFiles:
    """Embed image files with the model's test-time preprocessing; unreadable files are skipped."""
    transform = EvalTransform(config.image_size, config.mean, config.std)
    dataset = ImageDataset(paths, [0] * len(paths), transform)
    loader = make_loader(dataset, workers=workers, batch_size=batch_size)
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    failed: list[int] = []
    with image_progress(progress, description, len(paths)) as advance:
        for batch in loader:
            failed.extend(batch.failed)
            if len(batch.indices):
                chunks.append(embedder.embed_batch(batch.images.numpy()).astype(np.float32))
                indices.append(batch.indices.numpy())
            advance(len(batch.indices) + len(batch.failed))
    if chunks:
        return EmbeddedFiles(np.concatenate(chunks), np.concatenate(indices), sorted(failed))
    return EmbeddedFiles(
        np.zeros((0, embedder.dim), np.float32), np.zeros(0, np.int64), sorted(failed)
    )
