"""Annoy over L2-normalised embeddings: a seeded build, memory-mapped loading, and search.

For unit vectors Annoy's angular distance is d = sqrt(2 - 2 cos), so cos = 1 - d² / 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from histoseek.index.manifest import METRIC
from histoseek.metrics import exact_neighbours


def build_annoy(embeddings: np.ndarray, trees: int, seed: int, path: Path) -> None:
    """Build and save an angular Annoy index over `embeddings` (row i is item i).

    One build thread: Annoy's threads each grow trees from their own seed and append them
    in the order they finish, so only a single-threaded build gives the same file every time.
    """
    index = AnnoyIndex(embeddings.shape[1], METRIC)
    index.set_seed(seed)
    for item, vector in enumerate(embeddings):
        index.add_item(item, vector)
    index.build(trees, n_jobs=1)
    index.save(str(path))


def cosine_from_angular(distances: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors from Annoy's angular distance."""
    return 1.0 - np.square(distances) / 2.0


class VectorIndex:
    """A saved Annoy file (memory-mapped) and the embeddings it was built from."""

    def __init__(self, annoy_path: Path, embeddings: np.ndarray):
        self.embeddings = embeddings
        self.annoy = AnnoyIndex(embeddings.shape[1], METRIC)
        self.annoy.load(str(annoy_path))  # Annoy memory-maps the file: loading is instant

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, query: np.ndarray, k: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest items: (item ids, cosine similarities), best first.

        `search_k` is how many candidate items Annoy inspects (-1: Annoy's k × trees); more
        is slower and finds the true neighbours more often.
        """
        ids, distances = self.annoy.get_nns_by_vector(
            query.astype(np.float32), k, search_k=search_k, include_distances=True
        )
        return np.asarray(ids, np.int64), cosine_from_angular(np.asarray(distances, np.float64))

    def search_exact(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest items by cosine over the stored embeddings, best first."""
        found = exact_neighbours(query[None, :], self.embeddings, min(k, len(self)))
        return found.indices[0], found.similarities[0].astype(np.float64)
