"""Fixtures for the index tests: a folder of real tiles and small trained-format checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from index_helpers import copy_tiles


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    """A folder of 8 real tiles of 4 classes, this test's own."""
    return copy_tiles(tmp_path / "tiles")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A trained-format checkpoint of a small CGD (64 px input, 96-d), quick on a CPU."""
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "model.pt"
    model = build_model(ModelConfig(num_classes=8, image_size=64, dim=96), weights="imagenet")
    save_checkpoint(path, model, [f"class{i}" for i in range(8)])
    return path


@pytest.fixture
def other_checkpoint(tmp_path: Path) -> Path:
    """The same architecture as `checkpoint` with other weights (seed 1)."""
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    path = tmp_path / "other.pt"
    model = build_model(
        ModelConfig(num_classes=8, image_size=64, dim=96), weights="imagenet", seed=1
    )
    save_checkpoint(path, model, [f"class{i}" for i in range(8)])
    return path
