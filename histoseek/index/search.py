"""Querying an index: open and check it, load the model it records, embed queries, search."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path, find_images
from histoseek.data.images import UnreadableImageError, check_image_header
from histoseek.data.sources import why_unreadable
from histoseek.errors import HistoseekError
from histoseek.index.defaults import DEFAULT_SEARCH_K, MAX_SEARCH_K
from histoseek.index.items import IndexItem
from histoseek.index.manifest import Manifest
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


def query_tta(index: OpenIndex, requested: bool, notify: Notify = lambda line: None) -> bool:
    """Whether to embed queries with test-time augmentation: as the index's images were.

    Asking for it on an index built without it is refused: its embeddings would not compare.
    """
    shown = display_path(index.path)
    if requested and not index.manifest.tta:
        source = display_path(index.manifest.source_dir)
        raise HistoseekError(
            f"the index {shown} was built without --tta; query it without --tta, or rebuild it "
            f"with `histoseek index {source} -o {shown} --overwrite --tta`"
        )
    if index.manifest.tta and not requested:
        notify(f"note: the index {shown} was built with --tta, so queries are embedded with it")
    return index.manifest.tta


def collect_query_images(arguments: Sequence[Path], notify: Notify | None = None) -> list[Path]:
    """The query images: files as given, folders expanded to every image below them.

    Everything is checked before any work: each file must exist, be a regular file and have
    an image header within the pixel limit. Entries of a folder that are not regular files
    (a FIFO would block the reader for ever) are left out, with a note.
    """
    paths: list[Path] = []
    for argument in arguments:
        argument = Path(argument)
        if argument.is_dir():
            found = find_images(argument)
            if found.skipped and notify is not None:
                first = found.skipped[0]
                notify(
                    f"skipped {len(found.skipped)} entr(ies) in {display_path(argument)} that "
                    f"are not image files (first: {display_path(first.path)}: {first.reason})"
                )
            if not found.paths:
                raise HistoseekError(f"no images found in {display_path(argument)}")
            paths.extend(found.paths)
        elif argument.is_file():
            paths.append(argument)
        elif argument.exists():
            raise HistoseekError(f"query image {display_path(argument)} is not a regular file")
        else:
            raise HistoseekError(f"query image not found: {display_path(argument)}")
    for path in paths:
        try:
            check_image_header(path)
        except UnreadableImageError:
            raise HistoseekError(
                f"cannot read query image {display_path(path)}: {why_unreadable(path)}"
            ) from None
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
    """The hits for one query image, and the indexed copies of the query left out of them."""

    query: Path
    hits: list[Hit]
    left_out_self: list[Path] = field(default_factory=list)

    def majority(self) -> tuple[str, int] | None:
        """The most common label among the hits and its count (ties: the best-ranked label);
        None without hits."""
        return majority_label([hit.label for hit in self.hits]) if self.hits else None


@dataclass
class SearchReport:
    """What a search did: its results, and how they were found (for headers and --json)."""

    index_path: Path
    manifest: Manifest
    results: list[QueryResult]
    k: int
    exact: bool
    search_k: int | None
    include_self: bool
    backend: str
    model: str
    embedding_seconds: float
    search_seconds: float
    created: datetime

    @property
    def mode(self) -> str:
        """How the neighbours were found, in words: 'exact' or 'annoy (search_k N)'."""
        return "exact" if self.exact else f"annoy (search_k {self.search_k})"


def annoy_search_k(k: int, items: int, trees: int, search_k: int | None = None) -> int:
    """Candidates Annoy inspects per query: `search_k` as given, or else DEFAULT_SEARCH_K or
    k × trees if that is more (k counted up to the index size, the total within Annoy's range).
    """
    if search_k is None:
        return min(max(DEFAULT_SEARCH_K, min(k, items) * trees), MAX_SEARCH_K)
    if not 1 <= search_k <= MAX_SEARCH_K:
        raise HistoseekError(f"--search-k must be from 1 to {MAX_SEARCH_K}, not {search_k}")
    return search_k


class _SelfMatcher:
    """Tells whether an indexed item is the query file itself: the same resolved path, or
    the same bytes (hashed only for items of the query's size, and at most once each)."""

    def __init__(self, index: OpenIndex):
        self.index = index
        self.digests: dict[Path, str | None] = {}

    def _digest(self, path: Path) -> str | None:
        if path not in self.digests:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                self.digests[path] = digest.hexdigest()
            except OSError:
                self.digests[path] = None
        return self.digests[path]

    def matches(self, query: Path, query_size: int, item: IndexItem) -> bool:
        """Whether `item` is the file at `query` (a resolved path) or a byte-identical copy."""
        path = self.index.file_of(item).resolve()
        if path == query:
            return True
        if item.size != query_size:
            return False
        query_digest = self._digest(query)
        return query_digest is not None and self._digest(path) == query_digest


def nearest_items(
    index: OpenIndex,
    queries: np.ndarray,
    k: int,
    search_k: int | None = None,
    exact: bool = False,
    exclude: Sequence[Collection[int]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The k nearest items to each query vector: (item ids, cosine similarities), best first.

    `search_k` (default: see `annoy_search_k`) is how many candidates Annoy inspects per
    query; `exact` searches the stored embeddings instead. `exclude[i]` holds item ids to
    leave out of query i's results. A k above the index size gives every item.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    total = len(index.items)
    search_k = annoy_search_k(k, total, index.manifest.trees, search_k)
    found = []
    for row, query in enumerate(queries):
        left_out = exclude[row] if exclude is not None else ()
        asked = min(k + len(left_out), total)
        if exact:
            ids, similarities = index.vectors.search_exact(query, asked)
        else:
            ids, similarities = index.vectors.search(query, asked, search_k)
        if left_out:
            kept = np.array([int(item) not in left_out for item in ids], dtype=bool)
            ids, similarities = ids[kept], similarities[kept]
        found.append((ids[:k], similarities[:k]))
    return found


def _nearest(
    index: OpenIndex,
    vector: np.ndarray,
    query_path: Path,
    k: int,
    search_k: int | None,
    exact: bool,
    matcher: _SelfMatcher | None,
) -> QueryResult:
    """The k nearest items to one query vector, less the query's own entries if `matcher`."""
    resolved = query_path.resolve()
    query_size = resolved.stat().st_size
    wanted = min(k, len(index.items))
    # One more than wanted leaves room for the query's own entry without a second search.
    asked = wanted if matcher is None else wanted + 1
    left_out: list[int] = []  # in the order found, best first
    while True:
        ((ids, similarities),) = nearest_items(
            index, vector[None, :], asked, search_k, exact, [left_out]
        )
        found = list(zip(ids.tolist(), similarities.tolist(), strict=True))
        copies = []
        if matcher is not None:
            copies = [
                item
                for item, _ in found
                if matcher.matches(resolved, query_size, index.items[item])
            ]
        left_out += copies
        kept = [(item, similarity) for item, similarity in found if item not in copies]
        if not copies or len(kept) >= wanted or len(found) < asked:
            break  # else byte-identical copies of the query took more than one place
    hits = [
        Hit(
            rank=rank,
            similarity=float(similarity),
            label=index.items[item].label,
            path=index.file_of(index.items[item]),
        )
        for rank, (item, similarity) in enumerate(kept[:wanted], 1)
    ]
    return QueryResult(query_path, hits, [index.file_of(index.items[item]) for item in left_out])


def search_images(
    index: OpenIndex,
    embedder: ImageEmbedder,
    query_paths: Sequence[Path],
    k: int,
    search_k: int | None = None,
    exact: bool = False,
    include_self: bool = False,
    progress: Progress | None = None,
) -> SearchReport:
    """Embed the query images as the index's images were, and find the k nearest of each.

    `search_k` (default: DEFAULT_SEARCH_K, or k × trees when that is more) is how many
    candidates Annoy inspects per query; `exact` searches the stored embeddings instead.
    A query that is itself in the index (same path or same bytes) is left out of its own
    results unless `include_self`; k results are still returned when the index has them.
    A k above the index size returns every image.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    if embedder.tta != index.manifest.tta:
        raise HistoseekError(
            f"queries must be embedded {'with' if index.manifest.tta else 'without'} --tta, "
            f"as the index {display_path(index.path)} was"
        )
    if not exact:
        search_k = annoy_search_k(k, len(index.items), index.manifest.trees, search_k)
    created = datetime.now(timezone.utc)
    started = time.perf_counter()
    embedded = embedder.embed_files(list(query_paths), progress)
    if embedded.failed:
        bad = query_paths[embedded.failed[0]]
        raise HistoseekError(f"cannot read query image {display_path(bad)}: {why_unreadable(bad)}")
    embedding_seconds = time.perf_counter() - started
    started = time.perf_counter()
    matcher = None if include_self else _SelfMatcher(index)
    results = [
        _nearest(
            index,
            embedded.embeddings[row],
            Path(query_paths[int(position)]),
            k,
            search_k,
            exact,
            matcher,
        )
        for row, position in enumerate(embedded.indices)
    ]
    return SearchReport(
        index_path=index.path,
        manifest=index.manifest,
        results=results,
        k=k,
        exact=exact,
        search_k=None if exact else search_k,
        include_self=include_self,
        backend=embedder.name,
        model=embedder.reference,
        embedding_seconds=embedding_seconds,
        search_seconds=time.perf_counter() - started,
        created=created,
    )
