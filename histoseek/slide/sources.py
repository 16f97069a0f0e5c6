"""Slide tiles as image sources for the embedding pipeline, read by whichever process loads them.

A `SlideTile` is a slide's path and a Tile: small and picklable, unlike an open slide, so each
decoding worker opens the slide itself, once, and keeps it open while it reads that slide's
tiles. OpenSlide refuses every read on a handle after one failed read, so the first error is
kept and given again for every later tile of that slide: the caller skips the whole slide.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError
from histoseek.slide.reader import Slide, SlideError, open_slide
from histoseek.slide.tiling import Tile, read_tile

# Slides a process keeps open at once: a loader reads one slide's tiles after another, so one
# would do; two spare a reopen where a batch spans two slides.
OPEN_SLIDES = 2

# The slides this process holds open (or the error that made one unreadable), most recent last,
# and the process they were opened in: a forked worker must not use its parent's handles.
_open: OrderedDict[Path, Slide | SlideError] = OrderedDict()
_owner = os.getpid()


def _slide(path: Path) -> Slide:
    """The open slide at `path` for this process, opened on first use; its first error again."""
    global _owner
    if _owner != os.getpid():
        _open.clear()  # inherited from the parent process: not ours to use or close
        _owner = os.getpid()
    if path in _open:
        _open.move_to_end(path)
    else:
        while len(_open) >= OPEN_SLIDES:
            _, evicted = _open.popitem(last=False)
            if isinstance(evicted, Slide):
                evicted.close()
        try:
            _open[path] = open_slide(path)
        except SlideError as error:
            _open[path] = error
    held = _open[path]
    if isinstance(held, SlideError):
        raise held
    return held


def close_slides() -> None:
    """Close the slides this process holds open and forget their errors."""
    if _owner == os.getpid():
        for held in _open.values():
            if isinstance(held, Slide):
                held.close()
    _open.clear()


@dataclass(frozen=True)
class SlideTile:
    """One tile of a slide file, read back exactly as `read_tile` reads it."""

    slide: Path
    tile: Tile

    def load(self) -> Image.Image:
        """The tile's pixels, or UnreadableImageError saying why (without the slide's name)."""
        try:
            slide = _slide(self.slide)
            try:
                return read_tile(slide, self.tile)
            except SlideError as error:
                _open[self.slide] = error  # OpenSlide refuses this handle from now on
                slide.close()
                raise
        except SlideError as error:
            reason = str(error).removeprefix(f"{display_path(self.slide)}: ")
            raise UnreadableImageError(reason) from None

    def __str__(self) -> str:
        return f"{display_path(self.slide)} (tile at {self.tile.x}, {self.tile.y})"
