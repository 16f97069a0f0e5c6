"""Ranking query vectors against an index: Annoy and exact search, and leaving items out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoseek.errors import HistoseekError
from histoseek.index.annoy_index import VectorIndex, build_annoy
from histoseek.index.items import IndexItem
from histoseek.index.manifest import Manifest
from histoseek.index.search import OpenIndex, nearest_items

TREES = 10


@pytest.fixture
def vector_index(tmp_path: Path) -> OpenIndex:
    """60 random unit vectors in 8 dimensions, indexed as `histoseek index` does."""
    vectors = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_annoy(vectors, TREES, 0, tmp_path / "annoy.ann")
    items = [IndexItem(f"{i}.png", "x", 1, 1, 1, 0) for i in range(len(vectors))]
    manifest = Manifest(str(tmp_path), "builtin", "f", {}, "torch", 8, TREES, 0, 60, 0)
    return OpenIndex(tmp_path, manifest, items, VectorIndex(tmp_path / "annoy.ann", vectors))


@pytest.mark.parametrize("exact", [False, True])
def test_each_vector_finds_itself_first(vector_index, exact):
    queries = vector_index.vectors.embeddings[:3]
    for row, (ids, similarities) in enumerate(nearest_items(vector_index, queries, 5, None, exact)):
        assert len(ids) == len(similarities) == 5
        assert ids[0] == row
        assert similarities[0] == pytest.approx(1.0, abs=1e-5)
        assert list(similarities) == sorted(similarities, reverse=True)


@pytest.mark.parametrize("exact", [False, True])
def test_excluded_items_are_left_out_and_k_is_kept(vector_index, exact):
    queries = vector_index.vectors.embeddings[:3]
    full = nearest_items(vector_index, queries, 6, 10_000, exact)
    kept = nearest_items(vector_index, queries, 5, 10_000, exact, exclude=[{0}, {1}, set()])
    for row in range(2):
        assert list(kept[row][0]) == list(full[row][0][1:])
        np.testing.assert_allclose(kept[row][1], full[row][1][1:])
    assert list(kept[2][0]) == list(full[2][0][:5])


def test_k_below_one_is_refused(vector_index):
    with pytest.raises(HistoseekError, match="1 or more"):
        nearest_items(vector_index, vector_index.vectors.embeddings[:1], 0)
