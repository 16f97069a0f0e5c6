"""Embedding image sources (files or slide tiles): parallel decoding and batched inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histoseek.callbacks import Progress
from histoseek.data.dataset import ImageDataset, make_loader
from histoseek.data.sources import ImageSource
from histoseek.data.transforms import EvalTransform
from histoseek.inference.base import Embedder
from histoseek.model.cgd import ModelConfig


@dataclass
class EmbeddedFiles:
    """Embeddings of the readable sources (in input order) and the indices of unreadable ones."""

    embeddings: np.ndarray
    indices: np.ndarray
    failed: list[int]


def decoding_workers(count: int, batch_size: int, workers: int) -> int:
    """Worker processes worth starting for `count` images: none for a single batch."""
    return workers if count > batch_size else 0


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and 90° rotations of an NCHW batch of square images, the identity first."""
    views = []
    for flipped in (images, images[..., ::-1]):
        for quarter_turns in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, quarter_turns, axes=(2, 3))))
    return views


def embed_batch_tta(embedder: Embedder, images: np.ndarray) -> np.ndarray:
    """The mean of the embeddings of the 8 dihedral views of each image, renormalised.

    Tissue has no orientation, so averaging over the views removes the little orientation the
    embedding still carries. Each view is its own call, so batches stay the size asked for.
    """
    total = np.zeros((len(images), embedder.dim), np.float64)
    for view in dihedral_views(images):
        total += embedder.embed_batch(view)
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def embed_files(
    embedder: Embedder,
    config: ModelConfig,
    sources: Sequence[ImageSource],
    batch_size: int = 32,
    workers: int = 0,
    progress: Progress | None = None,
    tta: bool = False,
) -> EmbeddedFiles:
    """Embed image files or slide tiles with the model's test-time preprocessing; unreadable
    sources are skipped and listed by index. Each worker decodes (and opens slides) itself.

    `tta` embeds each image as the renormalised mean over its 8 flips and rotations (8× the
    work).
    """
    transform = EvalTransform(config.image_size, config.mean, config.std)
    # Large JPEGs decode straight to about the model's size; the transform resizes the rest.
    dataset = ImageDataset(sources, [0] * len(sources), transform, decode_size=config.image_size)
    loader = make_loader(
        dataset, workers=decoding_workers(len(sources), batch_size, workers), batch_size=batch_size
    )
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    failed: list[int] = []
    done = 0
    for batch in loader:
        failed.extend(batch.failed)
        if len(batch.indices):
            images = batch.images.numpy()
            embedded = embed_batch_tta(embedder, images) if tta else embedder.embed_batch(images)
            chunks.append(embedded.astype(np.float32))
            indices.append(batch.indices.numpy())
        done += len(batch.indices) + len(batch.failed)
        if progress is not None:
            progress(done, len(sources))
    if chunks:
        return EmbeddedFiles(np.concatenate(chunks), np.concatenate(indices), sorted(failed))
    return EmbeddedFiles(
        np.zeros((0, embedder.dim), np.float32), np.zeros(0, np.int64), sorted(failed)
    )
