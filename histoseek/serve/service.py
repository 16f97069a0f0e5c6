"""The search service behind the web API: one open index, one model, read-only.

Uploads go through the decoding and test-time preprocessing that indexed files went through;
their embeddings come from the micro-batcher; every search goes through
`histoseek.index.search.nearest_items`, as `histoseek query` does. Items are reached by id
(their position in the index) only, and their files only inside the indexed folder.
"""

from __future__ import annotations

import io
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.data.transforms import EvalTransform
from histoseek.embedder import ImageEmbedder
from histoseek.errors import HistoseekError
from histoseek.index.items import IndexItem, read_item_image
from histoseek.index.search import OpenIndex, SelfMatcher, annoy_search_k, nearest_items
from histoseek.index.slide_query import Box
from histoseek.metrics import majority_label
from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS
from histoseek.report.slide_views import draw_boxes
from histoseek.serve.batcher import MicroBatcher
from histoseek.serve.defaults import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_K,
    DEFAULT_MAX_UPLOAD_MB,
    MAX_K,
    MAX_SEARCH_K,
    SLIDE_VIEW_CACHE,
    SLIDE_VIEW_SIZE,
    THUMBNAIL_CACHE,
    THUMBNAIL_SIZE,
)
from histoseek.slide.defaults import EXCLUDE_CHOICES
from histoseek.slide.reader import open_slide


class RequestError(HistoseekError):
    """A request the service refuses: the HTTP status to answer with and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass(frozen=True)
class SearchOptions:
    """How to search: results wanted, Annoy candidates or exact search, the query left out."""

    k: int = DEFAULT_K
    search_k: int | None = None
    exact: bool = False
    exclude_self: bool = True
    exclude: str | None = None
    """"same-slide" or "same-group": leave out the query item's slide or patient."""


@dataclass
class QueryRecord:
    """What was searched for: an upload (with its file name) or an indexed item."""

    kind: str
    item: int | None = None
    name: str | None = None
    copies: list[int] | None = None
    """For an upload: the indexed image files with its very bytes (left out if exclude_self)."""


@dataclass
class HitRecord:
    """One result: its rank, item id, cosine similarity, label and path in the indexed folder."""

    rank: int
    item: int
    similarity: float
    label: str
    path: str
    matches_majority: bool
    slide: str | None = None
    """For a slide tile: its slide's id, its group (patient), and where it lies on the slide
    (top left x, y and side in level-0 pixels, at the slide's mpp). None for an image file."""
    group: str | None = None
    x: int | None = None
    y: int | None = None
    size: int | None = None
    mpp: float | None = None


@dataclass
class MajorityRecord:
    """The most common label among the results (a hint, not a classification)."""

    label: str
    count: int
    of: int


@dataclass
class Timings:
    """Where the time of one search went, in milliseconds."""

    decode_ms: float
    embed_ms: float
    search_ms: float
    total_ms: float


@dataclass
class SearchAnswer:
    """The answer to one search, with what answered it: index, model, backend, search mode."""

    query: QueryRecord
    hits: list[HitRecord]
    majority: MajorityRecord | None
    k: int
    mode: str
    search_k: int | None
    """Annoy's candidates per query, as given or the default for k (None: exact search)."""
    search_k_scaled: bool
    """Whether search_k grows with the items `exclude` leaves out (none given), as in query."""
    index: str
    model: str
    backend: str
    timings: Timings


@dataclass
class ServiceInfo:
    """The index (its manifest), the model and backend serving it, its counts and limits."""

    index: str
    items: int
    labels: dict[str, int]
    model: str
    backend: str
    image_size: int
    manifest: dict
    limits: dict[str, int]
    batching: dict[str, int | float]


def _place(item: IndexItem) -> dict:
    """A hit's slide, group and place on its slide; only the group for an image file."""
    if not item.is_tile:
        return {"group": item.group}
    return {
        "slide": item.slide_id,
        "group": item.group,
        "x": item.x,
        "y": item.y,
        "size": item.tile_size,
        "mpp": item.mpp,
    }


def _members(items: list[IndexItem], key: str) -> dict[str, set[int]]:
    """The ids of the items sharing each value of the attribute `key` (slide_id or group)."""
    members: dict[str, set[int]] = defaultdict(set)
    for number, item in enumerate(items):
        value = getattr(item, key)
        if value is not None:
            members[value].add(number)
    return dict(members)


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1e3, 3)


