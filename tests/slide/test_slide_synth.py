"""Synthetic pyramidal slides (not real tissue): layout, labels, pyramid, mpp, determinism."""

from __future__ import annotations

import openslide
import pytest
from click.testing import CliRunner

from histoseek.cli import cli
from histoseek.data.synth import TISSUE_CLASSES
from histoseek.errors import HistoseekError
from histoseek.slide.defaults import SLIDE_CLASSES
from histoseek.slide.reader import open_slide
from histoseek.slide.synth import write_synthetic_slides
from histoseek.slide.tiling import tissue_tiles

SMALL = (2048, 1536)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_slides") / "slides"
    calls = []
    written = write_synthetic_slides(
        out,
        per_class=1,
        classes=["mucosa", "lymphocytes"],
        size=SMALL,
        progress=lambda done, total: calls.append((done, total)),
    )
    return out, written, calls


def test_slides_are_laid_out_by_class_and_labelled_synthetic(slides):
    out, written, calls = slides
    assert written == [
        out / name / f"synthetic_{name}_slide_{number:04d}.tif"
        for name in ("mucosa", "lymphocytes")
        for number in range(1)
    ]
    assert all(path.is_file() for path in written)
    assert calls == [(1, 2), (2, 2)]
    provenance = (out / "SYNTHETIC.md").read_text(encoding="utf-8")
    assert "not real tissue" in provenance
    assert "--slides --per-class 1 --size 2048 --height 1536 --classes mucosa,lymphocytes" in (
        provenance
    )


def test_openslide_sees_a_pyramid_with_the_right_mpp(slides):
    _, written, _ = slides
    handle = openslide.OpenSlide(str(written[0]))
    try:
        assert handle.level_count == 3
        assert handle.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
        assert float(handle.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(handle.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert "NOT REAL TISSUE" in handle.properties["tiff.ImageDescription"]
        assert handle.properties["tiff.ImageDescription"].startswith("histoseek synthetic slide")
    finally:
        handle.close()


def test_synthetic_slides_have_tissue_tiles_and_glass(slides):
    _, written, _ = slides
    with open_slide(written[0]) as slide:
        tiles = tissue_tiles(slide, min_tissue=0.0)
        kept = [tile for tile in tiles if tile.tissue >= 0.5]
    assert 0.2 * len(tiles) < len(kept) < 0.9 * len(tiles)


def test_same_seed_same_bytes_other_seed_other_slides(slides, tmp_path):
    _, written, _ = slides
    again = write_synthetic_slides(tmp_path / "again", per_class=1, classes=["mucosa"], size=SMALL)
    assert again[0].read_bytes() == written[0].read_bytes()
    other = write_synthetic_slides(
        tmp_path / "other", per_class=1, classes=["mucosa"], size=SMALL, seed=1
    )
    assert other[0].read_bytes() != written[0].read_bytes()


def test_slide_classes_are_the_tissue_classes_but_background():
    assert tuple(name for name in TISSUE_CLASSES if name != "background") == SLIDE_CLASSES


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"classes": ["background"]}, "blank slide"),
        ({"classes": ["bone"]}, "unknown tissue class 'bone'"),
        ({"classes": []}, "no tissue classes"),
        ({"per_class": 0}, "at least 1 slide"),
        ({"size": (512, 2048)}, "1024 to 16384 pixels a side"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options_are_refused(tmp_path, arguments, message):
    with pytest.raises(HistoseekError, match=message):
        write_synthetic_slides(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_an_earlier_synthetic_output_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    options = {"per_class": 1, "size": (1024, 1024)}
    first = write_synthetic_slides(out, classes=["stroma"], **options)
    with pytest.raises(HistoseekError, match="already holds a synthetic set; use --overwrite"):
        write_synthetic_slides(out, classes=["mucosa"], **options)
    assert first[0].is_file()
    written = write_synthetic_slides(out, classes=["mucosa"], overwrite=True, **options)
    assert written[0].is_file() and not first[0].exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_other_files_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HistoseekError, match="did not write .it has no SYNTHETIC.md."):
        write_synthetic_slides(
            out, per_class=1, classes=["stroma"], size=(1024, 1024), overwrite=overwrite
        )
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_cli_synth_slides_writes_the_library_s_slides_and_says_so(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        cli,
        ["synth", str(out), "--slides", "--per-class", "1", "--classes", "stroma"]
        + ["--size", "1024", "--height", "1280", "--seed", "4"],
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 1 synthetic slides (1 classes x 1, 1024x1280 px, 0.5 µm/px, seed 4)" in (
        result.output
    )
    reference = write_synthetic_slides(
        tmp_path / "library", 1, seed=4, classes=["stroma"], size=(1024, 1280)
    )
    written = out / "stroma" / "synthetic_stroma_slide_0000.tif"
    assert written.read_bytes() == reference[0].read_bytes()


@pytest.mark.parametrize(
    ("options", "size", "per_class", "classes"),
    [
        ([], (8192, 6144), 2, None),
        (["--size", "2048"], (2048, 2048), 2, None),
        (
            ["--height", "3000", "--per-class", "5", "--classes", "mucosa"],
            (8192, 3000),
            5,
            ["mucosa"],
        ),
    ],
)
def test_cli_synth_slides_defaults(tmp_path, monkeypatch, options, size, per_class, classes):
    calls = []

    def record(out, per_class, seed, classes, size, overwrite, progress, notify):
        calls.append((per_class, classes, size))
        return [out / "x.tif"] * per_class

    monkeypatch.setattr("histoseek.slide.synth.write_synthetic_slides", record)
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "out"), "--slides", *options])
    assert result.exit_code == 0, result.output
    assert calls == [(per_class, classes, size)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--classes", "background"], "blank slide"),
        (["--size", "512"], "1024 to 16384 pixels a side, not 512x512"),
        (["--per-class", "0"], "at least 1 slide per class"),
    ],
)
def test_cli_synth_slides_refuses_bad_options_in_one_line(tmp_path, options, message):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "out"), "--slides", *options])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
