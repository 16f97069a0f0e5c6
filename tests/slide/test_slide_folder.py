"""The slide-aware folder walk: one entry per slide, companion files never listed as images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.slide.folder import find_slides_and_images
from histoseek.slide.pyramid import write_pyramidal_tiff


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 100, 150)).save(path)
    return path


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A folder of every kind: a tiled TIFF slide, a stripped TIFF and PNGs (plain images),
    MIRAX, Hamamatsu VMS and DICOM slides with their companions, hidden files."""
    root = tmp_path / "archive"
    rgb = np.full((600, 700, 3), 220, np.uint8)
    (root / "tumour").mkdir(parents=True)
    write_pyramidal_tiff(root / "tumour" / "tiled.tif", rgb, "test slide", 0.5)
    tifffile.imwrite(root / "tumour" / "stripped.tif", rgb[:64, :64], photometric="rgb")
    _png(root / "tumour" / "patch.png")
    _touch(root / "normal" / "case1.mrxs")
    _touch(root / "normal" / "case1" / "Slidedat.ini")
    _png(root / "normal" / "case1" / "preview.jpg")  # inside MIRAX's folder: not an image
    (root / "normal" / "scan.vms").write_text(
        "[Virtual Microscope Specimen]\nNoLayers=1\nImageFile=scan_0.jpg\n"
        "ImageFile(1,0)=scan_1.jpg\nMapFile=scan_map.jpg\nOptimisationFile=scan.opt\n"
    )
    for name in ("scan_0.jpg", "scan_1.jpg", "scan_map.jpg", "other.jpg"):
        _png(root / "normal" / name)
    _touch(root / "normal" / "scan.opt")
    for number in range(3):
        _touch(root / "dicom" / "series42" / f"{number:04d}.dcm", b"D" * (number + 1))
    _png(root / "tumour" / ".hidden.png")
    _touch(root / "notes.txt")
    return root


def test_each_slide_is_listed_once_and_companions_never(archive):
    found = find_slides_and_images(archive)
    assert [(s.relative, s.name, s.stem) for s in found.slides] == [
        ("dicom/series42/0000.dcm", "dicom/series42", "series42"),
        ("normal/case1.mrxs", "normal/case1.mrxs", "case1"),
        ("normal/scan.vms", "normal/scan.vms", "scan"),
        ("tumour/tiled.tif", "tumour/tiled.tif", "tiled"),
    ]
    assert [path.relative_to(archive).as_posix() for path in found.images] == [
        "normal/other.jpg",
        "tumour/patch.png",
        "tumour/stripped.tif",
    ]
    assert found.skipped == []
    parts = {s.stem: [p.relative_to(archive).as_posix() for p in s.parts] for s in found.slides}
    assert parts["series42"] == [f"dicom/series42/{n:04d}.dcm" for n in range(3)]
    assert parts["case1"] == [
        "normal/case1.mrxs",
        "normal/case1/Slidedat.ini",
        "normal/case1/preview.jpg",
    ]
    assert parts["scan"] == [
        "normal/scan.vms",
        "normal/scan.opt",
        "normal/scan_0.jpg",
        "normal/scan_1.jpg",
        "normal/scan_map.jpg",
    ]
    assert parts["tiled"] == ["tumour/tiled.tif"]


def test_a_slide_counts_as_changed_when_any_of_its_files_changes(archive):
    dicom = find_slides_and_images(archive).slides[0]
    before = dicom.stat()
    assert before[0] == 1 + 2 + 3
    last = archive / "dicom" / "series42" / "0002.dcm"
    os.utime(last, ns=(before[1] + 10**9, before[1] + 10**9))
    assert dicom.stat() == (6, before[1] + 10**9)
    last.write_bytes(b"DDDD")
    assert dicom.stat()[0] == 7


def test_entries_that_are_not_regular_files_are_skipped_with_a_reason(tmp_path):
    root = tmp_path / "root"
    _png(root / "a" / "ok.png")
    os.mkfifo(root / "a" / "pipe.tif")  # a tiled-TIFF check would block on it forever
    (root / "a" / "gone.svs").symlink_to(root / "nowhere.svs")
    found = find_slides_and_images(root)
    assert [path.name for path in found.images] == ["ok.png"]
    assert found.slides == []
    assert [(entry.path.relative_to(root).as_posix(), entry.reason) for entry in found.skipped] == [
        ("a/gone.svs", "No such file or directory"),
        ("a/pipe.tif", "not a regular file"),
    ]


def test_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(HistoseekError, match="not a folder"):
        find_slides_and_images(tmp_path / "absent")


def test_a_slides_parts_are_found_alone_as_the_walk_finds_them(tmp_path, monkeypatch):
    from histoseek.slide import folder as slide_folder

    (tmp_path / "a").mkdir()
    (tmp_path / "a.mrxs").write_bytes(b"[GENERAL]\n")
    (tmp_path / "a" / "Data0000.dat").write_bytes(b"x")
    (tmp_path / "b.vms").write_text("[Virtual Microscope Specimen]\nImageFile=b-0.jpg\n")
    (tmp_path / "b-0.jpg").write_bytes(b"z")
    (tmp_path / "c").mkdir()
    for name in ("1.dcm", "2.dcm"):
        (tmp_path / "c" / name).write_bytes(b"d")
    walked = {s.relative: s.parts for s in slide_folder.find_slides_and_images(tmp_path).slides}
    assert {len(parts) for parts in walked.values()} == {2}
    for relative, parts in walked.items():
        assert slide_folder.slide_parts(tmp_path / relative) == parts

    # Checking one slide reads none of the other slides in its folder (a hit is checked in
    # a folder that may hold thousands).
    def unexpected(path):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(slide_folder, "_vms_companions", unexpected)
    assert slide_folder.slide_parts(tmp_path / "a.mrxs") == walked["a.mrxs"]


def test_a_dicom_series_opens_by_its_first_regular_file_and_skips_those_before(tmp_path):
    from histoseek.slide.folder import slide_parts

    series, pipes = tmp_path / "series", tmp_path / "pipes"
    series.mkdir()
    pipes.mkdir()
    os.mkfifo(series / "0000.dcm")
    for number in (1, 2):
        (series / f"{number:04d}.dcm").write_bytes(b"D")
    os.mkfifo(pipes / "0000.dcm")

    found = find_slides_and_images(tmp_path)
    (slide,) = found.slides
    assert slide.path == series / "0001.dcm" and slide.name == "series"
    assert slide.parts == (series / "0001.dcm", series / "0002.dcm")
    assert slide_parts(slide.path) == slide.parts
    assert sorted(entry.path for entry in found.skipped) == [
        pipes / "0000.dcm",
        series / "0000.dcm",
    ]
    assert not found.images
