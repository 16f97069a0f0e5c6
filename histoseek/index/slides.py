"""Slides in an index: the tiling options, each slide's tissue tiles, and when a shard still fits.

A slide is cut into the tissue tiles of a grid of `patch_size`-pixel tiles at `mpp` (see
histoseek.slide.tiling); each tile becomes one item, read back with read_tile. Its shard is
reused while the slide's files, the model and these options are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histoseek.errors import HistoseekError
from histoseek.index.items import IndexItem
from histoseek.index.labels import SlideIdentity
from histoseek.index.shards import ShardInfo, SlideRecord
from histoseek.prepare.defaults import DEFAULT_MIN_TISSUE, DEFAULT_PATCH_SIZE
from histoseek.slide.defaults import DEFAULT_MPP
from histoseek.slide.folder import SlideFile
from histoseek.slide.reader import check_mpp, open_slide
from histoseek.slide.tiling import tile_size, tissue_tiles


@dataclass(frozen=True)
class TilingOptions:
    """How slides are cut into tiles; recorded in the manifest and in every slide's shard."""

    mpp: float = DEFAULT_MPP
    """Microns per pixel the tiles are read at (--mpp)."""
    patch_size: int = DEFAULT_PATCH_SIZE
    """Side of a tile as read, in pixels (--patch-size)."""
    min_tissue: float = DEFAULT_MIN_TISSUE
    """Smallest fraction of tissue a tile needs to be kept (--min-tissue)."""
    slide_mpp: float | None = None
    """Microns per pixel of slides whose files record none (--slide-mpp)."""

    def __post_init__(self) -> None:
        check_mpp(self.mpp, "--mpp")
        if self.slide_mpp is not None:
            check_mpp(self.slide_mpp, "--slide-mpp")
        if self.patch_size < 1:
            raise HistoseekError(f"--patch-size must be at least 1, not {self.patch_size}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise HistoseekError(f"--min-tissue is a fraction from 0 to 1, not {self.min_tissue}")

    def shard_tiling(self) -> dict:
        """What a slide's tiles depend on besides the slide itself (the shard records it)."""
        return {"mpp": self.mpp, "patch_size": self.patch_size, "min_tissue": self.min_tissue}


@dataclass
class TiledSlide:
    """A slide's tissue tiles, and the state of its files when they were found."""

    file: SlideFile
    record: SlideRecord
    tile_size: int
    """Side of every tile in level-0 pixels."""
    origins: np.ndarray
    """(tiles, 2) level-0 (x, y) of each tile's top left, row by row: 8 bytes a tile."""

    def __len__(self) -> int:
        return len(self.origins)

    def items(self, identity: SlideIdentity, options: TilingOptions) -> list[IndexItem]:
        """One index item per tile; `item_source` turns each into what is read and embedded."""
        patch = options.patch_size
        return [
            IndexItem(
                path=self.file.relative,
                label=identity.label,
                width=patch,
                height=patch,
                size=self.record.size,
                mtime_ns=self.record.mtime_ns,
                slide_id=identity.slide_id,
                group=identity.group,
                x=int(x),
                y=int(y),
                tile_size=self.tile_size,
                mpp=options.mpp,
            )
            for x, y in self.origins
        ]


def find_tissue(file: SlideFile, size: int, mtime_ns: int, options: TilingOptions) -> TiledSlide:
    """Open the slide and find its tissue tiles at the options' mpp (never decoding it whole).

    SlideError (one line) when it cannot be opened, its mpp is unknown, it has no true tile at
    the options' mpp (`grid_tile_size`) or a region read fails.
    """
    with open_slide(file.path, slide_mpp=options.slide_mpp) as slide:
        tiles = tissue_tiles(slide, options.patch_size, options.mpp, options.min_tissue)
        slide_mpp = slide.require_mpp()
        record = SlideRecord(file.relative, size, mtime_ns, slide_mpp, slide.mpp_from_option)
    origins = np.array([(tile.x, tile.y) for tile in tiles], dtype=np.int32).reshape(-1, 2)
    side = tile_size(slide_mpp, options.mpp, options.patch_size)
    return TiledSlide(file, record, side, origins)


def shard_fits(
    info: ShardInfo,
    relative: str,
    size: int,
    mtime_ns: int,
    recipe: tuple[str, dict, bool, str],
    options: TilingOptions,
) -> bool:
    """Whether a shard holds the slide at `relative` as it is now, embedded as this run would
    (`recipe`: as ShardInfo.recipe, the run's model fingerprint and config, TTA, precision)."""
    slide = info.slide
    return (
        slide is not None
        and (slide.path, slide.size, slide.mtime_ns) == (relative, size, mtime_ns)
        and info.recipe() == recipe
        and info.tiling == options.shard_tiling()
        and (
            not slide.mpp_from_option
            or (options.slide_mpp is not None and math.isclose(slide.mpp, options.slide_mpp))
        )
    )
