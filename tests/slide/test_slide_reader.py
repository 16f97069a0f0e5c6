"""The slide reader: pyramids through OpenSlide and plain images through Pillow, one interface.

Slides here are written by the tests: assembled from real kather2016 tiles (not scanned) or
drawn synthetically; see assembled_slides.py.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
from assembled_slides import (
    KATHER,
    KATHER_MPP,
    assemble_kather_slide,
    corrupt_levels,
    synthetic_slide,
)
from PIL import Image

from histoseek.data.images import pixel_limit
from histoseek.errors import HistoseekError
from histoseek.slide.pyramid import pyramid_levels, write_pyramidal_tiff
from histoseek.slide.reader import (
    SlideError,
    UnknownMppError,
    best_level,
    is_slide_file,
    open_slide,
)


@pytest.fixture(scope="module")
def kather_slide(tmp_path_factory):
    return assemble_kather_slide(tmp_path_factory.mktemp("kather_slide"), "01_TUMOR")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("synthetic") / "mucosa.tif")


def test_assembled_pyramid_reads_back_its_pixels_at_each_level(kather_slide):
    levels = pyramid_levels(kather_slide.rgb)
    with open_slide(kather_slide.path) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (kather_slide.rgb.shape[1], kather_slide.rgb.shape[0])
        assert len(slide.levels) == len(levels) >= 2
        assert [level.downsample for level in slide.levels] == [1.0, 2.0]
        assert slide.mpp == pytest.approx(KATHER_MPP, rel=1e-6)
        assert slide.mpp_source == "the file's metadata"
        region = slide.read_region(210, 230, 0, 100, 80)
        assert region.mode == "RGB" and region.size == (100, 80)
        assert np.array_equal(np.asarray(region), kather_slide.rgb[230:310, 210:310])
        # At level 1, (x, y) stay level-0 pixels; the size is in level-1 pixels.
        low = slide.read_region(100, 60, 1, 50, 40)
        assert np.array_equal(np.asarray(low), levels[1][30:70, 50:100])


def test_aperio_svs_takes_its_mpp_from_the_aperio_description(tmp_path):
    svs = assemble_kather_slide(tmp_path, "04_LYMPHO", aperio=True)
    assert svs.path.suffix == ".svs"
    with tifffile.TiffFile(svs.path) as tiff:
        # No unit of length in the resolution tags: the mpp is only in Aperio's MPP field.
        assert tiff.pages[0].tags["ResolutionUnit"].value == 1
    with open_slide(svs.path) as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(KATHER_MPP)
        assert len(slide.levels) >= 2
        assert np.array_equal(np.asarray(slide.read_region(0, 0, 0, 400, 300)), svs.rgb[:300, :400])


def test_areas_outside_the_slide_read_as_white(synthetic):
    with open_slide(synthetic.path) as slide:
        width, height = slide.dimensions
        region = np.asarray(slide.read_region(width - 10, height - 10, 0, 30, 20))
    assert np.array_equal(region[:10, :10], synthetic.rgb[-10:, -10:])
    assert (region[10:] == 255).all() and (region[:, 10:] == 255).all()


def test_thumbnail_keeps_the_aspect_and_shows_the_slide(synthetic):
    with open_slide(synthetic.path) as slide:
        thumbnail = slide.thumbnail(256)
    assert thumbnail.size == (256, 192)
    expected = np.asarray(Image.fromarray(synthetic.rgb).resize((256, 192), Image.Resampling.BOX))
    assert np.abs(np.asarray(thumbnail).astype(int) - expected).mean() < 4


def test_read_scaled_reads_large_regions_in_pieces_that_join_seamlessly(synthetic, monkeypatch):
    monkeypatch.setattr("histoseek.slide.reader.PIECE_SIDE", 300)
    with open_slide(synthetic.path) as slide:
        pieced = np.asarray(slide.read_scaled(100, 50, 1500, 1200, 750, 600)).astype(int)
    monkeypatch.setattr("histoseek.slide.reader.PIECE_SIDE", 4096)
    with open_slide(synthetic.path) as slide:
        whole = np.asarray(slide.read_scaled(100, 50, 1500, 1200, 750, 600)).astype(int)
    assert np.abs(pieced - whole).max() <= 2


@pytest.mark.parametrize(
    ("factor", "level"),
    [(0.5, 0), (1.0, 0), (1.8, 0), (1.995, 1), (2.0, 1), (3.9, 1), (4.0, 2), (50.0, 2)],
)
def test_best_level_is_the_coarsest_still_as_fine_as_asked(factor, level):
    assert best_level((1.0, 2.0003, 4.0012), factor) == level


def test_plain_png_goes_through_the_same_interface(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "patch.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path) as slide:
        assert slide.vendor == "image"
        assert slide.dimensions == (160, 120)
        assert len(slide.levels) == 1
        assert slide.mpp is None
        assert np.array_equal(np.asarray(slide.read_region(10, 20, 0, 50, 40)), rgb[20:60, 10:60])
        edge = np.asarray(slide.read_region(150, -5, 0, 20, 10))
        assert np.array_equal(edge[5:, :10], rgb[:5, 150:])
        assert (edge[:5] == 255).all() and (edge[:, 10:] == 255).all()
        assert slide.thumbnail(80).size == (80, 60)
    with open_slide(path, slide_mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "--slide-mpp, as a PNG image records none"


def test_transparent_pixels_of_a_plain_image_become_white(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (200, 50, 100, 255)
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    with open_slide(tmp_path / "cut.png") as slide:
        region = np.asarray(slide.read_region(0, 0, 0, 20, 20))
    assert (region[:, :10] == (200, 50, 100)).all() and (region[:, 10:] == 255).all()


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"), [(20000, "CENTIMETER", 0.5), (101600, "INCH", 0.25)]
)
def test_plain_tiff_takes_its_mpp_from_resolution_tags(tmp_path, resolution, unit, mpp):
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(
        path,
        np.full((64, 64, 3), 200, np.uint8),
        photometric="rgb",
        resolution=(resolution, resolution),
        resolutionunit=unit,
    )
    assert not is_slide_file(path)
    with open_slide(path) as slide:
        assert slide.vendor == "image"
        assert slide.mpp == pytest.approx(mpp)
        assert slide.mpp_source == "its TIFF resolution tags"


def test_tiled_tiff_is_a_slide_and_stripped_tiff_is_not(tmp_path, synthetic):
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, synthetic.rgb[:256, :256], photometric="rgb")
    assert is_slide_file(synthetic.path)
    assert not is_slide_file(stripped)
    assert is_slide_file(tmp_path / "anything.svs")
    assert not is_slide_file(tmp_path / "patch.png")


def test_unknown_mpp_is_one_line_naming_the_option(tmp_path):
    Image.new("RGB", (32, 32), (200, 100, 150)).save(tmp_path / "x.png")
    with open_slide(tmp_path / "x.png") as slide, pytest.raises(UnknownMppError) as caught:
        slide.require_mpp()
    message = str(caught.value)
    assert "\n" not in message
    assert "x.png" in message and "pass --slide-mpp" in message and "records none" in message


@pytest.mark.skipif(not KATHER.is_dir(), reason=f"real tiles not available: {KATHER} is absent")
def test_a_72_dpi_tag_is_not_taken_for_a_microscope_resolution():
    tile = sorted((KATHER / "01_TUMOR").glob("*.tif"))[0]
    with open_slide(tile) as slide:
        assert slide.mpp is None
        assert "352.8 µm/px" in slide.mpp_source
        with pytest.raises(UnknownMppError, match="pass --slide-mpp"):
            slide.require_mpp()
    with open_slide(tile, slide_mpp=KATHER_MPP) as slide:
        assert slide.require_mpp() == KATHER_MPP


@pytest.mark.parametrize("mpp", [0.0, -1.0, 1000.0, float("nan")])
def test_an_impossible_mpp_override_is_refused(tmp_path, mpp):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(HistoseekError, match="--slide-mpp is microns per pixel"):
        open_slide(tmp_path / "x.png", slide_mpp=mpp)


def test_slide_mpp_is_only_a_fallback_for_files_that_record_none(synthetic):
    with open_slide(synthetic.path, slide_mpp=0.25) as slide:
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "the file's metadata"


def test_plain_images_over_max_pixels_are_refused_but_slides_are_not(tmp_path, synthetic):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(SlideError, match=r"300×200 = 60,000 pixels exceeds --max-pixels 50,000"):
        open_slide(tmp_path / "big.png", max_pixels=50_000)
    with open_slide(synthetic.path, max_pixels=50_000) as slide:
        assert slide.dimensions == (2048, 1536)


def test_plain_images_follow_the_pixel_limit_in_force_when_none_is_given(tmp_path):
    # What `query --region` and `index` use: the command's --max-pixels, not the default.
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with (
        pixel_limit(50_000),
        pytest.raises(SlideError, match=r"exceeds --max-pixels 50,000"),
    ):
        open_slide(tmp_path / "big.png")
    with pixel_limit(60_000), open_slide(tmp_path / "big.png") as slide:
        assert slide.dimensions == (300, 200)


def test_corrupt_and_truncated_slides_raise_one_clear_error(tmp_path, synthetic):
    data = synthetic.path.read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    for path in (truncated, junk, tmp_path / "missing.ndpi"):
        with pytest.raises(SlideError) as caught:
            open_slide(path)
        assert path.name in str(caught.value) and "\n" not in str(caught.value)

    broken = tmp_path / "broken_tiles.tif"
    corrupt_levels(synthetic.path, broken)
    with open_slide(broken) as slide:  # the headers are fine; the pixels are not
        slide.thumbnail(128)  # low levels are intact
        with pytest.raises(SlideError, match="broken_tiles.tif: cannot read"):
            slide.read_region(0, 0, 0, 300, 300)


def test_a_truncated_slide_that_pillow_still_decodes_is_refused_as_a_slide(tmp_path, synthetic):
    data = synthetic.path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 9 // 10])
    # OpenSlide refuses it, but Pillow decodes level 0 from what is left: read as a plain
    # image, the whole slide would become one picture.
    with Image.open(cut) as image:
        assert image.size == (2048, 1536)
        image.load()
    assert is_slide_file(cut)
    with pytest.raises(SlideError) as caught:
        open_slide(cut)
    assert str(caught.value).endswith(
        "cut.tif: OpenSlide cannot open it (unsupported format, corrupt or truncated)"
    )


@pytest.mark.parametrize("layout", [{}, {"bigtiff": True}, {"byteorder": ">"}])
def test_a_tiff_whose_first_directory_is_tiled_is_a_slide_file(tmp_path, layout):
    rgb = np.random.default_rng(0).integers(0, 256, (600, 600, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "tiled.tif", **layout) as writer:
        for level in (rgb, rgb[::2, ::2]):
            writer.write(level, photometric="rgb", tile=(256, 256), subfiletype=level is not rgb)
    data = (tmp_path / "tiled.tif").read_bytes()
    # Cut before the second level's directory: OpenSlide no longer recognises the file.
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 6 // 10])
    tifffile.imwrite(tmp_path / "stripped.tif", rgb, photometric="rgb", **layout)
    assert is_slide_file(tmp_path / "tiled.tif")
    assert is_slide_file(tmp_path / "cut.tif")
    with pytest.raises(SlideError, match="cut.tif: OpenSlide cannot open it"):
        open_slide(tmp_path / "cut.tif")
    assert not is_slide_file(tmp_path / "stripped.tif")
    for header in (data[:3], data[:12], b"II*\x00\xff\xff\xff\x7f", b"not a tiff at all"):
        (tmp_path / "broken.tif").write_bytes(header)
        assert not is_slide_file(tmp_path / "broken.tif")
        with pytest.raises(SlideError, match="broken.tif: not a readable image"):
            open_slide(tmp_path / "broken.tif")


def _pyramid_and(path, rgb, extra):
    """A pyramidal TIFF of `rgb` at 0.5 µm/px, and one more tiled image after its levels."""
    with tifffile.TiffWriter(path) as writer:
        for number, level in enumerate([*pyramid_levels(rgb), extra]):
            scale = rgb.shape[1] / level.shape[1]
            writer.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                subfiletype=1 if number else 0,
                resolution=(1e4 / (0.5 * scale),) * 2,
                resolutionunit="CENTIMETER",
            )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # OpenSlide takes the widest image for level 0: a label strip, and the slide's own
        # level 0 becomes "level 1" at downsample 1.17.
        ((512, 4096), "level 1 is 2048×1536 at downsample 1.167, but level 0 is 4096×512"),
        ((1600, 4096), "level 1 is 2048×1536 at downsample 1.521, but level 0 is 4096×1600"),
        # Small, but not the slide's shape.
        ((400, 400), "level 3 is 400×400 at downsample 4.48, but level 0 is 2048×1536"),
    ],
    ids=["label strip", "larger image", "small square"],
)
def test_a_pyramid_whose_levels_disagree_is_refused(tmp_path, synthetic, extra, message):
    path = tmp_path / "extra.tif"
    _pyramid_and(path, synthetic.rgb, np.full((*extra, 3), 120, np.uint8))
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    assert str(caught.value).endswith(f"extra.tif: its pyramid levels do not agree: {message}")


def test_pyramid_levels_rounded_either_way_agree(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (1029, 4099, 3), np.uint8)
    # Odd sides round up at each halving (or down, below); a 4:1 slide's ratios differ most.
    write_pyramidal_tiff(tmp_path / "odd.tif", rgb, "odd sizes", 0.5)
    with tifffile.TiffWriter(tmp_path / "floor.tif") as writer:
        for number, level in enumerate((rgb, rgb[:1028:2, :4098:2], rgb[:1028:4, :4096:4])):
            writer.write(level, photometric="rgb", tile=(256, 256), subfiletype=int(number > 0))
    with open_slide(tmp_path / "odd.tif") as slide:
        assert [(level.width, level.height) for level in slide.levels] == [
            (4099, 1029), (2050, 515), (1025, 258), (513, 129), (257, 65),
        ]  # fmt: skip
    with open_slide(tmp_path / "floor.tif") as slide:
        assert [(level.width, level.height) for level in slide.levels] == [
            (4099, 1029), (2049, 514), (1024, 257),
        ]  # fmt: skip


def test_a_truncated_plain_image_raises_a_slide_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SlideError, match="cut.png: not a readable image"):
        open_slide(path)


def test_unknown_file_kinds_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideError, match="not a slide or image"):
        open_slide(tmp_path / "notes.txt")


def test_a_missing_openslide_is_one_line_naming_the_install(tmp_path, monkeypatch):
    (tmp_path / "x.svs").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(HistoseekError) as caught:
        open_slide(tmp_path / "x.svs")
    # Not a SlideError: an indexer must stop here, not skip every slide for the same reason.
    assert not isinstance(caught.value, SlideError)
    assert "pip install openslide-python openslide-bin" in str(caught.value)
