"""Index items: the JSON form of plain images and slide tiles, its checks, reading them back."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from assembled_slides import synthetic_slide
from PIL import Image

from histoseek.data.images import UnreadableImageError
from histoseek.errors import HistoseekError
from histoseek.index.items import IndexedSource, IndexItem, item_json, parse_item, read_item_image
from histoseek.slide.folder import find_slides_and_images
from histoseek.slide.reader import open_slide
from histoseek.slide.sources import close_slides
from histoseek.slide.tiling import Tile, read_tile

PATCH = IndexItem("a/x.png", "a", 20, 10, 123, 456)
TILE = IndexItem(
    "b/s.tif", "b", 64, 64, 999, 1000, slide_id="s", group="p1", x=128, y=64, tile_size=128,
    mpp=1.0,
)  # fmt: skip


def test_plain_items_keep_their_old_form_and_tiles_add_their_fields():
    assert json.loads(item_json(PATCH)) == {
        "path": "a/x.png",
        "label": "a",
        "width": 20,
        "height": 10,
        "size": 123,
        "mtime_ns": 456,
    }
    assert json.loads(item_json(TILE))["tile_size"] == 128
    for item in (PATCH, TILE, IndexItem("c.png", "", 5, 5, 1, 2, group="g")):
        assert parse_item(item_json(item)) == item
    assert not PATCH.is_tile and TILE.is_tile
    assert TILE.tile() == Tile(128, 64, 128, 64, 1.0, 0.0)
    assert (PATCH.order, TILE.order) == ((b"a/x.png", -1, -1), (b"b/s.tif", 64, 128))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"x": None}, 'a slide tile needs "x" too'),
        ({"group": None}, 'a slide tile needs "group" too'),
        ({"height": 32}, "a slide tile is a square of 1 pixel or more, not 64×32"),
        ({"x": -1}, '"x" must be 0 or more'),
        ({"tile_size": 0}, "not 64×64 of a 0-pixel square"),
        ({"mpp": 0}, '"mpp" must be a positive number'),
        ({"mpp": "0.5"}, '"mpp" must be a number or null, not a string'),
        ({"y": True}, '"y" must be an integer or null, not true/false'),
        ({"slide_id": 3}, '"slide_id" must be a string or null, not an integer'),
        ({"path": "../x.tif"}, '"path" is not a plain relative path'),
    ],
)
def test_bad_tile_items_are_refused_saying_why(change, problem):
    data = {**json.loads(item_json(TILE)), **change}
    data = {name: value for name, value in data.items() if value is not None}
    with pytest.raises(ValueError, match=problem):
        parse_item(json.dumps(data))


def test_unknown_or_missing_fields_are_refused():
    with pytest.raises(ValueError, match='"tissue" is not an item field'):
        parse_item(json.dumps({**json.loads(item_json(PATCH)), "tissue": 0.5}))
    with pytest.raises(ValueError, match='"mtime_ns" is missing'):
        parse_item(json.dumps({"path": "a", "label": "", "width": 1, "height": 1, "size": 0}))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_item("{")


def _as_found(root, item: IndexItem) -> IndexItem:
    """`item` with its file's size and mtime as they are now, as `index` records them."""
    info = os.stat(root / item.path)
    return replace(item, size=info.st_size, mtime_ns=info.st_mtime_ns)


def test_read_item_image_gives_the_file_or_the_tile_read_again(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), np.uint8)
    Image.fromarray(rgb).save(root / "a" / "x.png")
    assert np.array_equal(np.asarray(read_item_image(root, _as_found(root, PATCH))), rgb)

    (root / "b").mkdir()
    synthetic_slide(root / "b" / "s.tif", size=(1024, 768))
    with open_slide(root / "b" / "s.tif") as slide:
        expected = np.asarray(read_tile(slide, Tile(128, 64, 128, 64, 1.0, 0.7)))
    image = read_item_image(root, _as_found(root, TILE))
    close_slides()
    assert image.size == (64, 64) and np.array_equal(np.asarray(image), expected)

    with pytest.raises(HistoseekError, match=r"cannot read .*s\.tif \(tile at 128, 64\)"):
        read_item_image(tmp_path, TILE)
    with pytest.raises(HistoseekError, match=r"cannot read .*x\.png: .*No such file"):
        read_item_image(tmp_path, PATCH)


