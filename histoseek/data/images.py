"""Decoding any image file histology sets come in to 8-bit RGB."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})

#: Images with more pixels than this are refused before decoding; see `pixel_limit`.
_max_pixels = DEFAULT_MAX_PIXELS


class UnreadableImageError(Exception):
    """An image file that cannot be decoded (truncated, corrupt or not an image)."""


def is_image_name(path: Path | str) -> bool:
    """Whether a file name has one of the supported image extensions, in any case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        # 16-bit and 32-bit integer greyscale: scale the real range down to 8 bits rather
        # than letting Pillow clip everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in {"RGBA", "LA"} and image.getchannel("A").getextrema() == (255, 255):
        # Fully opaque (as slide regions inside the tissue are): nothing to composite.
        return image.convert("RGB")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, the colour of empty glass on a slide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Within the block, refuse images of more than `limit` pixels (width × height).

    It holds in this process and in the decoding workers it forks. Pillow's own check, which
    warns above its limit and refuses only above twice that, is off meanwhile: ours replaces it.
    """
    global _max_pixels
    previous = _max_pixels, Image.MAX_IMAGE_PIXELS
    _max_pixels, Image.MAX_IMAGE_PIXELS = limit, None
    try:
        yield
    finally:
        _max_pixels, Image.MAX_IMAGE_PIXELS = previous


def current_pixel_limit() -> int:
    """The pixel limit in force here: the innermost `pixel_limit`, else the default."""
    return _max_pixels


def _check_pixel_limit(size: tuple[int, int]) -> None:
    """Raise ValueError if an image of `size` (from its header) is above the pixel limit."""
    width, height = size
    if width * height > _max_pixels:
        raise ValueError(
            f"{width}×{height} = {width * height:,} pixels is above the limit of "
            f"{_max_pixels:,} (--max-pixels)"
        )


def load_rgb(path: Path | str, min_size: int | None = None) -> Image.Image:
    """Open an image file fully decoded as 8-bit RGB, or raise UnreadableImageError (see
    load_rgb_sized)."""
    return load_rgb_sized(path, min_size)[0]


def load_rgb_sized(
    path: Path | str, min_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """An image file decoded as 8-bit RGB, and its width and height as stored; or raise
    UnreadableImageError.

    Images above the pixel limit are refused from their header, before anything is decoded.
    With `min_size`, a JPEG more than twice that size on both sides is decoded at 1/2, 1/4 or
    1/8 scale (libjpeg scales in the DCT domain, far faster than decoding every pixel), at the
    largest reduction that keeps both sides at least `min_size`; other files decode in full.
    The stored size is the file's own either way.
    """
    try:
        with Image.open(path) as image:
            stored_size = image.size
            _check_pixel_limit(stored_size)
            if min_size is not None:
                # The mode is kept as is: draft only scales; to_rgb converts below.
                image.draft(image.mode, (min_size, min_size))
            image.load()
            return to_rgb(image), stored_size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: {error}") from error


def check_image_header(path: Path | str) -> None:
    """Read only the header: raise UnreadableImageError unless a within-limit image follows."""
    try:
        with Image.open(path) as image:
            _check_pixel_limit(image.size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: {error}") from error
