"""Retrieval quality on a folder of slides: tile-level and slide-level, one slide or patient out.

Every slide queries with a spread-out sample of its tissue tiles, as `histoseek query` does,
against the tiles of all the other slides: the query's own slide (or its whole group, the
patient) is left out. Tile-level metrics score each query tile's nearest tiles; slide-level
metrics score the slides ranked from those tiles' hits (histoseek.index.ranking).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from histoseek.errors import HistoseekError
from histoseek.index.ranking import rank_keys, tile_hits
from histoseek.metrics import Neighbours, exact_neighbours, ranking_metrics, retrieval_metrics
from histoseek.metrics_defaults import (
    DEFAULT_MAP_K,
    DEFAULT_PRECISION_K,
    DEFAULT_RECALL_KS,
    DEFAULT_VOTE_K,
)
from histoseek.slide.defaults import AGGREGATION_RULES, DEFAULT_TILE_K, EXCLUDE_CHOICES


@dataclass
class SlideTiles:
    """The embedded tiles of a set of slides, and which of them each slide queries with."""

    embeddings: np.ndarray
    """(tiles, dim), L2-normalised."""
    slide_ids: list[str]
    groups: list[str]
    labels: list[str]
    query_rows: dict[str, list[int]]
    """Per slide id, the rows of its query tiles (its spread-out sample)."""

    def exclusion_keys(self, exclude: str) -> list[str]:
        """Per tile, what `exclude` compares: its slide id or its group."""
        if exclude not in EXCLUDE_CHOICES:
            raise HistoseekError(f"--exclude is {' or '.join(EXCLUDE_CHOICES)}, not {exclude!r}")
        return self.slide_ids if exclude == "same-slide" else self.groups


@dataclass
class LeftOutNeighbours:
    """Each query tile's nearest tiles among those of other slides (or groups)."""

    rows: np.ndarray
    """The query tiles' rows, slide after slide in `query_rows` order."""
    slides: list[str]
    """The query slides, in that order."""
    neighbours: Neighbours
    exclude: str


def left_out_neighbours(tiles: SlideTiles, exclude: str, k: int) -> LeftOutNeighbours:
    """The k nearest tiles (exact cosine) of every query tile, its own slide or group left out.

    k is cut to the fewest tiles any query may retrieve, so no left-out tile ever fills a place.
    """
    keys = tiles.exclusion_keys(exclude)
    slides = [slide for slide, rows in tiles.query_rows.items() if rows]
    if len(set(keys)) < 2 or not slides:
        what = "slides" if exclude == "same-slide" else "groups (patients)"
        raise HistoseekError(f"evaluating one out at a time needs tiles of at least 2 {what}")
    rows = np.array([row for slide in slides for row in tiles.query_rows[slide]], dtype=np.int64)
    query_keys = [keys[row] for row in rows]
    per_key = Counter(keys)
    k = min(k, len(keys) - max(per_key[key] for key in set(query_keys)))
    neighbours = exact_neighbours(
        tiles.embeddings[rows], tiles.embeddings, k, query_groups=query_keys, gallery_groups=keys
    )
    return LeftOutNeighbours(rows, slides, neighbours, exclude)


@dataclass
class Scores:
    """Metrics, and how many queries had nothing of their own label left to find."""

    metrics: dict[str, float]
    scored: int
    left_out: int


def tile_level_scores(
    tiles: SlideTiles,
    found: LeftOutNeighbours,
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
) -> Scores:
    """Recall@K, mAP@k, mMV@k and precision@k of the query tiles' nearest tiles."""
    keys = tiles.exclusion_keys(found.exclude)
    per_label = Counter(tiles.labels)
    per_label_key = Counter(zip(tiles.labels, keys, strict=True))
    relevant = np.array(
        [
            per_label[tiles.labels[row]] - per_label_key[(tiles.labels[row], keys[row])]
            for row in found.rows
        ]
    )
    scored = relevant > 0
    if not scored.any():
        raise HistoseekError(
            "no query tile can be scored: every tile of its label is in its own "
            f"{'slide' if found.exclude == 'same-slide' else 'group'}"
        )
    codes = {label: code for code, label in enumerate(sorted(set(tiles.labels)))}
    gallery_codes = np.array([codes[label] for label in tiles.labels])
    neighbours = found.neighbours.subset(scored)
    metrics = retrieval_metrics(
        neighbours,
        gallery_codes[found.rows[scored]],
        gallery_codes,
        recall_ks,
        map_k,
        vote_k,
        precision_k,
        relevant[scored],
    )
    return Scores(metrics, int(scored.sum()), int((~scored).sum()))


def slide_rankings(
    tiles: SlideTiles,
    found: LeftOutNeighbours,
    tile_k: int = DEFAULT_TILE_K,
    rule: str = AGGREGATION_RULES[0],
) -> dict[str, list[str]]:
    """Per query slide, the labels of the other slides ranked from its tiles' tile_k hits."""
    rankings = {}
    start = 0
    for slide in found.slides:
        count = len(tiles.query_rows[slide])
        block = slice(start, start + count)
        start += count
        hits = tile_hits(
            zip(
                found.neighbours.indices[block, :tile_k],
                found.neighbours.similarities[block, :tile_k],
                strict=True,
            )
        )
        ranking = rank_keys(hits, tiles.slide_ids.__getitem__, tiles.labels.__getitem__, rule)
        rankings[slide] = [entry.label for entry in ranking]
    return rankings


def slide_level_scores(
    tiles: SlideTiles,
    found: LeftOutNeighbours,
    tile_k: int = DEFAULT_TILE_K,
    vote_k: int = DEFAULT_VOTE_K,
    rule: str = AGGREGATION_RULES[0],
) -> Scores:
    """Slide R@1 and mMV@k of the aggregated rankings; slides with no other slide of their
    label outside their own slide or group are left out (and counted)."""
    keys = tiles.exclusion_keys(found.exclude)
    slide_label = {slide: label for slide, label in zip(tiles.slide_ids, tiles.labels, strict=True)}
    slide_key = {slide: key for slide, key in zip(tiles.slide_ids, keys, strict=True)}
    rankings = slide_rankings(tiles, found, tile_k, rule)
    scored = [
        slide
        for slide in found.slides
        if any(
            slide_label[other] == slide_label[slide] and slide_key[other] != slide_key[slide]
            for other in slide_label
        )
    ]
    if not scored:
        raise HistoseekError(
            "no slide can be scored: no slide has another of its label outside its own "
            f"{'slide' if found.exclude == 'same-slide' else 'group'}"
        )
    metrics = ranking_metrics(
        [rankings[slide] for slide in scored], [slide_label[slide] for slide in scored], vote_k
    )
    return Scores(metrics, len(scored), len(found.slides) - len(scored))
