"""Cutting an image into a grid of square patches and measuring the tissue in each."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image


def resample(image: Image.Image, scale: float) -> Image.Image:
    """The image resized by `scale` (Lanczos); unchanged at scale 1."""
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def tile_origins(width: int, height: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of every whole patch, row by row (partial edges dropped)."""
    return [
        (x, y)
        for y in range(0, height - patch_size + 1, stride)
        for x in range(0, width - patch_size + 1, stride)
    ]


def tissue_fractions(
    mask: np.ndarray, origins: list[tuple[int, int]], patch_size: int
) -> Iterator[float]:
    """The fraction of tissue pixels in each patch, from a summed-area table of the mask."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    area = patch_size * patch_size
    for x, y in origins:
        x2, y2 = x + patch_size, y + patch_size
        inside = table[y2, x2] - table[y, x2] - table[y2, x] + table[y, x]
        yield float(inside) / area
