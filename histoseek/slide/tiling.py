"""Cutting a slide into tissue tiles at a target resolution, and picking a spread-out few.

A tile is a square of `size` level-0 pixels whose top left is level-0 (x, y); read back, it
is resampled to `patch_size` pixels, which makes its resolution `mpp`. Those numbers are all an
index needs to store to read the same pixels again (`read_tile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.prepare.defaults import DEFAULT_MIN_TISSUE, DEFAULT_PATCH_SIZE
from histoseek.prepare.tiling import tile_origins, tissue_fractions
from histoseek.prepare.tissue import tissue_mask
from histoseek.slide.defaults import DEFAULT_MAX_TILES, DEFAULT_MPP
from histoseek.slide.reader import Slide, SlideError

# The tissue mask gives each tile this many pixels a side: fractions in steps of 1/256.
MASK_PIXELS_PER_TILE = 16
# A tile's side is rounded to whole level-0 pixels, which moves its real mpp off the target;
# the mpp its tiles record may be this far off, and no further.
MAX_MPP_ROUNDING = 0.01
# The tissue mask's longer side stays within this, whatever the slide's size (memory).
MAX_MASK_SIDE = 4096


@dataclass(frozen=True)
class Tile:
    """One square tile of a slide, in level-0 pixels, and how it is read back."""

    x: int
    y: int
    size: int
    """Side in level-0 pixels."""
    patch_size: int
    """Side in pixels of the tile as read (the image a model sees)."""
    mpp: float
    """Microns per pixel of the tile as read (the target; size × slide mpp / patch_size
    differs from it only by the rounding of `size` to whole pixels)."""
    tissue: float
    """Fraction of the tile that the tissue mask covers."""


@dataclass(frozen=True)
class TissueMap:
    """A slide's tissue mask at low resolution, and the grid of tiles it was measured for."""

    mask: np.ndarray
    """Boolean (rows, columns) mask; each tile covers `mask_pixels_per_tile` pixels a side."""
    mask_pixels_per_tile: int
    tiles: list[Tile]
    """Every whole tile of the grid, row by row, with its tissue fraction (none dropped)."""


def tile_size(slide_mpp: float, mpp: float, patch_size: int) -> int:
    """The level-0 side of a tile of `patch_size` pixels at `mpp` on a slide of `slide_mpp`."""
    return max(1, round(patch_size * mpp / slide_mpp))


def grid_tile_size(slide: Slide, patch_size: int, mpp: float) -> int:
    """The level-0 side of the slide's tiles (`tile_size`), or SlideError (one line) when
    rounding it would leave the tiles more than MAX_MPP_ROUNDING off `mpp`, or when the slide
    is smaller than one tile. Raises UnknownMppError without an mpp."""
    slide_mpp = slide.require_mpp()
    size = tile_size(slide_mpp, mpp, patch_size)
    real = size * slide_mpp / patch_size
    if abs(real - mpp) > MAX_MPP_ROUNDING * mpp:
        # Rounding moves the side by half a pixel at most: this side keeps within the bound.
        least = 0.5 / MAX_MPP_ROUNDING * slide_mpp / patch_size
        raise SlideError(
            f"{slide.name}: a {patch_size}-px tile at --mpp {mpp:g} is "
            f"{patch_size * mpp / slide_mpp:.3g} px of this slide at {slide_mpp:g} µm/px "
            f"({slide.mpp_source}); rounded to {size} px it would be at {real:.3g} µm/px, "
            f"{abs(real - mpp) / mpp:.0%} off (an --mpp of {least:.3g} or more keeps within "
            f"{MAX_MPP_ROUNDING:.0%})"
        )
    width, height = slide.dimensions
    if size > min(width, height):
        raise SlideError(
            f"{slide.name}: smaller than one {patch_size}-px tile at --mpp {mpp:g}: it is "
            f"{width}×{height} px at {slide_mpp:g} µm/px ({slide.mpp_source}), a tile "
            f"{size} px a side"
        )
    return size


def _check(patch_size: int, mpp: float, min_tissue: float) -> None:
    if patch_size < 1:
        raise HistoseekError(f"--patch-size must be at least 1, not {patch_size}")
    if not mpp > 0:
        raise HistoseekError(f"--mpp must be positive, not {mpp}")
    if not 0.0 <= min_tissue <= 1.0:
        raise HistoseekError(f"--min-tissue is a fraction from 0 to 1, not {min_tissue}")


