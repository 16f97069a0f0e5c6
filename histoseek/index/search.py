"""Querying an index: open and check it, load the model it records, embed queries, search."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError, check_image_header
from histoseek.data.sources import ImageSource, source_name, why_unreadable
from histoseek.errors import HistoseekError
from histoseek.fsutil import file_sha256
from histoseek.index.defaults import DEFAULT_SEARCH_K, MAX_SEARCH_K
from histoseek.index.items import IndexedSource, IndexItem
from histoseek.index.manifest import Manifest
from histoseek.index.ranking import TileHit, best_tile_hits, rank_keys, tile_hits
from histoseek.index.slide_query import (
    Box,
    QueryOrigin,
    SlideQuery,
    TileGrid,
    excluded_items,
    query_origin,
    region_query,
    whole_slide_query,
)
from histoseek.index.store import OpenIndex, rebuild_command
from histoseek.index.store import open_index as open_index
from histoseek.inference import DEFAULT_BATCH_SIZE
from histoseek.metrics import majority_label
from histoseek.slide.defaults import ANSWER_LEVELS, DEFAULT_MAX_TILES, DEFAULT_TILE_K
from histoseek.slide.folder import find_slides_and_images
from histoseek.slide.reader import is_slide_file

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
        if model is None:
            rebuild = rebuild_command(index.path, index.manifest, "--overwrite")
            raise HistoseekError(
                f"the model {recorded} has changed since the index {shown} was built; "
                f"rebuild it with {rebuild}"
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


def query_embedder(
    index: OpenIndex,
    model: str | Path | None = None,
    tta: bool = False,
    backend: str = "auto",
    device: str = "auto",
    exported: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    notify: Notify = lambda line: None,
    decoding_alongside: bool = False,
) -> ImageEmbedder:
    """The embedder for queries of `index`: the model it was built with (`model` where its
    checkpoint has moved, see load_index_model) on its backend, with the index's test-time
    augmentation (see query_tta); the rest as histoseek.embedder.embedder_for_model. A backend
    computing in another precision than the index's embeddings is noted."""
    from histoseek.embedder import embedder_for_model

    network, class_names, reference = load_index_model(index, model)
    embedder = embedder_for_model(
        network,
        reference,
        class_names,
        backend,
        device,
        exported,
        batch_size,
        workers,
        notify,
        tta=query_tta(index, tta, notify),
        decoding_alongside=decoding_alongside,
    )
    built, now = index.manifest.precision.upper(), embedder.precision.upper()
    if built != now:
        notify(
            f"note: the index holds {built} embeddings and {embedder.name} embeds the queries "
            f"in {now}: similarities may differ by about 0.01 from an {built} query's; "
            "--backend chooses another"
        )
    return embedder


def collect_query_images(arguments: Sequence[Path], notify: Notify | None = None) -> list[Path]:
    """The query files: files as given, folders expanded to every slide and image below them.

    Everything is checked before any work: each file must exist and be a regular file, and
    an image (not a slide) must have an image header within the pixel limit. Entries of a
    folder that are not regular files (a FIFO would block the reader for ever) are left out,
    with a note.
    """
    paths: list[Path] = []
    for argument in arguments:
        argument = Path(argument)
        if argument.is_dir():
            found = find_slides_and_images(argument)
            if found.skipped and notify is not None:
                first = found.skipped[0]
                notify(
                    f"skipped {len(found.skipped)} entr(ies) in {display_path(argument)} that "
                    f"are not image files (first: {display_path(first.path)}: "
                    f"{first.reason})"
                )
            listed = sorted([slide.path for slide in found.slides] + found.images)
            if not listed:
                raise HistoseekError(f"no images found in {display_path(argument)}")
            paths.extend(listed)
        elif argument.is_file():
            paths.append(argument)
        elif argument.exists():
            raise HistoseekError(f"query image {display_path(argument)} is not a regular file")
        else:
            raise HistoseekError(f"query image not found: {display_path(argument)}")
    for path in paths:
        if is_slide_file(path):
            continue
        try:
            check_image_header(path)
        except UnreadableImageError:
            raise HistoseekError(
                f"cannot read query image {display_path(path)}: {why_unreadable(path)}"
            ) from None
    return paths


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed image or slide tile."""

    rank: int
    similarity: float
    label: str
    path: Path
    item: IndexItem | None = None
    """The index's entry (for a tile: its slide, group and place)."""
    query_tile: int | None = None
    """For a query of several tiles (a whole slide): which of them found this hit."""

    @property
    def shown_path(self) -> str:
        """The path as shown to people: relative to the working folder when inside it."""
        return shown_path(self.path)

    @property
    def is_tile(self) -> bool:
        """Whether the hit is a slide tile (else a plain image)."""
        return self.item is not None and self.item.is_tile

    def source(self) -> ImageSource:
        """What to read to see the hit: its image file, or its tile of its slide, refused
        (as unreadable) if the file has changed since it was indexed."""
        return self.path if self.item is None else IndexedSource(self.path, self.item)


