"""Slides for the tests, written on the spot. None of them was scanned.

- Pseudo-slides ASSEMBLED from real kather2016 tiles (150 px, 0.495 µm/px): the tiles of one
  class from one source image (the `CRC-Prim-HE-NN` token in their names) stitched side by side
  on blank glass, saved as a pyramidal tiled TIFF or as an Aperio-style SVS. The tissue is real,
  the slide is not: neighbouring tiles were not neighbours on any glass slide.
- Synthetic slides drawn by histoseek itself, of a chosen size.
- A sparse, large slide written tile by tile, for the memory test.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoseek.slide.pyramid import TILE_SIDE, write_pyramidal_tiff, write_streamed_pyramid
from histoseek.slide.synth import SLIDE_MPP, render_slide

KATHER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kather2016"
KATHER_MPP = 0.495
KATHER_TILE = 150
GLASS = 244
SOURCE_TOKEN = re.compile(r"CRC-Prim-HE-\d+")


@dataclass(frozen=True)
class AssembledSlide:
    """A slide written by these helpers, with the level-0 pixels it was written from."""

    path: Path
    rgb: np.ndarray
    mpp: float
    tissue_box: tuple[int, int, int, int]
    """(left, top, right, bottom) of the tissue in level-0 pixels; glass all around."""


def kather_sources(class_name: str) -> dict[str, list[Path]]:
    """The kather2016 tiles of a class, grouped by source image token (CRC-Prim-HE-NN)."""
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available: {KATHER} is absent")
    sources: dict[str, list[Path]] = defaultdict(list)
    for tile in sorted((KATHER / class_name).glob("*.tif")):
        match = SOURCE_TOKEN.search(tile.name)
        if match:
            sources[match.group()].append(tile)
    return dict(sources)


def aperio_description(width: int, height: int, mpp: float) -> str:
    """An ImageDescription in Aperio's layout (first line, then `key = value` fields by |)."""
    return (
        "Aperio-style description written by histoseek's tests: assembled, not scanned\r\n"
        f"{width}x{height} [0,0 {width}x{height}] ({TILE_SIDE}x{TILE_SIDE}) zlib"
        f"|AppMag = 20|MPP = {mpp}|Comment = pseudo-slide of kather2016 tiles, not a scan"
    )


def assemble_kather_slide(
    folder: Path,
    class_name: str,
    aperio: bool = False,
    margin: int = 200,
    source: str | None = None,
) -> AssembledSlide:
    """Stitch the tiles of `class_name` from one source image (`source`, a CRC-Prim-HE-NN
    token; default: the one with most tiles) into a pseudo-slide in `folder`.

    The tiles fill a near-square block row by row (empty cells stay glass), with `margin`
    pixels of glass around it. `aperio` writes an .svs whose mpp is only in the Aperio
    description; otherwise a generic .tif whose resolution tags carry the mpp.
    """
    sources = kather_sources(class_name)
    if source is None:
        source = max(sources, key=lambda name: (len(sources[name]), name))
    tiles = sources[source]
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    width = columns * KATHER_TILE + 2 * margin
    height = rows * KATHER_TILE + 2 * margin
    rgb = np.full((height, width, 3), GLASS, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        y, x = margin + row * KATHER_TILE, margin + column * KATHER_TILE
        rgb[y : y + KATHER_TILE, x : x + KATHER_TILE] = np.asarray(Image.open(tile).convert("RGB"))
    name = f"assembled_{class_name}_{source}.{'svs' if aperio else 'tif'}"
    path = folder / name
    if aperio:
        write_pyramidal_tiff(path, rgb, aperio_description(width, height, KATHER_MPP), mpp=None)
    else:
        description = f"pseudo-slide assembled from kather2016 {class_name} {source}, not scanned"
        write_pyramidal_tiff(path, rgb, description, mpp=KATHER_MPP)
    box = (margin, margin, margin + columns * KATHER_TILE, margin + rows * KATHER_TILE)
    return AssembledSlide(path, rgb, KATHER_MPP, box)


def synthetic_slide(
    path: Path, tissue: str = "mucosa", size: tuple[int, int] = (2048, 1536), seed: int = 0
) -> AssembledSlide:
    """A small synthetic slide (not real tissue) at 0.5 µm/px, with its level-0 pixels."""
    rgb = render_slide(tissue, *size, np.random.default_rng(seed))
    write_pyramidal_tiff(path, rgb, f"histoseek test slide, synthetic {tissue}", SLIDE_MPP)
    return AssembledSlide(path, rgb, SLIDE_MPP, (0, 0, *size))


def corrupt_levels(path: Path, target: Path, levels: tuple[int, ...] = (0,)) -> None:
    """A copy of the pyramidal TIFF `path` whose tile data in `levels` is overwritten with
    zeros, headers intact: it opens, and its other levels read, but no region of those does."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tiff:
        for level in levels:
            page = tiff.pages[level]
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                data[offset : offset + count] = bytes(count)
    target.write_bytes(bytes(data))


def sparse_slide(path: Path, side: int = 20000) -> list[tuple[int, int, int]]:
    """A side × side pyramidal TIFF at 0.5 µm/px, mostly glass, written tile by tile (never
    whole in memory); returns its tissue squares as (x, y, size) in level-0 pixels."""
    patches = [(2000, 3000, 2400), (9000, 8000, 3000), (15000, 14000, 2200), (4000, 16000, 1800)]
    glass = np.full((TILE_SIDE, TILE_SIDE, 3), GLASS, np.uint8)

    def tile_at(downsample: int, left: int, top: int) -> np.ndarray:
        """Glass, and flat H&E pink inside the patches."""
        tile = glass
        for x, y, size in patches:
            x0, y0 = x // downsample - left, y // downsample - top
            x1, y1 = x0 + size // downsample, y0 + size // downsample
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, TILE_SIDE), min(y1, TILE_SIDE)
            if x0 < x1 and y0 < y1:
                tile = glass.copy() if tile is glass else tile
                tile[y0:y1, x0:x1] = (200, 110, 170)
        return tile

    write_streamed_pyramid(path, side, tile_at, SLIDE_MPP)
    return patches
