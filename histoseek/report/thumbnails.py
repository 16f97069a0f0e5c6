"""Square thumbnails of query and result images for galleries and contact sheets."""

from __future__ import annotations

import base64
import io

from PIL import Image

from histoseek.data.images import UnreadableImageError
from histoseek.data.sources import ImageSource, load_source

#: Shown in place of a result whose file has gone or can no longer be read.
MISSING_COLOUR = (200, 200, 200)


def load_thumbnail(source: ImageSource, size: int) -> Image.Image:
    """The image (a file, or a slide tile) fitted into a size×size square (letterboxed in
    white), or a grey square when it cannot be read."""
    try:
        image = load_source(source)
    except UnreadableImageError:
        return Image.new("RGB", (size, size), MISSING_COLOUR)
    return fit_thumbnail(image, size)


def fit_thumbnail(image: Image.Image, size: int) -> Image.Image:
    """The image fitted into a size×size square, letterboxed in white."""
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(fitted, Image.BILINEAR)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return square


def data_uri(image: Image.Image, lossless: bool = False) -> str:
    """A JPEG (or, `lossless`, PNG) data URI of an image, to embed it in a self-contained
    HTML page."""
    buffer = io.BytesIO()
    if lossless:
        image.save(buffer, format="PNG")
    else:
        # No chroma subsampling: thin coloured outlines (boxes on slides) stay sharp.
        image.save(buffer, format="JPEG", quality=85, subsampling=0)
    kind = "png" if lossless else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
