"""Fixtures for export tests: a small trained-format checkpoint and the Kather tiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint

KATHER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kather2016"
IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def kather_dir() -> Path:
    """Real H&E tiles (Kather 2016), which are never committed; skip where they are absent."""
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available at {KATHER}")
    return KATHER


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    """A checkpoint with ImageNet trunk weights and a 3-class head, at 64 px."""
    model = build_model(ModelConfig(num_classes=3, image_size=IMAGE_SIZE), weights="imagenet")
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c"])
    return path
