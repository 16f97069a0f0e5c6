"""Queries from slides: a region read at the index's resolution, or a sample of a slide's tiles.

Both are read exactly as the index reads its tiles (histoseek.slide.tiling) and preprocessed as
the index's images were (the model's evaluation transform), so a region at a tile's place and
size embeds to that tile's vector.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path
from histoseek.data.sources import ImageInMemory
from histoseek.data.split import compile_group_regex, regex_group
from histoseek.errors import HistoseekError
from histoseek.index.items import IndexItem
from histoseek.slide.defaults import EXCLUDE_CHOICES
from histoseek.slide.reader import open_slide
from histoseek.slide.tiling import read_region_at_mpp, read_tile, spread_sample, tissue_tiles

_REGION = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")
# A region this many times the tile's side (at the index's mpp), or more out of square, is
# seen by the model at another scale than the index's tiles: worth a note.
SCALE_NOTE_FACTOR = 1.5


@dataclass(frozen=True)
class Box:
    """A rectangle of a slide in level-0 pixels: top left (x, y), width and height."""

    x: int
    y: int
    width: int
    height: int


def parse_region(text: str) -> Box:
    """A --region value, X,Y,W,H in level-0 pixels (whole numbers, W and H at least 1)."""
    match = _REGION.fullmatch(text)
    if match is None:
        raise HistoseekError(
            f"--region takes X,Y,W,H in level-0 pixels, four whole numbers such as "
            f"1000,2000,448,448: not {text!r}"
        )
    x, y, width, height = (int(part) for part in match.groups())
    if width < 1 or height < 1:
        raise HistoseekError(f"--region {text}: width and height must be at least 1 pixel")
    return Box(x, y, width, height)


@dataclass(frozen=True)
class TileGrid:
    """How an index reads slides: tiles of `patch_size` px at `mpp`, kept with `min_tissue`."""

    mpp: float
    patch_size: int
    min_tissue: float


@dataclass
class SlideQuery:
    """The images a slide query embeds, and where each lies on the slide (level-0 boxes)."""

    path: Path
    kind: str
    """"region" or "slide"."""
    boxes: list[Box]
    images: list[Image.Image]
    mpp: float
    """The slide's own microns per pixel (level 0)."""

    def sources(self) -> list[ImageInMemory]:
        """The images as embedding sources, each named by its slide and place."""
        return [
            ImageInMemory(image, f"{display_path(self.path)} ({self.kind} at {box.x}, {box.y})")
            for image, box in zip(self.images, self.boxes, strict=True)
        ]


def region_query(
    path: Path,
    region: Box,
    grid: TileGrid,
    slide_mpp: float | None = None,
    notify: Notify = lambda message: None,
) -> SlideQuery:
    """The region of the slide at `path`, read at the grid's mpp (one image).

    Refused in one line: a region that is not inside the slide, a slide whose mpp is unknown
    (`slide_mpp` gives it), an unreadable slide.
    """
    with open_slide(path, slide_mpp) as slide:
        width, height = slide.dimensions
        if region.x + region.width > width or region.y + region.height > height:
            raise HistoseekError(
                f"--region {region.x},{region.y},{region.width},{region.height} is not inside "
                f"{slide.name}, which is {width}×{height} px at level 0"
            )
        mpp = slide.require_mpp()
        image = read_region_at_mpp(slide, region.x, region.y, region.width, region.height, grid.mpp)
    longer, shorter = max(image.size), min(image.size)
    if longer > SCALE_NOTE_FACTOR * grid.patch_size or longer > SCALE_NOTE_FACTOR * shorter:
        notify(
            f"note: the region is {image.width}×{image.height} px at {grid.mpp:g} µm/px; the "
            f"model sees it squeezed into a square like the index's {grid.patch_size}-px tiles, "
            "so it is compared at another scale or shape than they were"
        )
    return SlideQuery(Path(path), "region", [region], [image], mpp)


def whole_slide_query(
    path: Path,
    grid: TileGrid,
    max_tiles: int,
    slide_mpp: float | None = None,
    progress: Progress | None = None,
) -> SlideQuery:
    """A spread-out sample of at most `max_tiles` of the slide's tissue tiles on the grid.

    Refused in one line: no tissue tile at all, no tile on the grid (`grid_tile_size`), an
    unknown mpp, an unreadable slide.
    """
    with open_slide(path, slide_mpp) as slide:
        mpp = slide.require_mpp()
        tiles = tissue_tiles(slide, grid.patch_size, grid.mpp, grid.min_tissue)
        if not tiles:
            raise HistoseekError(
                f"{slide.name}: no {grid.patch_size}-px tile at {grid.mpp:g} µm/px holds "
                f"--min-tissue {grid.min_tissue:g} of tissue; nothing to query with"
            )
        sample = spread_sample(tiles, max_tiles)
        images = []
        for done, tile in enumerate(sample, 1):
            images.append(read_tile(slide, tile))
            if progress is not None:
                progress(done, len(sample))
    boxes = [Box(tile.x, tile.y, tile.size, tile.size) for tile in sample]
    return SlideQuery(Path(path), "slide", boxes, images, mpp)


@dataclass(frozen=True)
class QueryOrigin:
    """The slide and group (patient) a query comes from, as far as they are known."""

    slide_id: str | None
    """None for a plain image: it is no slide."""
    group: str | None
    """None where nothing says (an image that --group-regex does not match)."""
    in_index: bool
    """Whether the query is itself in the index (the same file, or the same slide id)."""


def query_origin(
    items: Sequence[IndexItem],
    source_dir: Path,
    path: Path,
    is_slide: bool,
    group_regex: str | None = None,
) -> QueryOrigin:
    """Which slide and group a query file is: those of its entry in the index when it is
    indexed (the same file, or for a slide the same slide id), else its own slide id (file
    stem) and the group `group_regex` finds in its path (a slide's own id if none)."""
    stem = Path(path).stem
    try:
        relative = Path(path).resolve().relative_to(Path(source_dir).resolve()).as_posix()
    except ValueError:
        relative = None  # outside the indexed folder
    by_id = None
    for item in items:
        if item.is_tile != is_slide:
            continue
        if item.path == relative:
            return QueryOrigin(item.slide_id, item.group, True)
        if is_slide and by_id is None and item.slide_id == stem:
            by_id = item
    if by_id is not None:
        return QueryOrigin(stem, by_id.group, True)
    group = regex_group(compile_group_regex(group_regex), str(path))
    if is_slide:
        return QueryOrigin(stem, group or stem, False)
    return QueryOrigin(None, group, False)


def excluded_items(
    items: Sequence[IndexItem], origin: QueryOrigin, exclude: str | None, shown: str
) -> frozenset[int]:
    """The items `exclude` ("same-slide" or "same-group") leaves out for a query of `origin`;
    one clear line where the query's slide or group is unknown."""
    if exclude is None:
        return frozenset()
    if exclude not in EXCLUDE_CHOICES:
        raise HistoseekError(f"--exclude is {' or '.join(EXCLUDE_CHOICES)}, not {exclude!r}")
    if exclude == "same-slide":
        if origin.slide_id is None:
            raise HistoseekError(
                f"--exclude same-slide: {shown} is an image, not a slide; "
                "use --exclude same-group with --group-regex"
            )
        return frozenset(i for i, item in enumerate(items) if item.slide_id == origin.slide_id)
    if origin.group is None:
        raise HistoseekError(
            f"--exclude same-group: the group (patient) of {shown} is unknown: it is not in "
            "the index and --group-regex does not match its path"
        )
    return frozenset(i for i, item in enumerate(items) if item.group == origin.group)
