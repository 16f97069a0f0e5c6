"""Leave-one-slide/patient-out evaluation on hand-made tile embeddings.

Patient P1 has a tumour slide and a normal slide that share a strong staining direction (a
patient effect), so with only the query's own slide left out each of them finds the other
first; leaving the whole patient out removes that shortcut.
"""

from __future__ import annotations

import numpy as np
import pytest

from histoseek.errors import HistoseekError
from histoseek.slide_evaluation import (
    SlideTiles,
    left_out_neighbours,
    slide_level_scores,
    slide_rankings,
    tile_level_scores,
)

E = np.eye(6)
SLIDES = {  # slide: (label, group, direction)
    "s1": ("tumour", "P1", E[0] + 2 * E[2]),
    "s2": ("normal", "P1", E[1] + 2 * E[2]),
    "s3": ("tumour", "P2", E[0]),
    "s4": ("normal", "P3", E[1]),
    "s5": ("lymph", "P4", E[4]),  # the only slide of its label: never scorable
}


def slide_tiles(query_all: bool = True) -> SlideTiles:
    vectors, slide_ids, groups, labels, rows = [], [], [], [], {}
    for slide, (label, group, direction) in SLIDES.items():
        rows[slide] = []
        for sign in (1, -1):  # two near-identical tiles per slide
            vector = direction + sign * 0.01 * E[3]
            rows[slide].append(len(vectors))
            vectors.append(vector / np.linalg.norm(vector))
            slide_ids.append(slide)
            groups.append(group)
            labels.append(label)
        if not query_all:
            rows[slide] = rows[slide][:1]
    return SlideTiles(np.array(vectors, np.float32), slide_ids, groups, labels, rows)


def test_same_slide_left_out_the_patient_effect_misleads():
    tiles = slide_tiles()
    found = left_out_neighbours(tiles, "same-slide", k=10)
    assert found.neighbours.indices.shape == (10, 8)  # 10 tiles, 2 of one's own slide left out
    rankings = slide_rankings(tiles, found, tile_k=8)
    assert rankings["s1"][:2] == ["normal", "tumour"]  # s2 (0.8 per tile), then s3 (0.447)
    assert rankings["s3"][0] == "tumour"
    scores = slide_level_scores(tiles, found, tile_k=8, vote_k=1)
    assert scores.metrics == {"recall@1": 0.5, "mmv@1": 0.5}
    assert (scores.scored, scores.left_out) == (4, 1)
    tile_scores = tile_level_scores(tiles, found, recall_ks=(1,), map_k=1, vote_k=1, precision_k=1)
    assert tile_scores.metrics["recall@1"] == 0.5
    assert (tile_scores.scored, tile_scores.left_out) == (8, 2)


def test_same_group_left_out_every_slide_finds_its_label():
    tiles = slide_tiles()
    found = left_out_neighbours(tiles, "same-group", k=10)
    assert found.neighbours.indices.shape == (10, 6)  # P1 has 4 tiles
    s1_neighbours = set(found.neighbours.indices[0].tolist())
    assert not s1_neighbours & {0, 1, 2, 3}  # neither of P1's slides
    scores = slide_level_scores(tiles, found, tile_k=6, vote_k=1)
    assert scores.metrics == {"recall@1": 1.0, "mmv@1": 1.0}
    tile_scores = tile_level_scores(tiles, found, recall_ks=(1,), map_k=1, vote_k=1, precision_k=1)
    assert tile_scores.metrics["recall@1"] == 1.0


def test_a_sample_of_query_tiles_and_both_rules():
    tiles = slide_tiles(query_all=False)
    found = left_out_neighbours(tiles, "same-group", k=4)
    assert list(found.rows) == [0, 2, 4, 6, 8]
    for rule in ("similarity", "votes"):
        assert (
            slide_level_scores(tiles, found, tile_k=4, vote_k=1, rule=rule).metrics["recall@1"]
            == 1.0
        )


def test_nothing_to_compare_is_refused():
    tiles = slide_tiles()
    tiles.groups = ["P"] * len(tiles.groups)
    with pytest.raises(HistoseekError, match="at least 2 groups"):
        left_out_neighbours(tiles, "same-group", k=5)
    with pytest.raises(HistoseekError, match="--exclude"):
        left_out_neighbours(tiles, "same-label", k=5)
    lonely = slide_tiles()
    lonely.labels = [f"label of {slide}" for slide in lonely.slide_ids]
    found = left_out_neighbours(lonely, "same-slide", k=5)
    with pytest.raises(HistoseekError, match="no slide can be scored"):
        slide_level_scores(lonely, found)
    with pytest.raises(HistoseekError, match="no query tile can be scored"):
        tile_level_scores(lonely, found)
