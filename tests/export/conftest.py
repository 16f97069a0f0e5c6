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


def make_checkpoint(folder: Path) -> Path:
    """Save a checkpoint with ImageNet trunk weights and a 3-class head, at 64 px."""
    model = build_model(ModelConfig(num_classes=3, image_size=IMAGE_SIZE), weights="imagenet")
    path = folder / "run" / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c"])
    return path


@pytest.fixture(scope="session")
def checkpoint_maker():
    """`make_checkpoint`, for fixtures of wider scope that need their own checkpoint."""
    return make_checkpoint


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    """A fresh checkpoint in its own folder (exports land beside it)."""
    return make_checkpoint(tmp_path)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, its static-size ONNX export), shared by tests that only read them."""
    from histoseek.model.checkpoint import load_checkpoint
    from histoseek_export.onnx_export import export_onnx

    path = make_checkpoint(tmp_path_factory.mktemp("exported"))
    model, class_names, _ = load_checkpoint(path)
    export_onnx(model, path.with_suffix(".onnx"), opset=13, class_names=class_names)
    return path, path.with_suffix(".onnx")