def tissue_map(
    slide: Slide, patch_size: int = DEFAULT_PATCH_SIZE, mpp: float = DEFAULT_MPP
) -> TissueMap:
    """The grid of whole `patch_size`-pixel tiles at `mpp` over the slide, each with its
    tissue fraction from prepare's tissue mask on a low-resolution overview.

    The overview is read from the pyramid level nearest its scale, piece by piece, so this
    never decodes the slide at full resolution. Raises UnknownMppError without an mpp, and
    SlideError where the slide has no tile at `mpp` or no true one (`grid_tile_size`).
    """
    _check(patch_size, mpp, 0.0)
    size = grid_tile_size(slide, patch_size, mpp)
    width, height = slide.dimensions
    per_tile = max(1, min(MASK_PIXELS_PER_TILE, size, MAX_MASK_SIDE * size // max(width, height)))
    # A mask pixel is exactly size / per_tile level-0 pixels, so tile k is mask pixels
    # [k * per_tile, (k + 1) * per_tile) and the grid and the mask line up without rounding.
    scale = size / per_tile
    mask_width, mask_height = math.ceil(width / scale), math.ceil(height / scale)
    overview = slide.read_scaled(
        0, 0, round(mask_width * scale), round(mask_height * scale), mask_width, mask_height
    )
    mask = tissue_mask(np.asarray(overview))
    origins = tile_origins(width, height, size, size)
    mask_origins = [(x // size * per_tile, y // size * per_tile) for x, y in origins]
    tiles = [
        Tile(x, y, size, patch_size, mpp, fraction)
        for (x, y), fraction in zip(
            origins, tissue_fractions(mask, mask_origins, per_tile), strict=True
        )
    ]
    return TissueMap(mask, per_tile, tiles)


def tissue_tiles(
    slide: Slide,
    patch_size: int = DEFAULT_PATCH_SIZE,
    mpp: float = DEFAULT_MPP,
    min_tissue: float = DEFAULT_MIN_TISSUE,
) -> list[Tile]:
    """The tiles of the slide's grid at `mpp` holding at least `min_tissue` tissue, row by row."""
    _check(patch_size, mpp, min_tissue)
    return [tile for tile in tissue_map(slide, patch_size, mpp).tiles if tile.tissue >= min_tissue]


def read_tile(slide: Slide, tile: Tile) -> Image.Image:
    """The tile's pixels: its level-0 square resampled to patch_size, from the best level."""
    return slide.read_scaled(tile.x, tile.y, tile.size, tile.size, tile.patch_size, tile.patch_size)


def read_region_at_mpp(
    slide: Slide, x: int, y: int, width: int, height: int, mpp: float
) -> Image.Image:
    """The level-0 region (x, y, width, height) resampled to `mpp` (for region queries)."""
    scale = slide.require_mpp() / mpp
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return slide.read_scaled(x, y, width, height, *size)


def spread_sample(tiles: list[Tile], max_tiles: int = DEFAULT_MAX_TILES) -> list[Tile]:
    """At most `max_tiles` of `tiles`, spread over the slide, in row order; deterministic.

    Farthest-point sampling: start from the tile nearest the centroid, then repeatedly add the
    tile farthest from all chosen so far (ties go to the first in row order), so the sample
    covers the tissue evenly whatever order the tiles come in.
    """
    if max_tiles < 1:
        raise HistoseekError(f"--max-tiles must be at least 1, not {max_tiles}")
    ordered = sorted(tiles, key=lambda tile: (tile.y, tile.x))
    if len(ordered) <= max_tiles:
        return ordered
    centres = np.array(
        [(tile.x + tile.size / 2, tile.y + tile.size / 2) for tile in ordered], dtype=np.float64
    )
    first = int(np.argmin(((centres - centres.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    distance = ((centres - centres[first]) ** 2).sum(axis=1)
    for _ in range(max_tiles - 1):
        farthest = int(np.argmax(distance))
        chosen.append(farthest)
        np.minimum(distance, ((centres - centres[farthest]) ** 2).sum(axis=1), out=distance)
    return [ordered[index] for index in sorted(chosen)]
