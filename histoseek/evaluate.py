"""`histoseek evaluate`: retrieval quality of a model on a gallery (and optional query set)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.callbacks import Progress
from histoseek.data.folder import LabelledImages, display_path, scan_labelled_folder
from histoseek.data.split import group_ids_from_regex
from histoseek.embedder import ImageEmbedder
from histoseek.errors import HistoseekError
from histoseek.metrics import exact_neighbours, retrieval_metrics
from histoseek.metrics_defaults import (
    DEFAULT_MAP_K,
    DEFAULT_PRECISION_K,
    DEFAULT_RECALL_KS,
    DEFAULT_VOTE_K,
)


@dataclass
class EvaluationResult:
    """The metrics and what they were measured on."""

    metrics: dict[str, float]
    gallery_size: int
    query_size: int
    protocol: str
    skipped: list[str]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "metrics": self.metrics,
            "gallery_size": self.gallery_size,
            "query_size": self.query_size,
            "protocol": self.protocol,
            "skipped_unreadable": self.skipped,
        }


def _embed_folder(embedder: ImageEmbedder, images: LabelledImages, progress: Progress | None):
    result = embedder.embed_files(images.paths, progress)
    labels = [images.class_names[images.labels[i]] for i in result.indices]
    names = [images.paths[i].name for i in result.indices]
    skipped = [display_path(images.paths[i]) for i in result.failed]
    return result.embeddings, labels, names, skipped


def evaluate(
    embedder: ImageEmbedder,
    gallery_dir: Path,
    query_dir: Path | None = None,
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
    group_regex: str | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Embed the folders and score exact cosine retrieval by folder label.

    Without a query folder every gallery image queries the rest (leave-one-out). With
    `group_regex`, neighbours from the query's own group (e.g. slide) are excluded. Both
    folders are checked before anything is embedded.
    """
    gallery_images = scan_labelled_folder(gallery_dir)
    query_images = None if query_dir is None else scan_labelled_folder(query_dir)
    gallery, gallery_labels, gallery_names, skipped = _embed_folder(
        embedder, gallery_images, progress
    )
    if query_images is None:
        queries, query_labels, query_names = gallery, gallery_labels, gallery_names
        protocol = "leave-one-out within the gallery"
    else:
        queries, query_labels, query_names, skipped_q = _embed_folder(
            embedder, query_images, progress
        )
        skipped += skipped_q
        protocol = "query folder against gallery"
    leave_one_out = query_dir is None
    if len(gallery) - int(leave_one_out) < 1 or len(queries) == 0:
        raise HistoseekError("too few readable images to evaluate")

    query_groups = gallery_groups = None
    if group_regex:
        gallery_groups = group_ids_from_regex(gallery_names, group_regex)
        query_groups = group_ids_from_regex(query_names, group_regex)
        protocol += f"; neighbours from the query's own group excluded ({group_regex})"

    k = max(*recall_ks, map_k, vote_k, precision_k)
    neighbours = exact_neighbours(
        queries, gallery, k, leave_one_out, query_groups=query_groups, gallery_groups=gallery_groups
    )
    label_codes = {
        name: i for i, name in enumerate(sorted(set(gallery_labels) | set(query_labels)))
    }
    gallery_codes = np.array([label_codes[x] for x in gallery_labels])
    query_codes = np.array([label_codes[x] for x in query_labels])
    relevant = _relevant_counts(
        query_codes, gallery_codes, leave_one_out, query_groups, gallery_groups
    )
    metrics = retrieval_metrics(
        neighbours, query_codes, gallery_codes, recall_ks, map_k, vote_k, precision_k, relevant
    )
    return EvaluationResult(metrics, len(gallery), len(queries), protocol, skipped)


def _relevant_counts(query_codes, gallery_codes, leave_one_out, query_groups, gallery_groups):
    """Same-label gallery items each query may retrieve, after the exclusions."""
    if gallery_groups is None:
        per_label = Counter(gallery_codes.tolist())
        return np.array([per_label[q] - int(leave_one_out) for q in query_codes])
    per_label_group = Counter(zip(gallery_codes.tolist(), gallery_groups, strict=True))
    per_label = Counter(gallery_codes.tolist())
    return np.array(
        [
            per_label[q] - per_label_group[(q, g)]
            for q, g in zip(query_codes.tolist(), query_groups, strict=True)
        ]
    )
