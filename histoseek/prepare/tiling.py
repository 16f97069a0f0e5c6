"""Cutting an image into a grid of square patches and measuring the tissue in each."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def tile_origins(width: int, height: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of every whole patch, row by row (partial edges dropped)."""
    return [
        (x, y)
        for y in range(0, height - patch_size + 1, stride)
        for x in range(0, width - patch_size + 1, stride)
    ]


def tissue_fractions(
    mask: np.ndarray, origins: list[tuple[int, int]], patch_size: int, shrink: float = 1.0
) -> Iterator[float]:
    """The fraction of tissue pixels in each patch, from a summed-area table of the mask.

    The mask may be `shrink` times smaller than the image the origins and patch size are in;
    each patch then covers the mask pixels its edges round to (at least one a side).
    """
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    for x, y in origins:
        x1, y1 = round(x / shrink), round(y / shrink)
        x2 = min(max(round((x + patch_size) / shrink), x1 + 1), mask.shape[1])
        y2 = min(max(round((y + patch_size) / shrink), y1 + 1), mask.shape[0])
        inside = table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]
        yield float(inside) / ((x2 - x1) * (y2 - y1))
