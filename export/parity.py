"""Parity checks: an exported model must give the same embeddings as the PyTorch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.data.folder import list_images
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.data.synth import TISSUE_CLASSES, render_tissue
from histoseek.data.transforms import EvalTransform
from histoseek.errors import HistoseekError
from histoseek.inference.base import Embedder
from histoseek.model.cgd import ModelConfig

PARITY_IMAGES = 64
PARITY_BATCH = 16
NEIGHBOURS = 10
ONNX_MIN_COSINE = 0.9999
ENGINE_MIN_COSINE = 0.999
ENGINE_MIN_OVERLAP = 0.9
INT8_MIN_COSINE = 0.99
INT8_MIN_OVERLAP = 0.95


@dataclass(frozen=True)
class ParityResult:
    """How closely a backend's embeddings match the reference's on the same images."""

    backend: str
    images: int
    min_cosine: float
    mean_cosine: float
    neighbour_overlap: float
    min_cosine_required: float
    min_overlap_required: float | None

    @property
    def passed(self) -> bool:
        """Every embedding is close enough, and so are the neighbour lists where required."""
        overlap_ok = (
            self.min_overlap_required is None or self.neighbour_overlap >= self.min_overlap_required
        )
        return self.min_cosine >= self.min_cosine_required and overlap_ok

    def summary(self) -> str:
        """One line: the figures, the thresholds, and PASS or FAIL."""
        overlap_rule = (
            f" (≥ {self.min_overlap_required})" if self.min_overlap_required is not None else ""
        )
        return (
            f"parity {self.backend} vs torch fp32 on {self.images} images: cosine min "
            f"{self.min_cosine:.6f} (≥ {self.min_cosine_required}), mean {self.mean_cosine:.6f}; "
            f"top-{NEIGHBOURS} neighbour overlap {self.neighbour_overlap:.3f}{overlap_rule}: "
            f"{'PASS' if self.passed else 'FAIL'}"
        )


def parity_images(
    config: ModelConfig, folder: Path | None = None, count: int = PARITY_IMAGES, seed: int = 0
) -> np.ndarray:
    """An NCHW batch preprocessed for `config`: up to `count` images spread over `folder`'s
    sorted files, or synthetic H&E-like patches of every tissue class when no folder is given."""
    transform = EvalTransform(config.image_size, config.mean, config.std)
    if folder is None:
        rng = np.random.default_rng(seed)
        size = (config.image_size, config.image_size)
        images = [
            render_tissue(TISSUE_CLASSES[i % len(TISSUE_CLASSES)], size, rng) for i in range(count)
        ]
    else:
        images = []
        for path in parity_paths(folder, count):
            try:
                images.append(load_rgb(path))
            except UnreadableImageError:
                continue
    if len(images) < 2:
        raise HistoseekError(f"parity needs at least 2 readable images in {folder}")
    return np.stack([transform(image) for image in images])


def parity_paths(folder: Path, count: int = PARITY_IMAGES) -> list[Path]:
    """The files of `folder` that the parity check reads: up to `count`, evenly spaced over its
    sorted files, which covers every class folder of a labelled tree."""
    paths = list_images(folder)
    if not paths:
        return []
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(count, len(paths))).astype(int))
    return [paths[index] for index in picks]


def embed_all(embedder: Embedder, images: np.ndarray) -> np.ndarray:
    """Embed a preprocessed batch in slices small enough for any backend's memory."""
    parts = [
        embedder.embed_batch(images[start : start + PARITY_BATCH])
        for start in range(0, len(images), PARITY_BATCH)
    ]
    return np.concatenate(parts).astype(np.float64)


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each image's k nearest neighbours (itself excluded) that both agree on."""
    k = min(k, len(reference) - 1)
    overlaps = []
    for embeddings in (reference, candidate):
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        overlaps.append(np.argsort(-similarity, axis=1, kind="stable")[:, :k])
    shared = [len(set(a) & set(b)) for a, b in zip(*overlaps, strict=True)]
    return float(np.mean(shared)) / k


def compare(
    backend: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    min_cosine: float,
    min_overlap: float | None = None,
) -> ParityResult:
    """Per-embedding cosine similarity and neighbour overlap between two embedding sets."""
    if reference.shape != candidate.shape:
        raise HistoseekError(
            f"{backend} gives embeddings of shape {candidate.shape}, torch {reference.shape}"
        )
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosines = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return ParityResult(
        backend=backend,
        images=len(reference),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        neighbour_overlap=neighbour_overlap(reference, candidate),
        min_cosine_required=min_cosine,
        min_overlap_required=min_overlap,
    )
