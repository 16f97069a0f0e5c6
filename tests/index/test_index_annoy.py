"""The Annoy layer: seeded builds, cosine from angular distance, search_k, exact search."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from histoseek.index.annoy_index import VectorIndex, build_annoy, cosine_from_angular


def _unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _unit_vectors(3000, 32, seed=0)


@pytest.fixture(scope="module")
def index(vectors, tmp_path_factory) -> VectorIndex:
    path = tmp_path_factory.mktemp("annoy") / "a.ann"
    build_annoy(vectors, trees=4, seed=0, path=path)
    return VectorIndex(path, vectors)


def test_same_seed_same_file_other_seed_other_file(vectors, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_annoy(vectors, trees=4, seed=seed, path=tmp_path / name)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() != (tmp_path / "c").read_bytes()


def test_exact_search_is_brute_force_cosine(index, vectors):
    query = _unit_vectors(1, 32, seed=5)[0]
    ids, similarities = index.search_exact(query, 10)
    cosines = vectors @ query
    assert list(ids) == list(np.argsort(-cosines)[:10])
    np.testing.assert_allclose(similarities, cosines[ids], rtol=1e-5)


def test_annoy_similarities_are_cosines_and_search_k_buys_recall(index, vectors):
    queries = _unit_vectors(50, 32, seed=6)
    recalls = []
    for search_k in (10, 3000):
        hits = 0
        for query in queries:
            ids, similarities = index.search(query, 10, search_k)
            np.testing.assert_allclose(similarities, vectors[ids] @ query, atol=1e-4)
            assert list(similarities) == sorted(similarities, reverse=True)
            hits += len(set(ids) & set(index.search_exact(query, 10)[0]))
        recalls.append(hits / 500)
    assert recalls[0] < 0.9 <= recalls[1]


def test_cosine_from_angular_distance():
    np.testing.assert_allclose(
        cosine_from_angular(np.array([0.0, np.sqrt(2.0), 2.0])), [1.0, 0.0, -1.0], atol=1e-12
    )


def test_a_failed_save_is_an_oserror_with_its_errno_and_annoy_prints_nothing(
    vectors, tmp_path, capfd
):
    (tmp_path / "a.ann").mkdir()  # Annoy cannot open it for writing: "... (21)"
    with pytest.raises(OSError) as raised:
        build_annoy(vectors[:10], trees=2, seed=0, path=tmp_path / "a.ann")
    assert raised.value.errno == errno.EISDIR
    assert capfd.readouterr().err == ""


def test_an_annoy_file_that_does_not_match_its_embeddings_is_refused(vectors, tmp_path):
    path = tmp_path / "a.ann"
    build_annoy(vectors[:10], trees=2, seed=0, path=path)
    with pytest.raises(ValueError, match="cannot hold an Annoy index of 31-d vectors"):
        VectorIndex(path, vectors[:10, :31])
    with pytest.raises(ValueError, match="holds 10 items, but the embeddings have 11 rows"):
        VectorIndex(path, vectors[:11])
    with pytest.raises(ValueError, match="item 0 is not row 0 of the embeddings"):
        VectorIndex(path, vectors[10:20])


def _node_of(nodes: np.ndarray, rows: int, leaf: bool) -> int:
    """The first tree node that is a leaf (or a split node), by Annoy's rule count <= dim + 2."""
    counts = nodes[rows:, 0]
    kind = (counts <= nodes.shape[1] - 1) if leaf else (counts > nodes.shape[1] - 1)
    return rows + int(np.argmax(kind & (counts > 1)))


def _damage_split_child(nodes, rows):
    nodes[_node_of(nodes, rows, leaf=False), 1] = len(nodes) + 5


def _damage_split_cycle(nodes, rows):
    node = _node_of(nodes, rows, leaf=False)
    nodes[node, 2] = node


def _damage_split_plane(nodes, rows):
    nodes[_node_of(nodes, rows, leaf=False), 7] = np.float32(np.nan).view(np.int32)


def _damage_leaf_item(nodes, rows):
    nodes[_node_of(nodes, rows, leaf=True), 2] = rows + 7


def _damage_leaf_count(nodes, rows):
    nodes[_node_of(nodes, rows, leaf=True), 0] = -3


def _damage_item_count(nodes, rows):
    nodes[17, 0] = 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_damage_split_child, "tree node .* is damaged"),
        (_damage_split_cycle, "tree node .* is damaged"),
        (_damage_split_plane, "tree node .* is damaged"),
        (_damage_leaf_item, "tree node .* is damaged"),
        (_damage_leaf_count, "tree node .* is damaged"),
        (_damage_item_count, "item 17 is not row 17 of the embeddings"),
    ],
)
def test_damaged_tree_nodes_are_refused_before_annoy_follows_them(
    vectors, tmp_path, damage, message
):
    # Annoy trusts every id in its trees: a bad one crashes or hangs the search itself.
    path = tmp_path / "a.ann"
    build_annoy(vectors, trees=4, seed=0, path=path)
    nodes = np.fromfile(path, np.int32).reshape(-1, 3 + vectors.shape[1])
    damage(nodes, len(vectors))
    nodes.tofile(path)
    with pytest.raises(ValueError, match=message):
        VectorIndex(path, vectors)


def test_every_stored_item_vector_is_checked_not_a_sample(vectors, tmp_path):
    path = tmp_path / "a.ann"
    build_annoy(vectors, trees=2, seed=0, path=path)
    nodes = np.fromfile(path, np.int32).reshape(-1, 3 + vectors.shape[1])
    nodes[1234, 3:] = vectors[1235].view(np.int32)
    nodes.tofile(path)
    with pytest.raises(ValueError, match="item 1234 is not row 1234 of the embeddings"):
        VectorIndex(path, vectors)


@pytest.mark.parametrize("rows", [1, 2, 30, 200])
def test_small_indexes_whose_root_is_a_leaf_load(rows, tmp_path):
    vectors = _unit_vectors(rows, 32, seed=rows)
    build_annoy(vectors, trees=3, seed=0, path=tmp_path / "a.ann")
    assert len(VectorIndex(tmp_path / "a.ann", vectors)) == rows
