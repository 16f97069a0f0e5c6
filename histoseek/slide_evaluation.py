"""Retrieval quality on a folder of slides: tile-level and slide-level, one slide or patient out.

Every slide queries with a spread-out sample of its tissue tiles, as `histoseek query` does,
against the tiles of all the other slides: the query's own slide (or its whole group, the
patient) is left out. Tile-level metrics score each query tile's nearest tiles; slide-level
metrics score the slides ranked from those tiles' hits (histoseek.index.ranking).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.index.build import build_index
from histoseek.index.ranking import rank_keys, tile_hits
from histoseek.index.slides import TilingOptions
from histoseek.index.store import OpenIndex, load_index
from histoseek.metrics import Neighbours, exact_neighbours, ranking_metrics, retrieval_metrics
from histoseek.metrics_defaults import (
    DEFAULT_MAP_K,
    DEFAULT_PRECISION_K,
    DEFAULT_RECALL_KS,
    DEFAULT_VOTE_K,
)
from histoseek.slide.defaults import (
    AGGREGATION_RULES,
    DEFAULT_MAX_TILES,
    DEFAULT_TILE_K,
    EXCLUDE_CHOICES,
)
from histoseek.slide.tiling import Tile, spread_sample

if TYPE_CHECKING:
    from histoseek.embedder import ImageEmbedder


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
    labels = sorted(set(tiles.labels))
    if len(labels) < 2:
        raise HistoseekError(
            f"every slide has one label ({display_path(labels[0])}): every neighbour shares "
            "the query's label, so every metric would be 1.0; evaluate needs at least 2 labels"
        )
    rows = np.array([row for slide in slides for row in tiles.query_rows[slide]], dtype=np.int64)
    query_keys = [keys[row] for row in rows]
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


def slide_tiles_of_index(index: OpenIndex, max_tiles: int = DEFAULT_MAX_TILES) -> SlideTiles:
    """The slide tiles of an index (plain images left out), each slide querying with a
    spread-out sample of at most `max_tiles` of its tiles, as a whole-slide query does."""
    rows = [row for row, item in enumerate(index.items) if item.is_tile]
    if not rows:
        raise HistoseekError(f"{display_path(index.manifest.source_dir)} holds no slide tiles")
    items = [index.items[row] for row in rows]
    by_slide: dict[str, dict[Tile, int]] = {}
    for position, item in enumerate(items):
        by_slide.setdefault(item.slide_id, {})[item.tile()] = position
    query_rows = {
        slide: [tiles[tile] for tile in spread_sample(list(tiles), max_tiles)]
        for slide, tiles in by_slide.items()
    }
    return SlideTiles(
        np.asarray(index.vectors.embeddings[rows], dtype=np.float32),
        [item.slide_id for item in items],
        [item.group for item in items],
        [item.label for item in items],
        query_rows,
    )


@dataclass
class SlideEvaluation:
    """Tile-level and slide-level metrics of a folder of slides, and what they were measured on."""

    tile_scores: Scores
    slide_scores: Scores
    slides: int
    tiles: int
    query_tiles: int
    protocol: str
    skipped: list[str]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "tile_metrics": self.tile_scores.metrics,
            "slide_metrics": self.slide_scores.metrics,
            "slides": self.slides,
            "tiles": self.tiles,
            "query_tiles": self.query_tiles,
            "query_tiles_left_out": self.tile_scores.left_out,
            "query_slides_left_out": self.slide_scores.left_out,
            "protocol": self.protocol,
            "skipped_unreadable": self.skipped,
        }


def score_slide_tiles(
    tiles: SlideTiles,
    exclude: str = EXCLUDE_CHOICES[0],
    tile_k: int = DEFAULT_TILE_K,
    rule: str = AGGREGATION_RULES[0],
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
) -> tuple[Scores, Scores, int]:
    """(tile-level, slide-level) scores of every slide queried with its own slide or group
    left out, and how many neighbours each query tile had (k, unless leaving out the largest
    slide or group leaves fewer tiles)."""
    found = left_out_neighbours(tiles, exclude, max(*recall_ks, map_k, vote_k, precision_k, tile_k))
    tile_scores = tile_level_scores(tiles, found, recall_ks, map_k, vote_k, precision_k)
    places = found.neighbours.indices.shape[1]
    return tile_scores, slide_level_scores(tiles, found, tile_k, vote_k, rule), places


def slide_protocol(exclude: str, max_tiles: int, tile_k: int, places: int, widest_k: int) -> str:
    """How the slides were scored, in words; says so when leaving the largest slide or group
    out left each query tile fewer than `widest_k` (the largest k asked for) neighbours."""
    left_out = "slide" if exclude == "same-slide" else "group (patient)"
    protocol = (
        f"each slide queries with up to {max_tiles} of its tiles, its own {left_out} left "
        f"out; slides ranked from each query tile's {min(tile_k, places)} nearest tiles (sum "
        "of best similarities)"
    )
    if places < widest_k:
        protocol += (
            f"; {places} neighbours per query tile, as many as the largest {left_out} "
            f"leaves: metrics @k above {places} are taken over those {places}"
        )
    return protocol


def evaluate_slides(
    embedder: ImageEmbedder,
    gallery_dir: Path,
    tiling: TilingOptions,
    group_regex: str | None = None,
    labels_csv: Path | None = None,
    exclude: str = EXCLUDE_CHOICES[0],
    max_tiles: int = DEFAULT_MAX_TILES,
    tile_k: int = DEFAULT_TILE_K,
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
    progress: Progress | None = None,
    tissue_progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> SlideEvaluation:
    """Tile and embed every slide below `gallery_dir` as `histoseek index` does (into a
    temporary index), then score each slide against the others, its own slide or group
    (`exclude`) left out: its query tiles' nearest tiles, and the slides ranked from them."""
    with tempfile.TemporaryDirectory(prefix="histoseek-evaluate-") as scratch:
        report = build_index(
            gallery_dir,
            Path(scratch) / "index",
            embedder,
            trees=1,
            tiling=tiling,
            group_regex=group_regex,
            labels_csv=labels_csv,
            progress=progress,
            tissue_progress=tissue_progress,
            notify=notify,
        )
        index = load_index(report.index_dir, in_memory=True)
        images = sum(not item.is_tile for item in index.items)
        if images:
            notify(f"note: {images} plain image(s) beside the slides are left out")
        tiles = slide_tiles_of_index(index, max_tiles)
    tile_scores, slide_scores, places = score_slide_tiles(
        tiles, exclude, tile_k, AGGREGATION_RULES[0], recall_ks, map_k, vote_k, precision_k
    )
    widest_k = max(*recall_ks, map_k, vote_k, precision_k, tile_k)
    return SlideEvaluation(
        tile_scores,
        slide_scores,
        len(tiles.query_rows),
        len(tiles.slide_ids),
        sum(len(rows) for rows in tiles.query_rows.values()),
        slide_protocol(exclude, max_tiles, tile_k, places, widest_k),
        [display_path(entry.path) for entry in report.skipped],
    )
