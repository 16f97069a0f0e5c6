"""Boxes drawn on slide thumbnails where hits lie."""

from __future__ import annotations

import numpy as np
from PIL import Image

from histoseek.index.slide_query import Box
from histoseek.report.slide_views import (
    HIT_COLOUR,
    MIN_BOX_SIDE,
    QUERY_COLOUR,
    SlideOverviews,
    draw_boxes,
)
from histoseek.report.thumbnails import MISSING_COLOUR
from histoseek.slide.pyramid import write_pyramidal_tiff


def test_boxes_are_drawn_at_the_scaled_place():
    thumbnail = Image.new("RGB", (100, 50), (255, 255, 255))
    boxed = np.asarray(draw_boxes(thumbnail, (1000, 500), [Box(200, 100, 300, 200)]))
    # Level-0 (200, 100)-(500, 300) is thumbnail (20, 10)-(50, 30).
    assert tuple(boxed[10, 20]) == HIT_COLOUR
    assert tuple(boxed[29, 49]) == HIT_COLOUR
    assert tuple(boxed[20, 35]) == (255, 255, 255)  # inside: untouched
    assert tuple(boxed[9, 20]) == (255, 255, 255)
    assert tuple(np.asarray(thumbnail)[10, 20]) == (255, 255, 255)  # the original is kept


def test_a_tiny_box_is_grown_to_stay_visible():
    thumbnail = Image.new("RGB", (100, 100), (255, 255, 255))
    boxed = np.asarray(draw_boxes(thumbnail, (100_000, 100_000), [Box(50_000, 50_000, 224, 224)]))
    rows, columns = np.nonzero((boxed == HIT_COLOUR).all(axis=2))
    assert columns.max() - columns.min() + 1 >= MIN_BOX_SIDE - 1
    assert abs((columns.max() + columns.min()) / 2 - 50) <= 1.5


def test_overviews_read_each_slide_once_and_grey_for_an_unreadable_one(tmp_path, monkeypatch):
    rgb = np.full((1024, 2048, 3), 240, np.uint8)
    rgb[256:512, 512:768] = (150, 60, 120)
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, rgb, "test slide, synthetic", mpp=0.5)
    overviews = SlideOverviews(size=256)
    thumbnail, dimensions = overviews.get(path)
    assert thumbnail.size == (256, 128) and dimensions == (2048, 1024)
    assert np.asarray(thumbnail)[48, 80].tolist() == [150, 60, 120]
    monkeypatch.setattr("histoseek.report.slide_views.open_slide", None)  # read once only
    boxed = np.asarray(overviews.with_boxes(path, [Box(512, 256, 256, 256)], QUERY_COLOUR))
    assert tuple(boxed[32, 64]) == QUERY_COLOUR
    monkeypatch.undo()
    missing, _ = overviews.get(tmp_path / "gone.svs")
    assert np.asarray(missing)[0, 0].tolist() == list(MISSING_COLOUR)
