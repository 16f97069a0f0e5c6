"""`histoseek evaluate`: retrieval quality of a model on a gallery (and optional query set)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import (
    LabelledImages,
    display_path,
    refuse_shared_images,
    scan_labelled_folder,
)
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
    #: Queries with no image of their own class left to find in the gallery: not scored.
    left_out: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "metrics": self.metrics,
            "gallery_size": self.gallery_size,
            "query_size": self.query_size,
            "queries_left_out": self.left_out,
            "protocol": self.protocol,
            "skipped_unreadable": self.skipped,
        }


@dataclass(frozen=True)
class EvaluationSet:
    """Checked evaluation folders, ready to embed (queries None: leave-one-out in the gallery)."""

    gallery: LabelledImages
    queries: LabelledImages | None
    group_regex: str | None = None


def _labels(images: LabelledImages) -> list[str]:
    return [images.class_names[label] for label in images.labels]


def _groups(
    paths: Sequence[Path],
    group_regex: str,
    matched_on: str | None = None,
    notify: Notify = lambda line: None,
) -> list[str]:
    """The --group-regex group of each file name; a file it does not match is its own group,
    named by its whole path (unique across the gallery and query folders, unlike its name)."""
    names = [path.name for path in paths]
    return group_ids_from_regex(names, group_regex, matched_on, notify, [str(p) for p in paths])


def _relevant_counts(
    query_labels: Sequence[str],
    gallery_labels: Sequence[str],
    leave_one_out: bool,
    query_groups: Sequence[str] | None,
    gallery_groups: Sequence[str] | None,
) -> np.ndarray:
    """Same-label gallery items each query may retrieve, after the exclusions."""
    per_label = Counter(gallery_labels)
    if gallery_groups is None:
        return np.array([per_label[q] - int(leave_one_out) for q in query_labels], dtype=np.int64)
    per_label_group = Counter(zip(gallery_labels, gallery_groups, strict=True))
    return np.array(
        [
            per_label[q] - per_label_group[(q, g)]
            for q, g in zip(query_labels, query_groups, strict=True)
        ],
        dtype=np.int64,
    )


def _check_scorable(
    gallery_dir: Path,
    gallery_labels: Sequence[str],
    query_labels: Sequence[str],
    relevant: np.ndarray,
    leave_one_out: bool,
    group_regex: str | None,
    unreadable: Sequence[str] = (),
) -> None:
    """Refuse galleries whose metrics would mean nothing: one class (every metric 1.0), or no
    query with an image of its own class to find (every metric undefined). `unreadable`
    (images left out as unreadable) is named, since it may be why."""
    classes = sorted(set(gallery_labels))
    lost = (
        f" ({len(unreadable)} image(s) could not be read, e.g. {unreadable[0]})"
        if unreadable
        else ""
    )
    if len(classes) < 2:
        raise HistoseekError(
            f"the gallery {display_path(gallery_dir)} holds one class ({display_path(classes[0])})"
            f"{lost}: every neighbour shares the query's label, so every metric would be 1.0; "
            "evaluate needs at least 2 class folders with readable images"
        )
    if (relevant > 0).any():
        return
    if group_regex:
        why = f"every same-class gallery image is in the query's own group ({group_regex})"
    elif leave_one_out:
        why = "every class holds a single image, so no query has another of its class to find"
    else:
        missing = sorted(set(query_labels) - set(gallery_labels))
        shown = ", ".join(display_path(label) for label in missing[:5])
        why = f"the query classes are not in the gallery ({shown})"
    raise HistoseekError(f"no query can be scored: {why}{lost}")


def check_evaluation_set(
    gallery_dir: Path,
    query_dir: Path | None = None,
    group_regex: str | None = None,
    notify: Notify = lambda line: None,
) -> EvaluationSet:
    """List and check the folders before anything is embedded.

    Refused: missing or empty folders, a bad --group-regex, a one-class gallery, and a set
    in which no query has a gallery image of its own class to find.
    """
    gallery = scan_labelled_folder(gallery_dir)
    queries = None if query_dir is None else scan_labelled_folder(query_dir)
    if queries is not None:
        refuse_shared_images(
            queries, gallery, "--query", "for leave-one-out within the gallery, leave --query out"
        )
    query_set = gallery if queries is None else queries
    gallery_groups = query_groups = None
    if group_regex:
        gallery_groups = _groups(gallery.paths, group_regex, "gallery file names", notify)
        if queries is not None:
            query_groups = _groups(queries.paths, group_regex, "query file names", notify)
        else:
            query_groups = gallery_groups
    leave_one_out = queries is None
    relevant = _relevant_counts(
        _labels(query_set), _labels(gallery), leave_one_out, query_groups, gallery_groups
    )
    _check_scorable(
        gallery.root, _labels(gallery), _labels(query_set), relevant, leave_one_out, group_regex
    )
    return EvaluationSet(gallery, queries, group_regex)


@dataclass
class _Embedded:
    embeddings: np.ndarray
    labels: list[str]
    paths: list[Path]
    skipped: list[str]


def _embed_folder(
    embedder: ImageEmbedder, images: LabelledImages, progress: Progress | None
) -> _Embedded:
    result = embedder.embed_files(images.paths, progress)
    labels = [images.class_names[images.labels[i]] for i in result.indices]
    paths = [images.paths[i] for i in result.indices]
    skipped = [display_path(entry.path) for entry in images.skipped]
    skipped += [display_path(images.paths[i]) for i in result.failed]
    return _Embedded(result.embeddings, labels, paths, skipped)


def evaluate(
    embedder: ImageEmbedder,
    evaluation_set: EvaluationSet,
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    map_k: int = DEFAULT_MAP_K,
    vote_k: int = DEFAULT_VOTE_K,
    precision_k: int = DEFAULT_PRECISION_K,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Embed the checked folders and score exact cosine retrieval by folder label.

    Without a query folder every gallery image queries the rest (leave-one-out). With a
    group regex, neighbours from the query's own group (e.g. slide) are excluded. Queries
    with no gallery image of their own class left to find are left out of every metric
    (and counted); none left at all is refused, so no metric is ever NaN.
    """
    gallery = _embed_folder(embedder, evaluation_set.gallery, progress)
    skipped = list(gallery.skipped)
    leave_one_out = evaluation_set.queries is None
    if leave_one_out:
        queries = gallery
        protocol = "leave-one-out within the gallery"
    else:
        queries = _embed_folder(embedder, evaluation_set.queries, progress)
        skipped += queries.skipped
        protocol = "query folder against gallery"
    if len(gallery.labels) - int(leave_one_out) < 1 or not queries.labels:
        raise HistoseekError("too few readable images to evaluate")

    group_regex = evaluation_set.group_regex
    query_groups = gallery_groups = None
    if group_regex:
        gallery_groups = _groups(gallery.paths, group_regex)
        query_groups = _groups(queries.paths, group_regex)
        protocol += f"; neighbours from the query's own group excluded ({group_regex})"
    relevant = _relevant_counts(
        queries.labels, gallery.labels, leave_one_out, query_groups, gallery_groups
    )
    _check_scorable(
        evaluation_set.gallery.root,
        gallery.labels,
        queries.labels,
        relevant,
        leave_one_out,
        group_regex,
        skipped,
    )

    k = max(*recall_ks, map_k, vote_k, precision_k)
    scored = relevant > 0
    if group_regex:
        # Only scored queries are searched: k is cut to what the query with the largest group
        # may retrieve, and one whose group holds every same-class image says nothing anyway.
        neighbours = exact_neighbours(
            queries.embeddings[scored],
            gallery.embeddings,
            k,
            query_groups=[group for group, kept in zip(query_groups, scored, strict=True) if kept],
            gallery_groups=gallery_groups,
        )
    else:
        neighbours = exact_neighbours(
            queries.embeddings, gallery.embeddings, k, leave_one_out
        ).subset(scored)
    ranked = neighbours.indices.shape[1]
    if ranked < k:
        limit = "the largest group leaves" if group_regex else "the gallery offers each query"
        protocol += (
            f"; {ranked} neighbours per query, as many as {limit}: metrics @k above {ranked} "
            f"are taken over those {ranked}"
        )
    label_codes = {
        name: i for i, name in enumerate(sorted(set(gallery.labels) | set(queries.labels)))
    }
    gallery_codes = np.array([label_codes[x] for x in gallery.labels])
    query_codes = np.array([label_codes[x] for x in queries.labels])
    metrics = retrieval_metrics(
        neighbours,
        query_codes[scored],
        gallery_codes,
        recall_ks,
        map_k,
        vote_k,
        precision_k,
        relevant[scored],
    )
    return EvaluationResult(
        metrics,
        len(gallery.labels),
        len(queries.labels),
        protocol,
        skipped,
        left_out=int((~scored).sum()),
    )
