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


def test_a_multi_file_slide_is_changed_only_when_its_file_is_newer_than_recorded(tmp_path):
    # A MIRAX slide's recorded size and mtime are of all its files: only the mtime of the one
    # OpenSlide opens can be compared, and it may be older than the newest.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "s.mrxs").write_bytes(b"[GENERAL]\n")
    info = os.stat(tmp_path / "b" / "s.mrxs")
    tile = replace(TILE, path="b/s.mrxs", size=info.st_size + 5000, mtime_ns=info.st_mtime_ns)
    with pytest.raises(UnreadableImageError) as raised:  # read: not a slide, but unchanged
        IndexedSource(tmp_path / tile.path, tile).load()
    assert "changed" not in str(raised.value)
    newer = replace(tile, mtime_ns=info.st_mtime_ns - 1)
    with pytest.raises(UnreadableImageError, match="has changed since it was indexed"):
        IndexedSource(tmp_path / newer.path, newer).load()
