"""Macenko and Reinhard stain normalisation on synthetic Beer–Lambert images."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_slides import EOSIN, HEMATOXYLIN, he_image, save, unit

from histoseek.errors import HistoseekError
from histoseek.prepare.stain import (
    MacenkoNormalizer,
    MacenkoStains,
    ReinhardNormalizer,
    fit_normalizer,
    lab_statistics,
    lab_to_rgb,
    rgb_to_lab,
)

# A second, visibly different staining: bluer haematoxylin, more orange eosin, darker overall.
OTHER_STAINS = (np.array([0.55, 0.78, 0.30]), np.array([0.15, 0.95, 0.25]))


def test_macenko_recovers_the_stain_vectors():
    stains = MacenkoStains.fit(he_image(256, 256, seed=1))
    assert stains is not None
    assert stains.stain_matrix[0] @ unit(HEMATOXYLIN) > 0.99
    assert stains.stain_matrix[1] @ unit(EOSIN) > 0.99


def test_macenko_to_itself_is_nearly_identity():
    image = he_image(256, 256, seed=1)
    out = MacenkoNormalizer.fit(image).normalize(image)
    assert np.abs(out.astype(int) - image).max() <= 2


def test_macenko_moves_stains_to_the_reference():
    source = he_image(256, 256, seed=1)
    reference = he_image(256, 256, seed=2, stains=OTHER_STAINS, strength=1.3)
    normalizer = MacenkoNormalizer.fit(reference)
    refit = MacenkoStains.fit(normalizer.normalize(source))
    # Rounding to uint8 and clipping at white make the refit close, not exact.
    cosines = (refit.stain_matrix * normalizer.reference.stain_matrix).sum(axis=1)
    assert cosines.min() > 0.999
    assert np.allclose(refit.max_concentrations, normalizer.reference.max_concentrations, rtol=0.06)
    before = np.abs(source.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max()
    after = np.abs(normalizer.normalize(source).mean(axis=(0, 1)) - reference.mean(axis=(0, 1)))
    assert before > 20 and after.max() < before / 5


def test_macenko_leaves_glass_unchanged_and_refuses_a_blank_reference():
    glass = np.full((64, 64, 3), 245, dtype=np.uint8)
    normalizer = MacenkoNormalizer.fit(he_image(128, 128))
    assert np.array_equal(normalizer.normalize(glass), glass)
    with pytest.raises(HistoseekError, match="too little stained tissue"):
        MacenkoNormalizer.fit(glass)


def test_lab_round_trip_and_white_point():
    pixels = np.random.default_rng(0).integers(0, 256, (5000, 3)).astype(np.uint8)
    assert np.array_equal(lab_to_rgb(rgb_to_lab(pixels)), pixels)
    white = rgb_to_lab(np.array([[255, 255, 255]], dtype=np.uint8))[0]
    assert np.allclose(white, [100, 0, 0], atol=1e-3)


def test_reinhard_to_itself_is_identity():
    image = he_image(128, 128, seed=4, tissue_width=96)
    assert np.abs(ReinhardNormalizer.fit(image).normalize(image).astype(int) - image).max() <= 1


def test_reinhard_moves_lab_statistics_to_the_reference():
    source = he_image(256, 256, seed=1)
    reference = he_image(256, 256, seed=2, stains=OTHER_STAINS, strength=1.3)
    normalizer = ReinhardNormalizer.fit(reference)
    mean, std = lab_statistics(normalizer.normalize(source))
    assert np.abs(lab_statistics(source)[0] - normalizer.mean).max() > 5
    assert np.allclose(mean, normalizer.mean, atol=0.5)
    assert np.allclose(std, normalizer.std, rtol=0.05)


def test_fit_normalizer_reads_the_reference_and_records_parameters(tmp_path):
    path = save(tmp_path / "ref.png", he_image(128, 128))
    macenko = fit_normalizer("macenko", path).parameters()
    assert set(macenko) == {"stain_matrix", "max_concentrations"}
    assert len(macenko["stain_matrix"]["hematoxylin"]) == 3
    assert set(fit_normalizer("reinhard", path).parameters()) == {"lab_mean", "lab_std"}
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(HistoseekError, match="cannot read --reference"):
        fit_normalizer("macenko", tmp_path / "bad.png")