def shown_path(path: Path) -> str:
    """A printable path, relative to the working folder when it lies inside it."""
    relative = os.path.relpath(path)
    return display_path(path if relative.startswith("..") else relative)


@dataclass
class RankedAnswer:
    """A slide or group (patient) ranked by the tile evidence for it (see index.ranking)."""

    rank: int
    key: str
    """The slide id (for a plain image: its path) or the group."""
    label: str
    score: float
    query_tiles: int
    """How many query tiles found it among their nearest tiles."""
    best_similarity: float
    hits: list[Hit]
    """Its tiles among the query tiles' nearest, best first."""


@dataclass
class QueryResult:
    """The hits for one query, and the indexed copies of the query left out of them.

    A region or whole-slide query also keeps what was read from its slide and where, the
    slide and group it comes from, and, answered by slide or group, the ranking.
    """

    query: Path
    hits: list[Hit]
    left_out_self: list[Path] = field(default_factory=list)
    slide_query: SlideQuery | None = None
    origin: QueryOrigin | None = None
    by: str = "tile"
    """"tile": the hits are the answer; "slide" or "group": `ranking` is."""
    ranking: list[RankedAnswer] | None = None
    excluded: int = 0
    """How many indexed items --exclude left out."""

    @property
    def kind(self) -> str:
        """ "image", "region" or "slide"."""
        return "image" if self.slide_query is None else self.slide_query.kind

    def majority(self) -> tuple[str, int] | None:
        """The most common label among the hits and its count (ties: the best-ranked label);
        None without hits."""
        return majority_label([hit.label for hit in self.hits]) if self.hits else None

    def ranking_majority(self) -> tuple[str, int] | None:
        """The most common label among the ranked slides or groups; None without a ranking."""
        return majority_label([entry.label for entry in self.ranking]) if self.ranking else None


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
    exclude: str | None = None
    tile_k: int = DEFAULT_TILE_K
    # Whether each query's search_k grew with the items it left out (no --search-k given).
    search_k_scaled: bool = False

    @property
    def mode(self) -> str:
        """How the neighbours were found, in words: 'exact' or 'annoy (search_k N)'."""
        if self.exact:
            return "exact"
        more = ", more for the items left out" if self.search_k_scaled else ""
        return f"annoy (search_k {self.search_k}{more})"


def annoy_search_k(k: int, items: int, trees: int, search_k: int | None = None) -> int:
    """Candidates Annoy inspects per query: `search_k` as given, or else DEFAULT_SEARCH_K or
    k × trees if that is more (k counted up to the index size, the total within Annoy's range).
    """
    if search_k is None:
        return min(max(DEFAULT_SEARCH_K, min(k, items) * trees), MAX_SEARCH_K)
    if not 1 <= search_k <= MAX_SEARCH_K:
        raise HistoseekError(f"--search-k must be from 1 to {MAX_SEARCH_K}, not {search_k}")
    return search_k


