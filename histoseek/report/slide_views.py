"""Slide thumbnails with boxes drawn where tiles or regions lie, for galleries of slide answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from histoseek.errors import HistoseekError
from histoseek.index.slide_query import Box
from histoseek.report.thumbnails import MISSING_COLOUR
from histoseek.slide.reader import open_slide

#: A box drawn smaller than this many thumbnail pixels a side is grown to it, around its
#: centre, so a 224-px tile on a 100,000-px slide still shows.
MIN_BOX_SIDE = 7
HIT_COLOUR = (230, 40, 40)
QUERY_COLOUR = (31, 111, 235)


class SlideOverviews:
    """Slide thumbnails with their longer side `size` px, each read once however many hits
    show it; a slide that cannot be read any more gets a grey square (the gallery still shows
    its hits' other details)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cache: dict[Path, tuple[Image.Image, tuple[int, int]]] = {}

    def get(self, path: Path) -> tuple[Image.Image, tuple[int, int]]:
        """(the thumbnail, the slide's level-0 size) of the slide at `path`."""
        path = Path(path)
        if path not in self._cache:
            try:
                with open_slide(path) as slide:
                    self._cache[path] = (slide.thumbnail(self.size), slide.dimensions)
            except HistoseekError:
                self.forget(path)
        return self._cache[path]

    def forget(self, path: Path) -> None:
        """Show the slide at `path` as a grey square from now on: it is no longer the slide
        the boxes were found on."""
        self._cache[Path(path)] = (
            Image.new("RGB", (self.size, self.size), MISSING_COLOUR),
            (self.size, self.size),
        )

    def with_boxes(
        self, path: Path, boxes: Sequence[Box], colour: tuple[int, int, int] = HIT_COLOUR
    ) -> Image.Image:
        """A copy of the slide's thumbnail with each box outlined in `colour`."""
        thumbnail, dimensions = self.get(path)
        return draw_boxes(thumbnail, dimensions, boxes, colour)


def draw_boxes(
    thumbnail: Image.Image,
    dimensions: tuple[int, int],
    boxes: Sequence[Box],
    colour: tuple[int, int, int] = HIT_COLOUR,
) -> Image.Image:
    """A copy of `thumbnail` (of a slide of level-0 `dimensions`) with the boxes outlined."""
    image = thumbnail.copy()
    draw = ImageDraw.Draw(image)
    scale_x = image.width / dimensions[0]
    scale_y = image.height / dimensions[1]
    line = max(1, round(min(image.size) / 160))
    for box in boxes:
        left, top = box.x * scale_x, box.y * scale_y
        right, bottom = (box.x + box.width) * scale_x, (box.y + box.height) * scale_y
        grow_x = max(0.0, MIN_BOX_SIDE - (right - left)) / 2
        grow_y = max(0.0, MIN_BOX_SIDE - (bottom - top)) / 2
        draw.rectangle(
            (
                round(left - grow_x),
                round(top - grow_y),
                round(right + grow_x) - 1,
                round(bottom + grow_y) - 1,
            ),
            outline=colour,
            width=line,
        )
    return image
