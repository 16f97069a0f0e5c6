"""Querying an index: open and check it, load the model it records, embed queries, search."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoseek.callbacks import Progress
from histoseek.data.folder import display_path, list_images
from histoseek.errors import HistoseekError
from histoseek.index.build import why_unreadable
from histoseek.index.defaults import DEFAULT_SEARCH_K
from histoseek.index.store import OpenIndex
from histoseek.index.store import open_index as open_index
from histoseek.metrics import majority_label

if TYPE_CHECKING:
    from histoseek.embedder import ImageEmbedder


def load_index_model(index: OpenIndex, model: str | Path | None = None) -> tuple:
    """(the model the index was built with, its class names, its reference: 'builtin' or path).

    `model` names that same model's checkpoint where it has moved; any other model is refused.
    """
    from histoseek.model.checkpoint import load_model, model_fingerprint

    recorded = index.manifest.model_reference
    shown = display_path(index.path)
    if model is None:
        try:
            network, class_names, reference = load_model(recorded)
        except HistoseekError as error:
            raise HistoseekError(
                f"cannot load the model the index {shown} was built with ({error}); "
                "pass --model CKPT if the checkpoint has moved"
            ) from None
    else:
        network, class_names, reference = load_model(model)
    same = (
        model_fingerprint(network) == index.manifest.model_fingerprint
        and network.config.to_dict() == index.manifest.model_config
    )
    if not same:
        source = display_path(index.manifest.source_dir)
        if model is None:
            raise HistoseekError(
                f"the model {recorded} has changed since the index {shown} was built; "
                f"rebuild it with `histoseek index {source} -o {shown} --overwrite`"
            )
        raise HistoseekError(
            f"the index {shown} was built with another model ({recorded}), "
            f"not {display_path(model)}; query it without --model or rebuild it"
        )
    return network, class_names, reference


def collect_query_images(arguments: Sequence[Path]) -> list[Path]:
    """The query images: files as given, folders expanded to every image below them."""
    paths: list[Path] = []
    for argument in arguments:
        argument = Path(argument)
        if argument.is_dir():
            found = list_images(argument)
            if not found:
                raise HistoseekError(f"no images found in {display_path(argument)}")
            paths.extend(found)
        elif argument.is_file():
            paths.append(argument)
        else:
            raise HistoseekError(f"query image not found: {display_path(argument)}")
    return paths


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    similarity: float
    label: str
    path: Path

    @property
    def shown_path(self) -> str:
        """The path as shown to people: relative to the working folder when inside it."""
        return shown_path(self.path)


def shown_path(path: Path) -> str:
    """A printable path, relative to the working folder when it lies inside it."""
    relative = os.path.relpath(path)
    return display_path(path if relative.startswith("..") else relative)


@dataclass
class QueryResult:
    """The hits for one query image."""

    query: Path
    hits: list[Hit]

    def majority(self) -> tuple[str, int]:
        """The most common label among the hits and its count (ties: the best-ranked label)."""
        return majority_label([hit.label for hit in self.hits])


def nearest_items(
    index: OpenIndex,
    queries: np.ndarray,
    k: int,
    search_k: int | None = None,
    exact: bool = False,
    exclude: Sequence[Collection[int]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The k nearest items to each query vector: (item ids, cosine similarities), best first.

    `search_k` (default: DEFAULT_SEARCH_K, or k × trees when that is more) is how many
    candidates Annoy inspects per query; `exact` searches the stored embeddings instead.
    `exclude[i]` holds item ids to leave out of query i's results.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    if search_k is None:
        search_k = max(DEFAULT_SEARCH_K, k * index.manifest.trees)
    found = []
    for row, query in enumerate(queries):
        left_out = exclude[row] if exclude is not None else ()
        wanted = k + len(left_out)
        if exact:
            ids, similarities = index.vectors.search_exact(query, wanted)
        else:
            ids, similarities = index.vectors.search(query, wanted, search_k)
        if left_out:
            kept = np.array([int(item) not in left_out for item in ids], dtype=bool)
            ids, similarities = ids[kept], similarities[kept]
        found.append((ids[:k], similarities[:k]))
    return found


def search_images(
    index: OpenIndex,
    embedder: ImageEmbedder,
    query_paths: Sequence[Path],
    k: int,
    search_k: int | None = None,
    exact: bool = False,
    progress: Progress | None = None,
) -> list[QueryResult]:
    """Embed the query images as the index's images were, and find the k nearest of each.

    `search_k` (default: DEFAULT_SEARCH_K, or k × trees when that is more) is how many
    candidates Annoy inspects per query; `exact` searches the stored embeddings instead.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    embedded = embedder.embed_files(list(query_paths), progress)
    if embedded.failed:
        bad = query_paths[embedded.failed[0]]
        raise HistoseekError(f"cannot read query image {display_path(bad)}: {why_unreadable(bad)}")
    neighbours = nearest_items(index, embedded.embeddings, k, search_k, exact)
    results = []
    for position, (ids, similarities) in zip(embedded.indices, neighbours, strict=True):
        hits = [
            Hit(
                rank=rank,
                similarity=float(similarity),
                label=index.items[item].label,
                path=index.file_of(index.items[item]),
            )
            for rank, (item, similarity) in enumerate(zip(ids, similarities, strict=True), 1)
        ]
        results.append(QueryResult(query_paths[int(position)], hits))
    return results
