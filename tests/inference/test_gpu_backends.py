"""CUDA backends other than TensorRT: ONNX Runtime's CUDA provider and torch AMP.

Needs a CUDA GPU (and onnxruntime-gpu for the ONNX test); skipped elsewhere.
Run with `pytest -m gpu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histoseek.inference.select import create_embedder
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint, save_checkpoint
from histoseek_export.onnx_export import export_onnx

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _images(count: int = 6) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, 3, 64, 64)).astype(np.float32)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def test_auto_on_gpu_picks_onnxruntime_cuda(tmp_path: Path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(image_size=64), weights="imagenet"), [])
    export_onnx(load_checkpoint(path)[0], path.with_suffix(".onnx"))
    embedder = create_embedder(load_checkpoint(path)[0], "auto", checkpoint=path)
    assert embedder.name == "onnxruntime (CUDAExecutionProvider)"
    reference = TorchEmbedder(load_checkpoint(path)[0], device="cpu").embed_batch(_images())
    # ORT's CUDA convolutions may use TF32, hence a looser bound than on CPU.
    assert _min_cosine(reference, embedder.embed_batch(_images())) >= 0.999


def test_torch_amp_matches_fp32():
    model = build_model(ModelConfig(image_size=64), weights="imagenet")
    fp32 = TorchEmbedder(model, device="cuda").embed_batch(_images())
    amp = TorchEmbedder(model, device="cuda", amp=True)
    assert amp.name == "torch (cuda, amp)"
    assert _min_cosine(fp32, amp.embed_batch(_images())) >= 0.999
