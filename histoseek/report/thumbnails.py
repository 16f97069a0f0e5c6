"""Square thumbnails of query and result images for galleries and contact sheets."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from histoseek.data.images import UnreadableImageError, load_rgb

#: Shown in place of a result whose file has gone or can no longer be read.
MISSING_COLOUR = (200, 200, 200)


def load_thumbnail(path: Path, size: int) -> Image.Image:
    """The image fitted into a size×size square (letterboxed in white), or a grey square."""
    try:
        image = load_rgb(path)
    except UnreadableImageError:
        return Image.new("RGB", (size, size), MISSING_COLOUR)
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(fitted, Image.BILINEAR)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return square


def data_uri(image: Image.Image) -> str:
    """A JPEG data URI of an image, to embed it in a self-contained HTML page."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
