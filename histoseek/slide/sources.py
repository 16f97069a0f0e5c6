"""Slide tiles as image sources for the embedding pipeline, read by whichever thread loads them.

A `SlideTile` is a slide's path and a Tile: small and picklable, unlike an open slide, so each
decoding worker (process or thread) opens the slide itself, once, and keeps it open while it
reads that slide's tiles. OpenSlide refuses every read on a handle after one failed read, so
the first error is kept and given again for every later tile of that slide: the caller skips
the whole slide.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError
from histoseek.slide.reader import Slide, SlideError, open_slide
from histoseek.slide.tiling import Tile, read_tile

# Slides a thread keeps open at once: a loader reads one slide's tiles after another, so one
# would do; two spare a reopen where a batch spans two slides.
OPEN_SLIDES = 2


class _OpenSlides(threading.local):
    """The slides this thread holds open (or the error that made one unreadable), most recent
    last, and the process they were opened in: a forked worker must not use its parent's
    handles. Each thread has its own, as one thread must not close a slide another reads;
    a thread's slides are closed when it ends."""

    def __init__(self) -> None:
        self.slides: OrderedDict[Path, Slide | SlideError] = OrderedDict()
        self.owner = os.getpid()

    def mine(self) -> OrderedDict[Path, Slide | SlideError]:
        """The slides, forgotten first if they were inherited from the parent process."""
        if self.owner != os.getpid():
            self.slides.clear()  # inherited from the parent process: not ours to use or close
            self.owner = os.getpid()
        return self.slides


_held = _OpenSlides()


def _slide(path: Path) -> Slide:
    """The open slide at `path` for this thread, opened on first use; its first error again."""
    held = _held.mine()
    if path in held:
        held.move_to_end(path)
    else:
        while len(held) >= OPEN_SLIDES:
            _, evicted = held.popitem(last=False)
            if isinstance(evicted, Slide):
                evicted.close()
        try:
            held[path] = open_slide(path)
        except SlideError as error:
            held[path] = error
    slide = held[path]
    if isinstance(slide, SlideError):
        raise slide
    return slide


def close_slides() -> None:
    """Close the slides this thread holds open and forget their errors."""
    for slide in _held.mine().values():
        if isinstance(slide, Slide):
            slide.close()
    _held.slides.clear()


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
                _held.mine()[self.slide] = error  # OpenSlide refuses this handle from now on
                slide.close()
                raise
        except SlideError as error:
            reason = str(error).removeprefix(f"{display_path(self.slide)}: ")
            raise UnreadableImageError(reason) from None

    def __str__(self) -> str:
        return f"{display_path(self.slide)} (tile at {self.tile.x}, {self.tile.y})"
