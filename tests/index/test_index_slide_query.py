"""Queries from slides: --region parsing, the region read at the index's mpp, the whole-slide
sample, and embedding images held in memory exactly as files are embedded.

The slides are pseudo-slides assembled from real kather2016 tiles (not scanned); see
tests/slide/assembled_slides.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from assembled_slides import GLASS, KATHER_MPP, assemble_kather_slide

from histoseek.errors import HistoseekError
from histoseek.index.slide_query import (
    Box,
    TileGrid,
    parse_region,
    region_query,
    whole_slide_query,
)
from histoseek.slide.pyramid import write_pyramidal_tiff
from histoseek.slide.reader import UnknownMppError, open_slide
from histoseek.slide.tiling import read_tile, spread_sample, tissue_tiles

GRID = TileGrid(mpp=0.5, patch_size=96, min_tissue=0.5)


@pytest.fixture(scope="module")
def stroma_slide(tmp_path_factory):
    return assemble_kather_slide(tmp_path_factory.mktemp("stroma"), "02_STROMA")


def test_region_values():
    assert parse_region("10,20,30,40") == Box(10, 20, 30, 40)
    assert parse_region(" 0, 0 ,1,1 ") == Box(0, 0, 1, 1)
    for bad in ("10,20,30", "a,b,c,d", "-1,0,10,10", "1.5,0,10,10", "0,0,10,10,10", ""):
        with pytest.raises(HistoseekError, match="X,Y,W,H") as error:
            parse_region(bad)
        assert "\n" not in str(error.value)
    with pytest.raises(HistoseekError, match="at least 1 pixel"):
        parse_region("0,0,0,10")


def test_a_region_at_a_tiles_place_reads_that_tiles_pixels(stroma_slide):
    with open_slide(stroma_slide.path) as slide:
        tiles = tissue_tiles(slide, GRID.patch_size, GRID.mpp, GRID.min_tissue)
        tile = tiles[len(tiles) // 2]
        expected = np.asarray(read_tile(slide, tile))
    query = region_query(stroma_slide.path, Box(tile.x, tile.y, tile.size, tile.size), GRID)
    assert (query.kind, query.boxes, query.mpp) == (
        "region",
        [Box(tile.x, tile.y, tile.size, tile.size)],
        KATHER_MPP,
    )
    assert np.array_equal(np.asarray(query.images[0]), expected)


def test_a_region_outside_the_slide_or_of_unknown_mpp_is_one_line(stroma_slide, tmp_path):
    width, height = stroma_slide.rgb.shape[1], stroma_slide.rgb.shape[0]
    with pytest.raises(HistoseekError, match=f"not inside .*{width}×{height}"):
        region_query(stroma_slide.path, Box(width - 10, 0, 20, 20), GRID)
    plain = tmp_path / "no_mpp.png"
    from PIL import Image

    Image.fromarray(stroma_slide.rgb[:400, :400]).save(plain)
    with pytest.raises(UnknownMppError, match="microns per pixel unknown"):
        region_query(plain, Box(0, 0, 100, 100), GRID)
    assert region_query(plain, Box(0, 0, 100, 100), GRID, slide_mpp=0.5).images[0].size == (
        100,
        100,
    )


def test_a_large_or_long_region_is_noted(stroma_slide):
    notes: list[str] = []
    region_query(stroma_slide.path, Box(200, 200, 400, 100), GRID, notify=notes.append)
    assert len(notes) == 1 and "squeezed into a square" in notes[0]
    notes.clear()
    region_query(stroma_slide.path, Box(200, 200, 97, 97), GRID, notify=notes.append)
    assert notes == []


def test_a_whole_slide_query_is_its_spread_out_tissue_tiles(stroma_slide):
    with open_slide(stroma_slide.path) as slide:
        tiles = tissue_tiles(slide, GRID.patch_size, GRID.mpp, GRID.min_tissue)
        sample = spread_sample(tiles, 5)
        expected = [np.asarray(read_tile(slide, tile)) for tile in sample]
    assert len(tiles) > 5
    done: list[tuple[int, int]] = []
    query = whole_slide_query(
        stroma_slide.path, GRID, 5, progress=lambda *counts: done.append(counts)
    )
    assert query.kind == "slide"
    assert query.boxes == [Box(tile.x, tile.y, tile.size, tile.size) for tile in sample]
    assert all(
        np.array_equal(np.asarray(image), pixels)
        for image, pixels in zip(query.images, expected, strict=True)
    )
    assert done[-1] == (5, 5)


def test_a_slide_without_tissue_is_one_line(tmp_path):
    glass = np.full((600, 800, 3), GLASS, np.uint8)
    write_pyramidal_tiff(tmp_path / "glass.tif", glass, "blank glass", KATHER_MPP)
    with pytest.raises(HistoseekError, match="no 96-px tile at 0.5 µm/px holds --min-tissue 0.5"):
        whole_slide_query(tmp_path / "glass.tif", GRID, 5)


def test_a_slide_smaller_than_one_tile_is_one_line_saying_so(stroma_slide):
    with pytest.raises(HistoseekError) as caught:
        whole_slide_query(stroma_slide.path, TileGrid(0.5, 4000, 0.5), 5)
    assert "smaller than one 4000-px tile at --mpp 0.5: it is 1000×850 px" in str(caught.value)


def test_images_in_memory_embed_as_their_files_do(stroma_slide, checkpoint, tmp_path):
    from histoseek.embedder import load_image_embedder

    embedder = load_image_embedder(checkpoint, backend="torch", batch_size=2, workers=0)
    query = whole_slide_query(stroma_slide.path, GRID, 3)
    files = []
    for number, image in enumerate(query.images):
        files.append(tmp_path / f"tile{number}.png")
        image.save(files[-1])
    from_files = embedder.embed_files(files).embeddings
    in_memory = embedder.embed_files(query.sources()).embeddings
    assert in_memory.shape == from_files.shape == (3, 96)
    np.testing.assert_allclose(in_memory, from_files, atol=1e-5)
    assert [str(source) for source in query.sources()] == [
        f"{stroma_slide.path} (slide at {box.x}, {box.y})" for box in query.boxes
    ]
    embedder.tta = True  # eight flips and rotations, as for files
    np.testing.assert_allclose(
        embedder.embed_files(query.sources()).embeddings,
        embedder.embed_files(files).embeddings,
        atol=1e-5,
    )
