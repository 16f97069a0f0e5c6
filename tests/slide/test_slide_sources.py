"""Slide tiles as image sources: read like read_tile, picklable, decoded by loader workers."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from assembled_slides import corrupt_levels, synthetic_slide
from PIL import Image

from histoseek.data.dataset import ImageDataset, make_loader
from histoseek.data.images import UnreadableImageError
from histoseek.data.sources import load_source, why_unreadable
from histoseek.data.transforms import EvalTransform
from histoseek.slide import sources
from histoseek.slide.reader import open_slide
from histoseek.slide.sources import SlideTile, close_slides
from histoseek.slide.tiling import read_tile, tissue_tiles


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("synthetic") / "mucosa.tif", size=(1024, 768))


@pytest.fixture
def tiles(synthetic):
    with open_slide(synthetic.path) as slide:
        found = tissue_tiles(slide, patch_size=64, mpp=0.5)
    assert len(found) > 8
    return [SlideTile(synthetic.path, tile) for tile in found[:8]]


def test_a_slide_tile_reads_what_read_tile_reads(synthetic, tiles):
    with open_slide(synthetic.path) as slide:
        for source in tiles:
            expected = np.asarray(read_tile(slide, source.tile))
            assert np.array_equal(np.asarray(load_source(source)), expected)
            assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(source)).load()), expected)
    close_slides()


def test_loader_workers_open_the_slide_themselves_and_agree(tmp_path, tiles):
    png = tmp_path / "patch.png"
    Image.new("RGB", (64, 64), (180, 90, 160)).save(png)
    mixed = [png, *tiles]
    dataset = ImageDataset(mixed, [0] * len(mixed), EvalTransform(32, (0, 0, 0), (1, 1, 1)))
    load_source(tiles[0])  # the parent holds the slide open: forked workers must not use it
    inline = [b.images for b in make_loader(dataset, workers=0, batch_size=3)]
    parallel = [b.images for b in make_loader(dataset, workers=2, batch_size=3)]
    close_slides()
    assert len(inline) == len(parallel) == 3
    for a, b in zip(inline, parallel, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


def test_after_one_failed_read_every_tile_of_the_slide_fails_at_once(tmp_path, synthetic, tiles):
    broken = tmp_path / "broken.tif"
    corrupt_levels(synthetic.path, broken)
    broken_tiles = [SlideTile(broken, source.tile) for source in tiles]
    with pytest.raises(UnreadableImageError) as first:
        broken_tiles[0].load()
    assert str(first.value).startswith("cannot read") and "broken.tif" not in str(first.value)
    opened = []
    original = sources.open_slide
    sources.open_slide = lambda path: opened.append(path) or original(path)
    try:
        for source in broken_tiles[1:]:
            with pytest.raises(UnreadableImageError) as later:
                source.load()
            assert str(later.value) == str(first.value)
    finally:
        sources.open_slide = original
    assert opened == []  # the first error is given again; the slide is not reopened
    assert why_unreadable(broken_tiles[3]) == str(first.value)
    close_slides()
    assert why_unreadable(SlideTile(tmp_path / "absent.svs", tiles[0].tile)) == "no such file"


def test_threads_open_the_slide_each_for_itself_and_agree(tiles):
    expected = [np.asarray(source.load()) for source in tiles]
    read: dict[str, list[np.ndarray]] = {}
    handles: dict[str, object] = {}
    side_by_side = threading.Barrier(2)

    def read_tiles(name: str) -> None:
        side_by_side.wait()
        read[name] = [np.asarray(source.load()) for source in tiles]
        handles[name] = sources._held.mine()[tiles[0].slide]
        close_slides()

    threads = [threading.Thread(target=read_tiles, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each thread held its own handle; this thread's is still open and still its own.
    assert handles["a"] is not handles["b"]
    assert sources._held.mine()[tiles[0].slide] not in handles.values()
    close_slides()
    for arrays in read.values():
        assert all(np.array_equal(a, b) for a, b in zip(arrays, expected, strict=True))
