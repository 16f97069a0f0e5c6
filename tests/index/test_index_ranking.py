"""Aggregating tile hits into slide (or group) rankings: both rules on hand-checkable cases."""

from __future__ import annotations

import pytest

from histoseek.errors import HistoseekError
from histoseek.index.ranking import (
    TileHit,
    best_tile_hits,
    rank_keys,
    tile_hits,
)

# Gallery items 0..6: slide A holds 0, 1 and 6; slide B holds 2 and 3; slide C holds 4 and 5.
KEYS = ["A", "A", "B", "B", "C", "C", "A"]
LABELS = ["tumour", "tumour", "stroma", "stroma", "tumour", "tumour", "tumour"]
# Three query tiles. Slide A is the near-duplicate evidence (many middling hits), slide B the
# strong evidence (one excellent hit on each of two query tiles).
NEIGHBOURS = [
    ([0, 1, 6], [0.6, 0.59, 0.58]),
    ([2, 0, 1], [0.9, 0.5, 0.49]),
    ([3, 4, 6], [0.85, 0.3, 0.2]),
]


def test_similarity_rule_sums_each_query_tiles_best_hit_per_slide():
    ranking = rank_keys(tile_hits(NEIGHBOURS), KEYS.__getitem__, LABELS.__getitem__, "similarity")
    # A: 0.6 (tile 0) + 0.5 (tile 1) + 0.2 (tile 2); B: 0.9 + 0.85; C: 0.3.
    assert [entry.key for entry in ranking] == ["B", "A", "C"]
    assert [entry.score for entry in ranking] == pytest.approx([1.75, 1.3, 0.3])
    assert [entry.rank for entry in ranking] == [1, 2, 3]
    assert [entry.query_tiles for entry in ranking] == [2, 3, 1]
    assert [entry.label for entry in ranking] == ["stroma", "tumour", "tumour"]
    a_hits = ranking[1].hits
    assert [(hit.query_tile, hit.item) for hit in a_hits] == [
        (0, 0),
        (0, 1),
        (0, 6),
        (1, 0),
        (1, 1),
        (2, 6),
    ]
    assert ranking[0].best_similarity == pytest.approx(0.9)


def test_votes_rule_counts_hits_and_favours_the_near_duplicates():
    ranking = rank_keys(tile_hits(NEIGHBOURS), KEYS.__getitem__, LABELS.__getitem__, "votes")
    assert [(entry.key, entry.score) for entry in ranking] == [("A", 6), ("B", 2), ("C", 1)]


def test_groups_are_ranked_by_the_same_rule():
    groups = ["P1", "P1", "P1", "P1", "P2", "P2", "P1"]  # slides A and B are one patient
    ranking = rank_keys(tile_hits(NEIGHBOURS), groups.__getitem__, LABELS.__getitem__, "similarity")
    # P1: best of A and B per query tile: 0.6 + 0.9 + 0.85; its hits' majority is tumour (6:3).
    assert [(entry.key, round(entry.score, 6)) for entry in ranking] == [("P1", 2.35), ("P2", 0.3)]
    assert ranking[0].label == "tumour"


def test_ties_go_to_more_query_tiles_then_best_similarity_then_key():
    keys = ["A", "B", "C", "D"]
    labels = ["x", "y", "z", "w"]
    # A: 0.5 + 0.5 from two tiles; B: 1.0 from one; C and D: 0.4 each from one tile.
    neighbours = [([0, 1, 3], [0.5, 1.0, 0.4]), ([0, 2], [0.5, 0.4])]
    ranking = rank_keys(tile_hits(neighbours), keys.__getitem__, labels.__getitem__)
    assert [entry.key for entry in ranking] == ["A", "B", "C", "D"]
    assert ranking[0].score == ranking[1].score == pytest.approx(1.0)


def test_negative_similarities_add_nothing():
    ranking = rank_keys(tile_hits([([0, 1], [0.2, -0.3])]), "AB".__getitem__, "xy".__getitem__)
    assert [(entry.key, entry.score) for entry in ranking] == [("A", 0.2), ("B", 0.0)]


def test_no_hits_no_ranking_and_unknown_rules_refused():
    assert rank_keys([[], []], KEYS.__getitem__, LABELS.__getitem__) == []
    with pytest.raises(HistoseekError, match="aggregation rule"):
        rank_keys([], KEYS.__getitem__, LABELS.__getitem__, "mean")


def test_best_tile_hits_keep_each_gallery_item_once_at_its_best():
    best = best_tile_hits(tile_hits(NEIGHBOURS), 4)
    assert best == [
        TileHit(1, 2, 0.9),
        TileHit(2, 3, 0.85),
        TileHit(0, 0, 0.6),
        TileHit(0, 1, 0.59),
    ]
    assert [hit.item for hit in best_tile_hits(tile_hits(NEIGHBOURS), 100)] == [2, 3, 0, 1, 6, 4]
