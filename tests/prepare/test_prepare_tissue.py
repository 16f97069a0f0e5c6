"""Tissue mask and tiling grid."""

from __future__ import annotations

import numpy as np
from synthetic_slides import he_image

from histoseek.prepare.tiling import tile_origins, tissue_fractions
from histoseek.prepare.tissue import MAX_THRESHOLD, MIN_THRESHOLD, otsu_threshold, tissue_mask


def test_mask_separates_tissue_from_glass():
    rgb = he_image(256, 192, seed=3, tissue_width=128)
    mask = tissue_mask(rgb)
    assert mask[:, :128].mean() > 0.99
    assert mask[:, 128:].mean() < 0.01


def test_mask_keeps_an_image_that_is_all_tissue():
    # Plain Otsu would split the tissue into pale and dark halves; the clamp keeps it whole.
    rgb = he_image(256, 256, seed=1)
    assert tissue_mask(rgb).mean() > 0.99


def test_mask_of_plain_glass_is_empty():
    rng = np.random.default_rng(0)
    glass = (244 + rng.integers(-3, 4, (128, 128, 3))).astype(np.uint8)
    assert tissue_mask(glass).mean() == 0.0


def test_otsu_threshold_splits_two_populations():
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.7)])
    assert 0.1 <= otsu_threshold(values) < 0.7
    assert MIN_THRESHOLD < MAX_THRESHOLD


def test_tile_origins_cover_whole_patches_only():
    assert tile_origins(200, 130, 64, 64) == [
        (0, 0),
        (64, 0),
        (128, 0),
        (0, 64),
        (64, 64),
        (128, 64),
    ]
    assert len(tile_origins(200, 130, 64, 32)) == 5 * 3
    assert tile_origins(50, 50, 64, 64) == []


def test_tissue_fractions_match_direct_means():
    rng = np.random.default_rng(1)
    mask = rng.random((100, 140)) > 0.6
    origins = tile_origins(140, 100, 32, 20)
    expected = [mask[y : y + 32, x : x + 32].mean() for x, y in origins]
    assert np.allclose(list(tissue_fractions(mask, origins, 32)), expected)
