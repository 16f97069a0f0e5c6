"""Parity measures: cosine per embedding and agreement of nearest-neighbour lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoseek.errors import HistoseekError
from histoseek.model.cgd import ModelConfig
from histoseek_export.parity import compare, neighbour_overlap, parity_images


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_identical_embeddings_pass_with_full_overlap():
    embeddings = _unit(np.random.default_rng(0).standard_normal((30, 16)))
    result = compare("same", embeddings, embeddings.copy(), 0.9999, 0.9)
    assert result.passed
    assert result.min_cosine == pytest.approx(1.0)
    assert result.neighbour_overlap == 1.0
    assert "PASS" in result.summary()


def test_noise_lowers_cosine_and_overlap_and_fails():
    rng = np.random.default_rng(1)
    embeddings = _unit(rng.standard_normal((40, 16)))
    noisy = _unit(embeddings + 0.5 * rng.standard_normal(embeddings.shape))
    result = compare("noisy", embeddings, noisy, 0.999, 0.9)
    assert not result.passed
    assert result.min_cosine < 0.999
    assert neighbour_overlap(embeddings, noisy) < 0.9
    assert "FAIL" in result.summary()


def test_nan_embeddings_fail():
    embeddings = _unit(np.random.default_rng(2).standard_normal((12, 8)))
    broken = embeddings.copy()
    broken[3] = np.nan
    assert not compare("nan", embeddings, broken, 0.9).passed


def test_default_images_are_synthetic_tiles_at_model_size():
    config = ModelConfig(image_size=48)
    images = parity_images(config, count=7)
    assert images.shape == (7, 3, 48, 48)
    assert images.dtype == np.float32
    # Distinct tissue classes, not one repeated picture.
    assert len({image.tobytes() for image in images}) == 7


def test_folder_with_too_few_images_is_refused(tmp_path: Path):
    with pytest.raises(HistoseekError, match="at least 2 readable images"):
        parity_images(ModelConfig(image_size=48), tmp_path)