class SearchService:
    """Searches one open index with one embedder; safe to call from many threads at once."""

    def __init__(
        self,
        index: OpenIndex,
        embedder: ImageEmbedder,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_MS / 1e3,
    ):
        if max_upload_bytes < 1 or max_pixels < 1:
            raise HistoseekError("the upload limits must be 1 or more")
        if embedder.fingerprint != index.manifest.model_fingerprint:
            raise HistoseekError(
                f"the index {display_path(index.path)} was built with another model "
                f"({index.manifest.model_reference})"
            )
        if embedder.tta != index.manifest.tta:
            built = "with" if index.manifest.tta else "without"
            raise HistoseekError(
                f"the index {display_path(index.path)} was built {built} --tta; "
                "its queries must be embedded the same way"
            )
        self.index = index
        self.embedder = embedder
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        config = embedder.config
        self.transform = EvalTransform(config.image_size, config.mean, config.std)
        self.decode_size = config.image_size
        self.batcher = MicroBatcher(embedder.embed_batch, embedder.batch_size, batch_window_s)
        self.source = Path(index.manifest.source_dir).resolve()
        self.self_matcher = SelfMatcher(index)
        self.item_thumbnail = lru_cache(maxsize=THUMBNAIL_CACHE)(self._item_thumbnail)
        self.slide_overview = lru_cache(maxsize=THUMBNAIL_CACHE)(self._slide_overview)
        self._slide_thumbnail = lru_cache(maxsize=SLIDE_VIEW_CACHE)(self._read_slide_thumbnail)
        # Exclusion by slide or patient looks its members up, not the whole index per query.
        self._members = {
            "same-slide": _members(index.items, "slide_id"),
            "same-group": _members(index.items, "group"),
        }

    def close(self) -> None:
        """Finish the queries already waiting and stop the batcher."""
        self.batcher.close()

    def info(self) -> ServiceInfo:
        """What this service searches and with what."""
        labels = Counter(display_path(item.label) for item in self.index.items)
        return ServiceInfo(
            index=display_path(self.index.path),
            items=len(self.index.items),
            labels=dict(sorted(labels.items())),
            model=self.embedder.reference,
            backend=self.embedder.name,
            image_size=self.embedder.config.image_size,
            manifest=self.index.manifest.to_dict(),
            limits={
                "max_k": MAX_K,
                "max_search_k": MAX_SEARCH_K,
                "max_upload_bytes": self.max_upload_bytes,
                "max_pixels": self.max_pixels,
            },
            batching={
                "max_batch": self.batcher.max_batch,
                "window_ms": _milliseconds(self.batcher.window_s),
            },
        )

    def preprocess(self, data: bytes) -> np.ndarray:
        """An uploaded image file decoded and preprocessed as indexed files were (CHW float32)."""
        if len(data) > self.max_upload_bytes:
            raise RequestError(
                413, f"the upload is {len(data):,} bytes; the limit is {self.max_upload_bytes:,}"
            )
        if not data:
            raise RequestError(400, "the upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                width, height = probe.size
        except UnidentifiedImageError:
            raise RequestError(415, "the upload is not an image file Pillow can read") from None
        except Image.DecompressionBombError as error:
            raise RequestError(413, f"the image is too large: {error}") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise RequestError(400, f"cannot read the uploaded image: {error}") from None
        if width * height > self.max_pixels:
            raise RequestError(
                413,
                f"the image is {width}×{height} = {width * height:,} pixels; "
                f"the limit is {self.max_pixels:,}",
            )
        try:
            # Large JPEGs decode at reduced scale, as `index` and `query` decode files.
            image = load_rgb(io.BytesIO(data), min_size=self.decode_size)
        except UnreadableImageError as error:
            cause = error.__cause__ or error
            raise RequestError(400, f"cannot decode the uploaded image: {cause}") from None
        return self.transform(image)

    def search_upload(self, data: bytes, name: str | None, options: SearchOptions) -> SearchAnswer:
        """Search with an uploaded image file (its embedding computed in a shared batch)."""
        if options.exclude is not None:
            raise RequestError(
                400,
                f"exclude={options.exclude} needs an indexed item as the query: "
                "an uploaded image's slide and patient are unknown",
            )
        started = time.perf_counter()
        with self.batcher.arriving() as embed:
            image = self.preprocess(data)
            decoded = time.perf_counter()
            vector = embed(image)
        embedded = time.perf_counter()
        # As `query` leaves out an indexed copy of its query file, so does an upload.
        copies = self.self_matcher.copies_of(data)
        left_out = set(copies) if options.exclude_self else set()
        query = QueryRecord(kind="upload", name=name, copies=copies)
        return self._answer(query, vector, left_out, options, started, decoded, embedded)

    def search_item(self, item_id: int, options: SearchOptions) -> SearchAnswer:
        """Search with an indexed item's stored embedding ("more like this")."""
        started = time.perf_counter()
        left_out = self._left_out(item_id, options)
        vector = np.asarray(self.index.vectors.embeddings[item_id], dtype=np.float32)
        ready = time.perf_counter()
        query = QueryRecord(kind="item", item=item_id)
        return self._answer(query, vector, left_out, options, started, ready, ready)

    def _left_out(self, item_id: int, options: SearchOptions) -> set[int]:
        """The items an item query leaves out: itself, and its slide's or patient's items."""
        item = self.item(item_id)
        left_out = {item_id} if options.exclude_self else set()
        if options.exclude is None:
            return left_out
        if options.exclude not in EXCLUDE_CHOICES:
            raise RequestError(
                400, f"exclude is {' or '.join(EXCLUDE_CHOICES)}, not {options.exclude!r}"
            )
        by_slide = options.exclude == "same-slide"
        key = item.slide_id if by_slide else item.group
        if key is None:
            what = "is an image file, not a slide tile" if by_slide else "has no group"
            raise RequestError(400, f"exclude={options.exclude}: item {item_id} {what}")
        left_out = left_out | self._members[options.exclude][key]
        if len(left_out) == len(self.index.items):
            whose = "slide" if by_slide else "group (patient)"
            raise RequestError(
                400,
                f"exclude={options.exclude} leaves nothing to search: every item of the index "
                f"is from the {whose} of item {item_id}",
            )
        return left_out

    def _answer(
        self,
        query: QueryRecord,
        vector: np.ndarray,
        left_out: set[int],
        options: SearchOptions,
        started: float,
        decoded: float,
        embedded: float,
    ) -> SearchAnswer:
        ((ids, similarities),) = nearest_items(
            self.index, vector[None, :], options.k, options.search_k, options.exact, [left_out]
        )
        labels = [display_path(self.index.items[int(item)].label) for item in ids]
        majority = majority_label(labels) if labels else None
        hits = [
            HitRecord(
                rank=rank,
                item=int(item),
                similarity=round(float(similarity), 6),
                label=label,
                path=display_path(self.index.items[int(item)].path),
                matches_majority=label == majority[0],
                **_place(self.index.items[int(item)]),
            )
            for rank, (item, similarity, label) in enumerate(
                zip(ids, similarities, labels, strict=True), 1
            )
        ]
        done = time.perf_counter()
        return SearchAnswer(
            query=query,
            hits=hits,
            majority=MajorityRecord(majority[0], majority[1], len(hits)) if majority else None,
            k=options.k,
            mode="exact" if options.exact else "annoy",
            search_k=None
            if options.exact
            else annoy_search_k(
                options.k, len(self.index.items), self.index.manifest.trees, options.search_k
            ),
            search_k_scaled=(
                not options.exact and options.search_k is None and options.exclude is not None
            ),
            index=display_path(self.index.path),
            model=self.embedder.reference,
            backend=self.embedder.name,
            timings=Timings(
                decode_ms=_milliseconds(decoded - started),
                embed_ms=_milliseconds(embedded - decoded),
                search_ms=_milliseconds(done - embedded),
                total_ms=_milliseconds(done - started),
            ),
        )

    def item(self, item_id: int) -> IndexItem:
        """The indexed item with this id, or a 404."""
        if not 0 <= item_id < len(self.index.items):
            raise RequestError(
                404,
                f"no item {item_id} in this index (its ids are 0 to {len(self.index.items) - 1})",
            )
        return self.index.items[item_id]

    def item_file(self, item_id: int) -> Path:
        """The image file of an item, refused when it would resolve outside the indexed folder."""
        path = self.index.file_of(self.item(item_id)).resolve()
        if not path.is_relative_to(self.source):
            raise RequestError(403, f"item {item_id}'s file lies outside the indexed folder")
        return path

    def item_image(self, item_id: int) -> Image.Image:
        """An item's image at full resolution, decoded to RGB (a tile read from its slide)."""
        path = self.item_file(item_id)
        if not path.exists():
            raise RequestError(404, f"cannot read item {item_id}'s image: the file is missing")
        try:
            return read_item_image(self.source, self.item(item_id))
        except HistoseekError as error:
            raise RequestError(404, f"item {item_id}: {error}") from None

    def item_png(self, item_id: int) -> bytes:
        """An item's image at full resolution as PNG (any indexed format shows in a browser)."""
        buffer = io.BytesIO()
        self.item_image(item_id).save(buffer, format="PNG")
        return buffer.getvalue()

    def _item_thumbnail(self, item_id: int) -> bytes:
        """An item's image fitted into THUMBNAIL_SIZE pixels, as JPEG (cached)."""
        image = self.item_image(item_id)
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def _slide_overview(self, item_id: int) -> bytes:
        """A tile item's slide as a thumbnail with the tile's box drawn on it, as JPEG (cached)."""
        item = self.item(item_id)
        if not item.is_tile:
            raise RequestError(404, f"item {item_id} is an image file, not a slide tile")
        thumbnail, dimensions = self._slide_thumbnail(self.item_file(item_id))
        box = Box(item.x, item.y, item.tile_size, item.tile_size)
        buffer = io.BytesIO()
        # No chroma subsampling: the thin box outline stays sharp.
        draw_boxes(thumbnail, dimensions, [box]).save(
            buffer, format="JPEG", quality=85, subsampling=0
        )
        return buffer.getvalue()

    def _read_slide_thumbnail(self, path: Path) -> tuple[Image.Image, tuple[int, int]]:
        """(the slide's thumbnail, its level-0 size), or a 404 when it cannot be read now."""
        try:
            with open_slide(path) as slide:
                return slide.thumbnail(SLIDE_VIEW_SIZE), slide.dimensions
        except HistoseekError as error:
            raise RequestError(404, f"cannot read the slide: {error}") from None
