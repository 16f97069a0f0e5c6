"""Image sources: what the embedding pipeline reads, an image file or a region of a slide.

An image source is either a path (decoded whole by `load_rgb_sized`) or an object with a
`load()` method returning an RGB image (a slide tile: histoseek.slide.sources.SlideTile). Such
objects are small and picklable, so decoding workers load them themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError, load_rgb_sized


class LoadableImage(Protocol):
    """An image that knows how to read itself (raising UnreadableImageError when it cannot)."""

    def load(self) -> Image.Image:
        """The image as 8-bit RGB."""


ImageSource = Path | str | LoadableImage


@dataclass(frozen=True)
class ImageInMemory:
    """An image already decoded (a region read from a query slide), as a source."""

    image: Image.Image
    name: str

    def load(self) -> Image.Image:
        """The image itself."""
        return self.image

    def __str__(self) -> str:
        return self.name


def load_source(source: ImageSource) -> Image.Image:
    """The source's pixels as 8-bit RGB, or UnreadableImageError."""
    return load_source_sized(source)[0]


def load_source_sized(
    source: ImageSource, min_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """The source's pixels as 8-bit RGB and its width and height as stored, or
    UnreadableImageError. `min_size` lets a large JPEG decode at reduced scale (see
    load_rgb_sized); a slide tile is read at its own size."""
    if isinstance(source, (str, os.PathLike)):
        return load_rgb_sized(source, min_size=min_size)
    image = source.load()
    return image, image.size


def source_name(source: ImageSource) -> str:
    """The source as shown to people: a path, or what the source says it is."""
    if isinstance(source, (str, os.PathLike)):
        return display_path(source)
    return str(source)


def unreadable_reason(source: ImageSource, error: UnreadableImageError) -> str:
    """Why a source could not be read, from the decoder's error, without the source's name."""
    cause = error.__cause__ or error
    message = str(cause)
    if isinstance(source, (str, os.PathLike)):
        message = message.replace(repr(str(source)), "").replace(str(source), "")
    return message.strip(" :") or type(cause).__name__


def why_unreadable(source: ImageSource) -> str:
    """The decoder's reason a source cannot be read (it is read again to find out)."""
    try:
        load_source(source)
    except UnreadableImageError as error:
        return unreadable_reason(source, error)
    return "could not be decoded"