class SelfMatcher:
    """Tells whether an indexed item is the query file itself: the same resolved path, or
    the same bytes (hashed only for items of the query's size, and at most once each)."""

    def __init__(self, index: OpenIndex):
        self.index = index
        self.digests: dict[Path, str | None] = {}

    @cached_property
    def _image_items_by_size(self) -> dict[int, list[int]]:
        by_size: dict[int, list[int]] = {}
        for position, item in enumerate(self.index.items):
            if not item.is_tile:
                by_size.setdefault(item.size, []).append(position)
        return by_size

    def copies_of(self, data: bytes) -> list[int]:
        """The indexed image files (not slide tiles) that hold exactly these bytes."""
        candidates = self._image_items_by_size.get(len(data), [])
        if not candidates:
            return []
        digest = hashlib.sha256(data).hexdigest()
        return [
            position
            for position in candidates
            if self._digest(self.index.file_of(self.index.items[position]).resolve()) == digest
        ]

    def _digest(self, path: Path) -> str | None:
        if path not in self.digests:
            try:
                self.digests[path] = file_sha256(path)
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

    `search_k` (default: see `annoy_search_k`, for k plus the items left out) is how many
    candidates Annoy inspects per query; `exact` searches the stored embeddings instead.
    `exclude[i]` holds item ids to leave out of query i's results (a set, for a large one).
    A k above the index size gives every item.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    total = len(index.items)
    found = []
    for row, query in enumerate(queries):
        left_out = exclude[row] if exclude is not None else ()
        asked = min(k + len(left_out), total)
        if exact:
            ids, similarities = index.vectors.search_exact(query, asked)
        else:
            # Annoy inspects enough candidates to still find k once a whole slide is left out.
            row_search_k = annoy_search_k(asked, total, index.manifest.trees, search_k)
            ids, similarities = index.vectors.search(query, asked, row_search_k)
        if left_out:
            kept = np.array([int(item) not in left_out for item in ids], dtype=bool)
            ids, similarities = ids[kept], similarities[kept]
        found.append((ids[:k], similarities[:k]))
    return found


def _hit(index: OpenIndex, rank: int, item: int, similarity: float, query_tile: int | None) -> Hit:
    entry = index.items[item]
    return Hit(rank, float(similarity), entry.label, index.file_of(entry), entry, query_tile)


def _nearest(
    index: OpenIndex,
    vector: np.ndarray,
    query_path: Path,
    k: int,
    search_k: int | None,
    exact: bool,
    matcher: SelfMatcher | None,
    excluded: frozenset[int],
) -> tuple[list[tuple[int, float]], list[int]]:
    """The k nearest (item, similarity) to one query vector, best first, less `excluded` and,
    if `matcher`, less the query's own entries; and those entries, in the order found."""
    resolved = query_path.resolve()
    query_size = resolved.stat().st_size
    wanted = min(k, len(index.items) - len(excluded))
    # One more than wanted leaves room for the query's own entry without a second search.
    asked = wanted if matcher is None else wanted + 1
    copies_found: list[int] = []
    while True:
        left_out = excluded | set(copies_found)
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
        copies_found += copies
        kept = [(item, similarity) for item, similarity in found if item not in copies]
        if not copies or len(kept) >= wanted or len(found) < asked:
            break  # else byte-identical copies of the query took more than one place
    return kept[:wanted], copies_found


def _answer_image_query(
    index: OpenIndex,
    vector: np.ndarray,
    path: Path,
    origin: QueryOrigin,
    excluded: frozenset[int],
    k: int,
    by: str,
    tile_k: int,
    search_k: int | None,
    exact: bool,
    matcher: SelfMatcher | None,
) -> QueryResult:
    """The k nearest items of an image query, and by slide or group the ranking from its
    tile_k nearest."""
    depth = k if by == "tile" else max(k, tile_k)
    kept, copies = _nearest(index, vector, path, depth, search_k, exact, matcher, excluded)
    hits = [
        _hit(index, rank, item, similarity, None)
        for rank, (item, similarity) in enumerate(kept[:k], 1)
    ]
    ranking = None
    if by != "tile":
        tile = [TileHit(0, item, similarity) for item, similarity in kept[:tile_k]]
        ranking = _ranking(index, [tile], by, k)
    copies_shown = [index.file_of(index.items[item]) for item in copies]
    return QueryResult(path, hits, copies_shown, None, origin, by, ranking, len(excluded))


