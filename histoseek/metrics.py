"""Retrieval metrics by exact cosine search, with memory bounded by chunking the queries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from histoseek.metrics_defaults import (
    DEFAULT_MAP_K,
    DEFAULT_PRECISION_K,
    DEFAULT_RECALL_KS,
    DEFAULT_VOTE_K,
)

# Queries per chunk are chosen so one similarity block holds at most this many floats (64 MB).
_MAX_BLOCK_ELEMENTS = 16_000_000


@dataclass(frozen=True)
class Neighbours:
    """The top-k gallery indices (and cosine similarities) for every query, best first."""

    indices: np.ndarray
    similarities: np.ndarray

    def subset(self, rows: np.ndarray) -> Neighbours:
        """The neighbours of the queries that `rows` (a boolean mask or indices) selects."""
        return Neighbours(self.indices[rows], self.similarities[rows])


def exact_neighbours(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclude_self: bool = False,
    query_groups: Sequence | None = None,
    gallery_groups: Sequence | None = None,
) -> Neighbours:
    """Top-k gallery items by cosine similarity for each query (embeddings L2-normalised).

    `exclude_self` drops gallery item i for query i (leave-one-out); with groups given, gallery
    items of the query's own group are dropped too (e.g. tiles of the same source image; with
    `exclude_self`, a query's own item is in its group). k is then cut to the fewest items any
    query may retrieve, so a dropped item never fills a place.
    """
    available = len(gallery) - (1 if exclude_self else 0)
    if query_groups is not None:
        per_group = Counter(gallery_groups)
        available = len(gallery) - max(per_group[group] for group in set(query_groups))
    k = min(k, available)
    if k <= 0:
        raise ValueError("the gallery is too small for this k")
    chunk = max(1, _MAX_BLOCK_ELEMENTS // max(1, len(gallery)))
    if query_groups is not None:
        codes = {g: i for i, g in enumerate(dict.fromkeys([*gallery_groups, *query_groups]))}
        gallery_codes = np.array([codes[g] for g in gallery_groups])
        query_codes = np.array([codes[g] for g in query_groups])
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_sim = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        sims = _cosines(queries[start:stop], gallery)
        if exclude_self:
            rows = np.arange(stop - start)
            sims[rows, rows + start] = -np.inf
        if query_groups is not None:
            sims[query_codes[start:stop, None] == gallery_codes[None, :]] = -np.inf
        top = _top_k(sims, k)
        top_sims = np.take_along_axis(sims, top, axis=1)
        # Ties go to the lower gallery index, so results never depend on argpartition's order.
        order = np.lexsort((top, -top_sims), axis=-1)
        out_idx[start:stop] = np.take_along_axis(top, order, axis=1)
        out_sim[start:stop] = np.take_along_axis(top_sims, order, axis=1)
    return Neighbours(out_idx, out_sim)


def _cosines(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """queries · galleryᵀ as float32, summed in float64 a block of the gallery at a time.

    A float32 product sums in an order that depends on where a row falls in BLAS's blocks, so
    two copies of one image got similarities a few units apart in the last place, and the
    tie between them went either way; in float64 they round to the same float32.
    """
    out = np.empty((len(queries), len(gallery)), np.float32)
    wide = np.asarray(queries, np.float64)
    step = max(1, _MAX_BLOCK_ELEMENTS // max(1, gallery.shape[1]))
    for start in range(0, len(gallery), step):
        out[:, start : start + step] = (
            wide @ np.asarray(gallery[start : start + step], np.float64).T
        )
    return out


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's k largest values, unordered; of the columns tied with the
    k-th largest, the lowest (argpartition alone takes any of them)."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(sims, top, axis=1).min(axis=1, keepdims=True)
    # Only rows where a tie straddles the k-th place need redoing, usually none.
    straddled = np.flatnonzero((sims >= kth).sum(axis=1) > k)
    if straddled.size:
        rows, kth = sims[straddled], kth[straddled]
        above, level = rows > kth, rows == kth
        places_left = k - above.sum(axis=1, keepdims=True)
        keep = above | (level & (np.cumsum(level, axis=1, dtype=np.int32) <= places_left))
        top[straddled] = np.nonzero(keep)[1].reshape(len(straddled), k)
    return top


def majority_label(labels: Sequence) -> tuple:
    """The most common label and its count; ties go to the label ranked highest first."""
    counts = Counter(labels)
    best = max(counts.values())
    winner = next(label for label in labels if counts[label] == best)
    return winner, best


def retrieval_metrics(
    neighbours: Neighbours,
    query_labels: Sequence[int],
    gallery_labels: Sequence[int],
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
    relevant_counts: Sequence[int] | None = None,
) -> dict[str, float]:
    """Recall@K, mAP@k, majority-vote accuracy mMV@k and precision@k from ranked neighbours.

    AP@k = Σ_{i≤k} P@i·rel_i / min(k, R), with R the number of relevant gallery items for the
    query (given by `relevant_counts`, after exclusions); queries with R = 0 are left out.
    Where fewer than k neighbours were ranked (exact_neighbours cuts k to what every query may
    retrieve), each metric @k is taken over those ranked, as if k were their number.
    """
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    relevant = gallery_labels[neighbours.indices] == query_labels[:, None]
    available = neighbours.indices.shape[1]
    if relevant_counts is None:
        relevant_counts = np.array([(gallery_labels == q).sum() for q in query_labels])
    relevant_counts = np.asarray(relevant_counts)
    has_relevant = relevant_counts > 0
    results: dict[str, float] = {}
    for k in recall_ks:
        results[f"recall@{k}"] = float(relevant[:, : min(k, available)].any(axis=1).mean())

    hits = relevant[:, :map_k].astype(np.float64)
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    # min(k, R) with k cut to the ranked depth: a query can find no more than that.
    denominators = np.minimum(hits.shape[1], np.maximum(relevant_counts, 1))
    average_precision = (precision_at_i * hits).sum(axis=1) / denominators
    results[f"map@{map_k}"] = float(average_precision[has_relevant].mean())

    votes = [
        majority_label(list(gallery_labels[row[:vote_k]]))[0] == label
        for row, label in zip(neighbours.indices, query_labels, strict=True)
    ]
    results[f"mmv@{vote_k}"] = float(np.mean(votes))
    results[f"precision@{precision_k}"] = float(relevant[:, :precision_k].mean())
    return results


def ranking_metrics(
    rankings: Sequence[Sequence], query_labels: Sequence, vote_k: int = DEFAULT_VOTE_K
) -> dict[str, float]:
    """R@1 and majority-vote accuracy mMV@k of ranked answers (e.g. slides), from their labels.

    `rankings[i]` holds the labels of query i's answers, best first; a query with no answer
    counts as a miss.
    """
    if not rankings:
        raise ValueError("no rankings to score")
    first = [
        bool(ranked) and ranked[0] == label
        for ranked, label in zip(rankings, query_labels, strict=True)
    ]
    votes = [
        bool(ranked) and majority_label(list(ranked[:vote_k]))[0] == label
        for ranked, label in zip(rankings, query_labels, strict=True)
    ]
    return {"recall@1": float(np.mean(first)), f"mmv@{vote_k}": float(np.mean(votes))}


def selection_score(metrics: Mapping[str, float]) -> float:
    """What validation ranks models by (a run's epochs, the recipe search's recipes): the mean
    of R@1 and mMV@k."""
    return (metrics["recall@1"] + metrics[f"mmv@{DEFAULT_VOTE_K}"]) / 2
