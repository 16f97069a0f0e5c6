"""Tissue tiles of a slide at a target mpp: coordinates, levels, tissue, spread-out samples.

Slides here are written by the tests: assembled from real kather2016 tiles (not scanned) or
drawn synthetically; see assembled_slides.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from assembled_slides import GLASS, KATHER_MPP, assemble_kather_slide, synthetic_slide
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.slide.pyramid import pyramid_levels
from histoseek.slide.reader import SlideError, UnknownMppError, open_slide
from histoseek.slide.tiling import (
    Tile,
    read_region_at_mpp,
    read_tile,
    spread_sample,
    tile_size,
    tissue_map,
    tissue_tiles,
)


@pytest.fixture(scope="module")
def kather_slide(tmp_path_factory):
    return assemble_kather_slide(tmp_path_factory.mktemp("kather_slide"), "02_STROMA")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("synthetic") / "stroma.tif", "stroma")


def _levels_read(slide, monkeypatch) -> list[int]:
    """Record the level of every region read from `slide` from now on."""
    levels: list[int] = []
    original = slide.read_region

    def recording(x, y, level, width, height):
        levels.append(level)
        return original(x, y, level, width, height)

    monkeypatch.setattr(slide, "read_region", recording)
    return levels


def test_tiles_at_the_slide_mpp_read_back_exactly_the_pixels_written(kather_slide):
    with open_slide(kather_slide.path) as slide:
        tiles = tissue_tiles(slide, patch_size=100, mpp=KATHER_MPP)
        assert tiles
        for tile in tiles:
            assert (tile.size, tile.patch_size, tile.mpp) == (100, 100, KATHER_MPP)
            pixels = np.asarray(read_tile(slide, tile))
            assert np.array_equal(
                pixels, kather_slide.rgb[tile.y : tile.y + 100, tile.x : tile.x + 100]
            )


def test_stored_tile_fields_read_back_the_same_pixels_later(kather_slide):
    with open_slide(kather_slide.path) as slide:
        tiles = tissue_tiles(slide, patch_size=96)  # default 0.5 µm/px: resampled from 0.495
        embedded = [np.asarray(read_tile(slide, tile)) for tile in tiles]
    stored = [dataclasses.asdict(tile) for tile in tiles]  # what an index keeps
    with open_slide(kather_slide.path) as slide:
        for fields, pixels in zip(stored, embedded, strict=True):
            assert np.array_equal(np.asarray(read_tile(slide, Tile(**fields))), pixels)


def test_a_resampled_tile_shows_its_level0_square(kather_slide):
    with open_slide(kather_slide.path) as slide:
        tile = tissue_tiles(slide)[0]
        assert tile.size == tile_size(KATHER_MPP, 0.5, 224) == 226
        pixels = np.asarray(read_tile(slide, tile)).astype(int)
    square = kather_slide.rgb[tile.y : tile.y + 226, tile.x : tile.x + 226]
    expected = np.asarray(Image.fromarray(square).resize((224, 224), Image.Resampling.LANCZOS))
    # Equal but for the filter's view past the square's edge, which a crop does not have.
    assert np.abs(pixels - expected.astype(int)).mean() < 1.0


def test_tiles_come_from_the_coarsest_level_still_fine_enough(synthetic, monkeypatch):
    levels = pyramid_levels(synthetic.rgb)
    with open_slide(synthetic.path) as slide:
        assert [level.downsample for level in slide.levels] == [1.0, 2.0, 4.0]
        read = _levels_read(slide, monkeypatch)
        for mpp, size, level in [(0.5, 224, 0), (0.9, 403, 0), (1.0, 448, 1), (2.0, 896, 2)]:
            tile = Tile(
                x=448, y=448, size=tile_size(0.5, mpp, 224), patch_size=224, mpp=mpp, tissue=1
            )
            assert tile.size == size
            read.clear()
            pixels = np.asarray(read_tile(slide, tile))
            assert pixels.shape == (224, 224, 3)
            assert set(read) == {level}
            if mpp in (1.0, 2.0):  # whole pixels of that level: no resampling at all
                step = int(mpp / 0.5)
                top = 448 // step
                assert np.array_equal(pixels, levels[level][top : top + 224, top : top + 224])


def test_a_finer_target_than_the_slide_upsamples_level0(synthetic, monkeypatch):
    with open_slide(synthetic.path) as slide:
        read = _levels_read(slide, monkeypatch)
        tile = Tile(x=100, y=100, size=tile_size(0.5, 0.25, 64), patch_size=64, mpp=0.25, tissue=1)
        assert tile.size == 32
        assert read_tile(slide, tile).size == (64, 64)
        assert set(read) == {0}


def test_the_tissue_mask_is_read_from_a_low_level(synthetic, monkeypatch):
    with open_slide(synthetic.path) as slide:
        read = _levels_read(slide, monkeypatch)
        tissue_map(slide)
    assert set(read) == {2}  # mask pixels are 14 level-0 px: level 2 (4×) is the coarsest fine


def test_tissue_tiles_keep_tissue_and_drop_glass(kather_slide):
    with open_slide(kather_slide.path) as slide:
        grid = tissue_map(slide, patch_size=50, mpp=KATHER_MPP)
        kept = tissue_tiles(slide, patch_size=50, mpp=KATHER_MPP, min_tissue=0.5)
        everything = tissue_tiles(slide, patch_size=50, mpp=KATHER_MPP, min_tissue=0.0)
    height, width = kather_slide.rgb.shape[:2]
    assert everything == grid.tiles and len(grid.tiles) == (width // 50) * (height // 50)

    def glass_share(tile):
        square = kather_slide.rgb[tile.y : tile.y + 50, tile.x : tile.x + 50]
        return float((square == GLASS).all(axis=2).mean())

    all_tissue = [tile for tile in grid.tiles if glass_share(tile) == 0.0]
    all_glass = [tile for tile in grid.tiles if glass_share(tile) == 1.0]
    assert all_tissue and all_glass
    assert all(tile.tissue == 0.0 for tile in all_glass)
    assert not set(kept) & set(all_glass)
    assert all(glass_share(tile) < 0.5 for tile in kept)
    assert len(set(kept) & set(all_tissue)) >= 0.8 * len(all_tissue)  # stroma is tissue


def test_a_slide_smaller_than_a_tile_is_one_line_saying_so(kather_slide):
    with open_slide(kather_slide.path) as slide, pytest.raises(SlideError) as caught:
        tissue_tiles(slide, patch_size=224, mpp=5.0, min_tissue=0.0)
    assert str(caught.value).endswith(
        "smaller than one 224-px tile at --mpp 5: it is 1000×850 px at 0.495 µm/px (the file's "
        "metadata), a tile 2263 px a side"
    )


def test_tiles_whose_rounded_side_misstates_their_mpp_are_refused(tmp_path):
    Image.new("RGB", (300, 300), (180, 80, 150)).save(tmp_path / "patch.png")
    with (
        open_slide(tmp_path / "patch.png", slide_mpp=20.0) as slide,
        pytest.raises(SlideError) as caught,
    ):
        tissue_tiles(slide, patch_size=224, mpp=0.05)
    # 224 px at 0.05 µm/px is 0.56 px at 20: one pixel, really 0.089 µm/px.
    assert str(caught.value).endswith(
        "patch.png: a 224-px tile at --mpp 0.05 is 0.56 px of this slide at 20 µm/px "
        "(--slide-mpp, as a PNG image records none); rounded to 1 px it would be at "
        "0.0893 µm/px, 79% off (an --mpp of 4.46 or more keeps within 1%)"
    )
    with open_slide(tmp_path / "patch.png", slide_mpp=0.5) as slide:
        with pytest.raises(SlideError, match=r"rounded to 22 px it would be at 0.0491 µm/px"):
            tissue_tiles(slide, patch_size=224, mpp=0.05)  # 22.4 px: 1.8% off
        assert {tile.size for tile in tissue_tiles(slide, patch_size=224, mpp=0.1)} == {45}


def test_tiling_needs_an_mpp(tmp_path):
    Image.new("RGB", (300, 300), (180, 80, 150)).save(tmp_path / "patch.png")
    with open_slide(tmp_path / "patch.png") as slide, pytest.raises(UnknownMppError):
        tissue_tiles(slide)
    with open_slide(tmp_path / "patch.png", slide_mpp=0.5) as slide:
        tiles = tissue_tiles(slide, patch_size=100)
    assert [(t.x, t.y) for t in tiles] == [(x, y) for y in (0, 100, 200) for x in (0, 100, 200)]


@pytest.mark.parametrize(
    "arguments", [{"patch_size": 0}, {"mpp": 0.0}, {"min_tissue": 1.5}, {"min_tissue": -0.1}]
)
def test_bad_tiling_options_are_refused(synthetic, arguments):
    with open_slide(synthetic.path) as slide, pytest.raises(HistoseekError):
        tissue_tiles(slide, **arguments)


def test_region_at_mpp_is_resampled_to_the_target(synthetic):
    with open_slide(synthetic.path) as slide:
        region = read_region_at_mpp(slide, 100, 200, 600, 400, 1.0)
    assert region.size == (300, 200)


def _grid(columns: int, rows: int, size: int = 100) -> list[Tile]:
    return [
        Tile(x * size, y * size, size, 224, 0.5, 1.0) for y in range(rows) for x in range(columns)
    ]


def test_spread_sample_is_spread_out_deterministic_and_order_free():
    tiles = _grid(40, 30)
    sample = spread_sample(tiles, 16)
    assert len(sample) == 16
    assert sample == spread_sample(list(reversed(tiles)), 16)
    assert sample == sorted(sample, key=lambda tile: (tile.y, tile.x))
    points = np.array([(t.x, t.y) for t in sample], dtype=float)
    gaps = np.sqrt(((points[:, None] - points[None]) ** 2).sum(axis=2))
    np.fill_diagonal(gaps, np.inf)
    # 16 points spread over 4000 × 3000: far apart, and no tile far from the nearest one.
    assert gaps.min() >= 600
    everything = np.array([(t.x, t.y) for t in tiles], dtype=float)
    to_sample = np.sqrt(((everything[:, None] - points[None]) ** 2).sum(axis=2)).min(axis=1)
    assert to_sample.max() <= 1000
    first_sixteen = np.array([(t.x, t.y) for t in tiles[:16]], dtype=float)
    assert np.ptp(points[:, 1]) > 10 * np.ptp(first_sixteen[:, 1])


def test_spread_sample_keeps_every_tile_of_a_small_slide():
    tiles = _grid(3, 2)
    assert spread_sample(list(reversed(tiles)), 64) == tiles
    with pytest.raises(HistoseekError, match="--max-tiles"):
        spread_sample(tiles, 0)


def test_spread_sample_of_a_real_slide(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tissue_tiles(slide, patch_size=64)
    sample = spread_sample(tiles, 8)
    assert len(sample) == 8 and set(sample) <= set(tiles)
    assert sample == spread_sample(tiles, 8)