def _item_keys(index: OpenIndex, by: str) -> Callable[[int], str]:
    """An item's slide (a plain image is a slide of its own, named by its path) or group."""

    def slide_of(item: int) -> str:
        entry = index.items[item]
        return entry.slide_id if entry.slide_id is not None else entry.path

    if by == "slide":
        return slide_of

    def group_of(item: int) -> str:
        group = index.items[item].group
        return group if group is not None else slide_of(item)

    return group_of


def _ranking(
    index: OpenIndex, hits_per_tile: list[list[TileHit]], by: str, k: int
) -> list[RankedAnswer]:
    """The k best slides or groups by the tile hits of the query tiles (index.ranking)."""
    ranked = rank_keys(hits_per_tile, _item_keys(index, by), lambda item: index.items[item].label)
    return [
        RankedAnswer(
            entry.rank,
            entry.key,
            entry.label,
            entry.score,
            entry.query_tiles,
            entry.best_similarity,
            [
                _hit(index, rank, hit.item, hit.similarity, hit.query_tile)
                for rank, hit in enumerate(entry.hits, 1)
            ],
        )
        for entry in ranked[:k]
    ]


def _answer_slide_query(
    index: OpenIndex,
    vectors: np.ndarray,
    query: SlideQuery,
    origin: QueryOrigin,
    excluded: frozenset[int],
    k: int,
    by: str,
    tile_k: int,
    search_k: int | None,
    exact: bool,
) -> QueryResult:
    """The hits of a region or whole-slide query: the k best tiles over all its query tiles,
    and by slide or group the ranking from each query tile's tile_k nearest."""
    depth = k if by == "tile" else max(k, tile_k)
    neighbours = nearest_items(index, vectors, depth, search_k, exact, [excluded] * len(vectors))
    per_tile = tile_hits(neighbours)
    hits = [
        _hit(index, rank, hit.item, hit.similarity, hit.query_tile if len(vectors) > 1 else None)
        for rank, hit in enumerate(best_tile_hits(per_tile, k), 1)
    ]
    ranking = None
    if by != "tile":
        ranking = _ranking(index, [tile[:tile_k] for tile in per_tile], by, k)
    return QueryResult(query.path, hits, [], query, origin, by, ranking, len(excluded))


