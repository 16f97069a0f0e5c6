"""From tile hits to answers about whole slides or patients: the aggregation rules.

A query is one or more query tiles (a patch or a region is one; a whole slide is a spread-out
sample of its tissue tiles). Each query tile has its nearest gallery items, best first. Every
gallery item belongs to a slide and a group (patient or case); here they are opaque keys, so
the same rules rank slides and groups.

The rules (see the README, "From a slide archive to a query"):
- "similarity" (the default): a slide's score is the sum, over the query tiles, of the best
  similarity among that query tile's hits from the slide (0 where it has none, and a negative
  similarity counts as 0). A query tile thus adds at most 1 to any slide, however many of the
  slide's tiles look alike, so a large slide cannot outvote a small one by its size alone.
- "votes": a slide's score is how many hits, over all query tiles, come from it.
Ties go to the slide found by more query tiles, then the higher best similarity, then the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from histoseek.errors import HistoseekError
from histoseek.metrics import majority_label
from histoseek.slide.defaults import AGGREGATION_RULES


@dataclass(frozen=True)
class TileHit:
    """One gallery item among one query tile's nearest neighbours."""

    query_tile: int
    """Position of the query tile in the query (0 for a patch or region query)."""
    item: int
    """The gallery item's position in the index."""
    similarity: float


@dataclass(frozen=True)
class RankedKey:
    """A slide or group in an aggregated answer, with the evidence for it."""

    rank: int
    key: str
    """The slide id or group."""
    label: str
    """The most common label among its hits (ties: the label of the best hit)."""
    score: float
    query_tiles: int
    """How many query tiles have at least one hit from it."""
    best_similarity: float
    hits: tuple[TileHit, ...]
    """Its hits over all query tiles, best first (ties: the lower item)."""


def tile_hits(neighbours: Iterable[tuple[Sequence[int], Sequence[float]]]) -> list[list[TileHit]]:
    """Per query tile, its (item ids, similarities) neighbours as TileHits, in the order given."""
    return [
        [
            TileHit(tile, int(item), float(similarity))
            for item, similarity in zip(items, similarities, strict=True)
        ]
        for tile, (items, similarities) in enumerate(neighbours)
    ]


def _by_similarity(hit: TileHit) -> tuple[float, int, int]:
    return (-hit.similarity, hit.item, hit.query_tile)


def rank_keys(
    hits_per_tile: Sequence[Sequence[TileHit]],
    key_of: Callable[[int], str],
    label_of: Callable[[int], str],
    rule: str = AGGREGATION_RULES[0],
) -> list[RankedKey]:
    """Every slide (or group) that any query tile found, ranked by `rule`, best first.

    `key_of(item)` and `label_of(item)` give a gallery item's slide id (or group) and label.
    """
    if rule not in AGGREGATION_RULES:
        raise HistoseekError(
            f"unknown aggregation rule {rule!r}; use {' or '.join(AGGREGATION_RULES)}"
        )
    found: dict[str, list[TileHit]] = {}
    for hits in hits_per_tile:
        for hit in hits:
            found.setdefault(key_of(hit.item), []).append(hit)
    entries = []
    for key, hits in found.items():
        hits.sort(key=_by_similarity)
        best_per_tile: dict[int, float] = {}
        for hit in hits:
            best_per_tile.setdefault(hit.query_tile, hit.similarity)
        if rule == "votes":
            score = float(len(hits))
        else:
            score = sum(max(0.0, similarity) for similarity in best_per_tile.values())
        label = majority_label([label_of(hit.item) for hit in hits])[0]
        entries.append((key, label, score, len(best_per_tile), hits[0].similarity, tuple(hits)))
    entries.sort(key=lambda entry: (-entry[2], -entry[3], -entry[4], entry[0]))
    return [RankedKey(rank, *entry) for rank, entry in enumerate(entries, 1)]


def best_tile_hits(hits_per_tile: Sequence[Sequence[TileHit]], k: int) -> list[TileHit]:
    """The k best gallery items over all query tiles, each once, at its best similarity."""
    best: dict[int, TileHit] = {}
    for hits in hits_per_tile:
        for hit in hits:
            kept = best.get(hit.item)
            if kept is None or _by_similarity(hit) < _by_similarity(kept):
                best[hit.item] = hit
    return sorted(best.values(), key=_by_similarity)[:k]