def test_a_file_changed_since_it_was_indexed_is_not_shown_as_the_hit(tmp_path):
    # Its pixels now are not the ones the index found: a wrong picture of the answer.
    (tmp_path / "a").mkdir()
    Image.new("RGB", (20, 10), (200, 100, 150)).save(tmp_path / "a" / "x.png")
    patch = _as_found(tmp_path, PATCH)
    (tmp_path / "b").mkdir()
    synthetic_slide(tmp_path / "b" / "s.tif", size=(1024, 768))
    tile = _as_found(tmp_path, TILE)
    for item in (patch, tile):
        read_item_image(tmp_path, item)
        os.utime(tmp_path / item.path, ns=(item.mtime_ns, item.mtime_ns + 10**9))
        with pytest.raises(HistoseekError, match="has changed since it was indexed"):
            read_item_image(tmp_path, item)
        source = IndexedSource(tmp_path / item.path, item)
        with pytest.raises(UnreadableImageError, match="has changed since it was indexed"):
            source.load()
    close_slides()


def _multi_file_slides(root):
    """A MIRAX slide (a.mrxs and its folder), a Hamamatsu one (b.vms and the file it lists)
    and a DICOM one (c/, two .dcm files), as tile items with the total size and newest mtime
    `index` records for them."""
    (root / "a").mkdir(parents=True)
    (root / "a.mrxs").write_bytes(b"[GENERAL]\n")
    (root / "a" / "Data0000.dat").write_bytes(b"x" * 300)
    (root / "a" / "Index.dat").write_bytes(b"y" * 20)
    (root / "b.vms").write_text("[Virtual Microscope Specimen]\nImageFile=b-0.jpg\n")
    (root / "b-0.jpg").write_bytes(b"z" * 100)
    (root / "c").mkdir()
    for name in ("1.dcm", "2.dcm"):
        (root / "c" / name).write_bytes(b"d" * 50)
    found = {slide.relative: slide for slide in find_slides_and_images(root).slides}
    assert sorted(found) == ["a.mrxs", "b.vms", "c/1.dcm"]
    items = {}
    for relative, slide in found.items():
        size, mtime_ns = slide.stat()
        items[relative] = replace(TILE, path=relative, size=size, mtime_ns=mtime_ns)
    return items


def test_a_multi_file_slide_is_changed_when_any_of_its_files_is(tmp_path):
    # Its recorded size and mtime are the sum and the newest over all its files; a companion
    # rewritten (another scan of the slide) shows other pixels than the index embedded.
    items = _multi_file_slides(tmp_path)
    for item in items.values():
        assert not IndexedSource(tmp_path / item.path, item).changed()
    companions = {"a.mrxs": "a/Data0000.dat", "b.vms": "b-0.jpg", "c/1.dcm": "c/2.dcm"}
    for relative, companion in companions.items():
        item, path = items[relative], tmp_path / companion
        info = os.stat(path)
        # The same size, newer: changed.
        os.utime(path, ns=(info.st_atime_ns, item.mtime_ns + 10**9))
        assert IndexedSource(tmp_path / relative, item).changed()
        # Another size, no newer than recorded: changed.
        path.write_bytes(path.read_bytes() + b"!")
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert IndexedSource(tmp_path / relative, item).changed()
        with pytest.raises(UnreadableImageError, match="has changed since it was indexed"):
            IndexedSource(tmp_path / relative, item).load()


def test_a_multi_file_slide_that_cannot_be_stated_is_left_to_its_reader(tmp_path):
    item = _multi_file_slides(tmp_path)["a.mrxs"]
    (tmp_path / "a.mrxs").unlink()
    assert not IndexedSource(tmp_path / item.path, item).changed()
    gone = replace(item, path="gone/a.mrxs")
    assert not IndexedSource(tmp_path / gone.path, gone).changed()
