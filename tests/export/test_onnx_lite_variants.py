"""The larger EfficientNet-Lites export to ONNX and pass the same parity check as Lite0."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import model_fingerprint, save_checkpoint
from histoseek_export.checked_export import run_export
from histoseek_export.parity import ONNX_MIN_COSINE


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_checked_onnx_export_passes_parity(backbone: str, tmp_path: Path):
    model = build_model(
        ModelConfig(backbone=backbone, num_classes=3, image_size=64), weights="imagenet"
    )
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model, ["a", "b", "c"])
    notes: list[str] = []
    results = run_export(checkpoint, opset=13, notify=notes.append)
    assert [r.backend for r in results] == ["onnxruntime"]
    assert results[0].passed and results[0].min_cosine >= ONNX_MIN_COSINE
    assert any("PASS" in note for note in notes)
    embedder = OnnxEmbedder(checkpoint.with_suffix(".onnx"), fingerprint=model_fingerprint(model))
    assert embedder.dim == model.config.dim
