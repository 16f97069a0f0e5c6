import numpy as np
import pytest

from histoseek.metrics import (
    Neighbours,
    exact_neighbours,
    majority_label,
    retrieval_metrics,
    selection_score,
)


def _unit(*angles_deg: float) -> np.ndarray:
    radians = np.deg2rad(angles_deg)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_exact_neighbours_rank_by_cosine():
    gallery = _unit(0, 10, 50, 90)
    result = exact_neighbours(_unit(12), gallery, k=3)
    assert result.indices.tolist() == [[1, 0, 2]]
    assert result.similarities[0, 0] == pytest.approx(np.cos(np.deg2rad(2)), abs=1e-6)


def test_leave_one_out_and_group_exclusion():
    gallery = _unit(0, 1, 2, 90)
    loo = exact_neighbours(gallery, gallery, k=2, exclude_self=True)
    assert loo.indices[0].tolist() == [1, 2]
    groups = ["s1", "s1", "s2", "s3"]
    grouped = exact_neighbours(
        gallery, gallery, k=2, exclude_self=True, query_groups=groups, gallery_groups=groups
    )
    assert grouped.indices[0].tolist() == [2, 3]


def test_k_is_cut_so_that_no_left_out_item_fills_a_place():
    # Items 0-3 (class 0) share group s1, so a query among them has only 3 others to find.
    gallery = _unit(0, 1, 2, 3, 50, 10, 11)
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    groups = ["s1", "s1", "s1", "s1", "s3", "s2", "s2"]
    found = exact_neighbours(
        gallery, gallery, k=5, exclude_self=True, query_groups=groups, gallery_groups=groups
    )
    assert found.indices.shape == (7, 3)
    assert found.indices[0].tolist() == [5, 6, 4]
    # Its one same-class item outside s1 comes third: AP@5 = P@3 / min(5, 1) = 1/3 (counting
    # the left-out class-0 items that used to fill places 4 and 5, it was 1.43).
    metrics = retrieval_metrics(found.subset([0]), labels[:1], labels, relevant_counts=[1])
    assert metrics["map@5"] == pytest.approx(1 / 3)
    assert metrics["mmv@5"] == 0.0


def test_a_ranking_cut_short_cuts_the_ap_denominator_and_precision_depth():
    # s1 (five class-0 items) is the largest group: every query ranks only 9 - 5 = 4 items.
    # Query 5 (class 0, alone in s2) has R = 5 relevant items, all in s1.
    gallery = _unit(10, 11, 12, 13, 14, 0, 11.5, 90, 91)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    groups = ["s1"] * 5 + ["s2", "s3", "s4", "s5"]
    found = exact_neighbours(gallery, gallery, k=10, query_groups=groups, gallery_groups=groups)
    assert found.indices.shape == (9, 4)
    assert found.indices[5].tolist() == [0, 1, 6, 2]  # hit, hit, miss, hit
    metrics = retrieval_metrics(found.subset([5]), labels[5:6], labels, relevant_counts=[5])
    # AP@5 = (P@1 + P@2 + P@4) / min(4 ranked, 5, R = 5) = (1 + 1 + 3/4) / 4; dividing by
    # min(5, R) = 5 capped it at 0.8 even for a perfect ranking.
    assert metrics["map@5"] == pytest.approx(2.75 / 4)
    # precision@10 over the 4 ranked: 3 hits.
    assert metrics["precision@10"] == pytest.approx(3 / 4)


def test_ties_at_the_kth_place_go_to_the_lowest_index():
    # Items 2 and 3 tie at the top, items 0 and 1 tie for the third place.
    gallery = _unit(10, 10, 0, 0)
    assert exact_neighbours(_unit(0), gallery, k=3).indices.tolist() == [[2, 3, 0]]
    rng = np.random.default_rng(0)
    levels = _unit(*(rng.integers(0, 3, size=200) * 10.0))  # 3 distinct similarities
    found = exact_neighbours(levels[:20], levels, k=50)
    for query, row in zip(levels[:20], found.indices, strict=True):
        similarities = levels @ query
        expected = np.lexsort((np.arange(len(levels)), -similarities))[:50]
        assert row.tolist() == expected.tolist()


