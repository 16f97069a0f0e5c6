"""ONNX export: the checked graph, its metadata and its agreement with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.inference.exported import (
    META_CLASS_NAMES,
    META_CONFIG,
    META_FINGERPRINT,
    META_VERSION,
)
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint
from histoseek_export.onnx_export import export_onnx
from histoseek_export.parity import ONNX_MIN_COSINE, compare, parity_images


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_is_checked_embedding_only_with_metadata(exported):
    checkpoint, path = exported
    model, _, _ = load_checkpoint(checkpoint)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    # Only the embedding: the classifier head is not exported.
    assert [o.name for o in proto.graph.output] == ["embeddings"]
    assert _dims(proto.graph.input[0]) == ["batch", 3, 64, 64]
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 13
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata[META_FINGERPRINT] == model_fingerprint(model)
    assert json.loads(metadata[META_CONFIG]) == model.config.to_dict()
    assert json.loads(metadata[META_CLASS_NAMES]) == ["a", "b", "c"]
    assert metadata[META_VERSION]


def test_onnxruntime_matches_torch_on_real_tiles(exported, kather_dir):
    checkpoint, path = exported
    model, _, _ = load_checkpoint(checkpoint)
    images = parity_images(model.config, kather_dir, count=24)
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(images)).numpy().astype(np.float64)
    embedder = OnnxEmbedder(path, fingerprint=model_fingerprint(model))
    # Batch sizes 1 and 23 exercise the dynamic batch axis.
    got = np.concatenate([embedder.embed_batch(images[:1]), embedder.embed_batch(images[1:])])
    result = compare("onnxruntime", expected, got.astype(np.float64), ONNX_MIN_COSINE)
    assert result.passed, result.summary()
    assert result.min_cosine >= 0.9999
    assert got.shape == (24, model.config.dim)


def test_dynamic_size_export_runs_at_two_sizes(checkpoint: Path, tmp_path: Path):
    model, _, _ = load_checkpoint(checkpoint)
    path = tmp_path / "dynamic.onnx"
    export_onnx(model, path, dynamic_size=True)
    # Exporting must leave the batch norms in eval mode, or `model.embed` would change them.
    assert not any(module.training for module in model.modules())
    embedder = OnnxEmbedder(path)
    rng = np.random.default_rng(0)
    for size in (64, 96):
        images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            expected = model.embed(torch.from_numpy(images)).numpy()
        got = embedder.embed_batch(images)
        assert np.min(np.sum(expected * got, axis=1)) >= 0.9999


def test_static_size_export_refuses_other_sizes(exported):
    _, path = exported
    with pytest.raises(HistoseekError, match="takes 64×64 images.*--dynamic-size"):
        OnnxEmbedder(path).embed_batch(np.zeros((1, 3, 96, 96), np.float32))


def test_unsupported_opset_is_refused(checkpoint: Path, tmp_path: Path):
    model, _, _ = load_checkpoint(checkpoint)
    with pytest.raises(HistoseekError, match="--opset 9 is not supported"):
        export_onnx(model, tmp_path / "old.onnx", opset=9)
    assert not (tmp_path / "old.onnx").exists()