def prepare_queries(
    index: OpenIndex,
    paths: Sequence[Path],
    region: Box | None = None,
    max_tiles: int = DEFAULT_MAX_TILES,
    slide_mpp: float | None = None,
    progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> list[Path | SlideQuery]:
    """What each query file is: a path (an image, embedded as the index's images were), or
    the images read from a slide (`region` of it, else a spread-out sample of at most
    `max_tiles` of its tissue tiles) on the index's tile grid."""
    manifest = index.manifest
    grid = TileGrid(manifest.mpp, manifest.patch_size, manifest.min_tissue)
    if manifest.slides == 0 and (region is not None or any(map(is_slide_file, paths))):
        notify(
            f"note: the index holds no slides; query slides are read in {grid.patch_size}-px "
            f"tiles at {grid.mpp:g} µm/px (the defaults), whatever its images' resolution"
        )
    if region is not None:
        if len(paths) != 1:
            raise HistoseekError(f"--region reads one slide; {len(paths)} query files were given")
        return [region_query(paths[0], region, grid, slide_mpp, notify)]
    return [
        whole_slide_query(path, grid, max_tiles, slide_mpp, progress)
        if is_slide_file(path)
        else path
        for path in paths
    ]


def search_images(
    index: OpenIndex,
    embedder: ImageEmbedder,
    queries: Sequence[Path | SlideQuery],
    k: int,
    search_k: int | None = None,
    exact: bool = False,
    include_self: bool = False,
    by: str | None = None,
    exclude: str | None = None,
    group_regex: str | None = None,
    tile_k: int = DEFAULT_TILE_K,
    progress: Progress | None = None,
) -> SearchReport:
    """Embed the queries as the index's items were, and find the k nearest of each.

    A query is an image file, or what `prepare_queries` read from a slide. `search_k`
    (default: DEFAULT_SEARCH_K, or k × trees when that is more) is how many candidates
    Annoy inspects per query; `exact` searches the stored embeddings instead. A query image
    that is itself in the index (same path or same bytes) is left out of its own results
    unless `include_self`; k results are still returned when the index has them. A k above
    the index size returns every item.

    `by` ("tile", "slide" or "group"; default: "slide" for whole-slide queries, else
    "tile") also ranks the k best slides or groups from each query tile's `tile_k` nearest
    tiles. `exclude` ("same-slide" or "same-group") leaves out the items of the query's own
    slide or group: its entry in the index says which, else its file name and `group_regex`.
    """
    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    if by is not None and by not in ANSWER_LEVELS:
        raise HistoseekError(f"--by is {', '.join(ANSWER_LEVELS)}; not {by!r}")
    if exact and search_k is not None:
        raise HistoseekError(
            "--search-k sets how far Annoy searches, and --exact searches every stored "
            "embedding instead: give one or the other"
        )
    if embedder.tta != index.manifest.tta:
        raise HistoseekError(
            f"queries must be embedded {'with' if index.manifest.tta else 'without'} --tta, "
            f"as the index {display_path(index.path)} was"
        )
    # Checked here, but passed on as given: left None, each search scales it to what it asks
    # for (k plus the items left out), which a whole slide's thousands of tiles need.
    shown_search_k = None
    if not exact:
        shown_search_k = annoy_search_k(k, len(index.items), index.manifest.trees, search_k)
    created = datetime.now(timezone.utc)
    started = time.perf_counter()
    # One embedding run over every query image, so batches and progress span all queries.
    sources: list[ImageSource] = []
    spans = []
    for query in queries:
        start = len(sources)
        sources.extend(query.sources() if isinstance(query, SlideQuery) else [query])
        spans.append(slice(start, len(sources)))
    embedded = embedder.embed_files(sources, progress)
    if embedded.failed:
        bad = sources[embedded.failed[0]]
        raise HistoseekError(f"cannot read query image {source_name(bad)}: {why_unreadable(bad)}")
    # Every source was read (else refused above), so the embeddings are in the sources' order.
    vectors = iter(embedded.embeddings[span] for span in spans)
    embedding_seconds = time.perf_counter() - started
    started = time.perf_counter()
    matcher = None if include_self else SelfMatcher(index)
    source_dir = Path(index.manifest.source_dir)
    results = []
    for query in queries:
        is_slide = isinstance(query, SlideQuery)
        path = query.path if is_slide else Path(query)
        origin = query_origin(index.items, source_dir, path, is_slide, group_regex)
        excluded = excluded_items(index.items, origin, exclude, display_path(path))
        if len(excluded) == len(index.items):
            raise HistoseekError(
                f"--exclude {exclude} leaves nothing to search: every item of the index is "
                f"from the {exclude.removeprefix('same-')} of {display_path(path)}"
            )
        if is_slide:
            results.append(
                _answer_slide_query(
                    index,
                    next(vectors),
                    query,
                    origin,
                    excluded,
                    k,
                    by or ("slide" if query.kind == "slide" else "tile"),
                    tile_k,
                    search_k,
                    exact,
                )
            )
        else:
            results.append(
                _answer_image_query(
                    index,
                    next(vectors)[0],
                    path,
                    origin,
                    excluded,
                    k,
                    by or "tile",
                    tile_k,
                    search_k,
                    exact,
                    matcher,
                )
            )
    return SearchReport(
        index_path=index.path,
        manifest=index.manifest,
        results=results,
        k=k,
        exact=exact,
        search_k=shown_search_k,
        search_k_scaled=search_k is None and exclude is not None,
        include_self=include_self,
        backend=embedder.name,
        model=embedder.reference,
        embedding_seconds=embedding_seconds,
        search_seconds=time.perf_counter() - started,
        created=created,
        exclude=exclude,
        tile_k=tile_k,
    )