def test_chunking_gives_the_same_answer(monkeypatch):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    whole = exact_neighbours(gallery, gallery, k=5, exclude_self=True)
    monkeypatch.setattr("histoseek.metrics._MAX_BLOCK_ELEMENTS", 60)  # one query per chunk
    chunked = exact_neighbours(gallery, gallery, k=5, exclude_self=True)
    assert np.array_equal(whole.indices, chunked.indices)


def test_metrics_match_hand_computed_values():
    # Two queries of class 0; the gallery holds three class-0 items (0, 1, 2) and others.
    gallery_labels = [0, 0, 0, 1, 1, 2]
    neighbours = Neighbours(
        indices=np.array([[3, 0, 4, 1, 5], [0, 1, 3, 4, 5]]),
        similarities=np.zeros((2, 5), np.float32),
    )
    metrics = retrieval_metrics(
        neighbours, [0, 0], gallery_labels, recall_ks=(1, 2), map_k=5, vote_k=5, precision_k=5
    )
    # Query 1 ranks: miss, hit, miss, hit, miss; query 2: hit, hit, miss, miss, miss.
    assert metrics["recall@1"] == 0.5
    assert metrics["recall@2"] == 1.0
    ap1 = (1 / 2 + 2 / 4) / 3  # P@2·1 + P@4·1 over min(5, R=3)
    ap2 = (1 / 1 + 2 / 2) / 3
    assert metrics["map@5"] == pytest.approx((ap1 + ap2) / 2)
    # Votes: query 1 sees {1: 2, 0: 2, 2: 1}, a tie that the higher-ranked label (1) wins.
    assert metrics["mmv@5"] == 0.5
    assert metrics["precision@5"] == pytest.approx((2 / 5 + 2 / 5) / 2)


def test_relevant_counts_change_the_ap_denominator():
    neighbours = Neighbours(np.array([[0, 1]]), np.zeros((1, 2), np.float32))
    metrics = retrieval_metrics(
        neighbours,
        [0],
        [0, 1, 0],
        recall_ks=(1,),
        map_k=2,
        vote_k=1,
        precision_k=2,
        relevant_counts=[1],
    )
    assert metrics["map@2"] == 1.0


def test_majority_label_breaks_ties_by_rank():
    assert majority_label(["b", "a", "a", "b"]) == ("b", 2)
    assert majority_label(["c", "a", "a"]) == ("a", 2)


def test_neighbours_subset_keeps_the_selected_queries():
    gallery = _unit(0, 10, 50, 90)
    found = exact_neighbours(_unit(12, 88, 45), gallery, k=2)
    kept = found.subset(np.array([True, False, True]))
    assert kept.indices.tolist() == [found.indices[0].tolist(), found.indices[2].tolist()]
    assert np.array_equal(kept.similarities, found.similarities[[0, 2]])


def test_ranking_metrics_first_answer_and_majority_of_the_top_k():
    from histoseek.metrics import ranking_metrics

    rankings = [
        ["a", "b", "b", "a", "a"],  # first right, majority a (3/5): right
        ["b", "a", "a", "a", "b"],  # first wrong, majority a: right
        ["b", "b", "a"],  # both wrong
        [],  # no answer: a miss
    ]
    metrics = ranking_metrics(rankings, ["a", "a", "a", "a"], vote_k=5)
    assert metrics == {"recall@1": 0.25, "mmv@5": 0.5}
    assert ranking_metrics([["b", "a", "a"]], ["a"], vote_k=1) == {"recall@1": 0.0, "mmv@1": 0.0}


def test_selection_score_is_the_mean_of_recall_at_1_and_majority_vote_at_5():
    assert selection_score({"recall@1": 0.8, "mmv@5": 0.9, "map@5": 0.1}) == pytest.approx(0.85)


def test_copies_of_one_image_get_one_similarity_and_rank_by_index():
    # In float32 the copy in BLAS's tail block summed in another order: a few units apart in
    # the last place, so either copy could come first (R@1 depended on the gallery's size).
    rng = np.random.default_rng(0)
    for size in (3, 5, 9, 17):
        for _ in range(20):
            gallery = rng.standard_normal((size, 1536)).astype(np.float32)
            gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
            gallery[-1] = gallery[0]
            found = exact_neighbours(gallery[:1], gallery, size)
            assert list(found.indices[0][:2]) == [0, size - 1]
            assert found.similarities[0][0] == found.similarities[0][1]
