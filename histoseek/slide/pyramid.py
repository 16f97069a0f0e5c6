"""Writing an RGB image as a pyramidal tiled TIFF that OpenSlide opens as a multi-level slide.

OpenSlide's generic-TIFF and Aperio drivers take every tiled top-level TIFF directory as a
level (pyramids stored as SubIFDs stay invisible to them), and OpenSlide 4 reads the mpp of a
generic TIFF from its XResolution/YResolution tags. tifffile compresses with zlib on its own;
JPEG and the other codecs need the imagecodecs package, which histoseek does not require.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from histoseek import __version__
from histoseek.fsutil import atomic_file

TILE_SIDE = 256
# Levels halve until the longer side is at most this, as scanners' pyramids end near 1-2k px.
SMALLEST_LEVEL_SIDE = 512
_CLASSIC_TIFF_LIMIT = 2**32 - 2**26

TileAt = Callable[[int, int, int], np.ndarray]
"""(downsample, left, top) of a level → that level's TILE_SIDE² RGB tile at (left, top)."""


def pyramid_levels(rgb: np.ndarray) -> list[np.ndarray]:
    """Level 0 and its 2× box-filtered reductions, down to SMALLEST_LEVEL_SIDE pixels."""
    levels = [rgb]
    while max(levels[-1].shape[:2]) > SMALLEST_LEVEL_SIDE:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    return levels


def write_pyramidal_tiff(
    path: Path, rgb: np.ndarray, description: str, mpp: float | None, tile: int = TILE_SIDE
) -> int:
    """Write (H, W, 3) uint8 `rgb` as a tiled, zlib-compressed TIFF pyramid; return its levels.

    `description` is level 0's ImageDescription (OpenSlide picks the vendor from it: one that
    starts "Aperio" makes an SVS). With `mpp`, each level's resolution tags record its µm per
    pixel in pixels per centimetre. The file appears only once it is complete.
    """
    levels = pyramid_levels(rgb)
    bigtiff = sum(level.nbytes for level in levels) > _CLASSIC_TIFF_LIMIT
    with atomic_file(path) as staging, tifffile.TiffWriter(staging, bigtiff=bigtiff) as writer:
        for index, level in enumerate(levels):
            resolution = None
            if mpp is not None:
                scale_x = rgb.shape[1] / level.shape[1]
                scale_y = rgb.shape[0] / level.shape[0]
                resolution = (1e4 / (mpp * scale_x), 1e4 / (mpp * scale_y))
            writer.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="zlib",
                subfiletype=1 if index else 0,
                description=description if index == 0 else None,
                resolution=resolution,
                resolutionunit="CENTIMETER" if resolution else None,
                software=f"histoseek {__version__}",
                metadata=None,
            )
    return len(levels)


def write_streamed_pyramid(
    path: Path, side: int, tile_at: TileAt, mpp: float, description: str | None = None
) -> int:
    """Write a side × side RGB slide as a tiled, zlib-compressed TIFF pyramid tile by tile,
    never whole in memory (for slides too large to hold); return its levels.

    `tile_at` draws each level's tiles; levels halve down to SMALLEST_LEVEL_SIDE pixels, each
    with its µm per pixel in the resolution tags. The file appears only once it is complete.
    """
    levels = 0
    with atomic_file(path) as staging, tifffile.TiffWriter(staging, bigtiff=True) as writer:
        downsample = 1
        while True:
            level_side = math.ceil(side / downsample)

            def tiles(downsample: int = downsample, level_side: int = level_side) -> Iterator:
                for top in range(0, level_side, TILE_SIDE):
                    for left in range(0, level_side, TILE_SIDE):
                        yield tile_at(downsample, left, top)

            writer.write(
                tiles(),
                shape=(level_side, level_side, 3),
                dtype=np.uint8,
                photometric="rgb",
                tile=(TILE_SIDE, TILE_SIDE),
                compression="zlib",
                subfiletype=1 if downsample > 1 else 0,
                description=description if downsample == 1 else None,
                resolution=(1e4 / (mpp * downsample),) * 2,
                resolutionunit="CENTIMETER",
                software=f"histoseek {__version__}",
                metadata=None,
            )
            levels += 1
            if level_side <= SMALLEST_LEVEL_SIDE:
                return levels
            downsample *= 2
