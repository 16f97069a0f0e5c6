"""Choosing an embedding backend for a model: `--backend auto|torch|onnx|tensorrt`."""

from __future__ import annotations

from pathlib import Path

from histoseek.errors import HistoseekError
from histoseek.inference.base import Embedder
from histoseek.model.cgd import CGD

BACKENDS = ("auto", "torch", "onnx", "tensorrt")


def create_embedder(
    model: CGD,
    backend: str = "auto",
    device: str = "auto",
    checkpoint: Path | None = None,
) -> Embedder:
    """Create the embedder for `model` on the requested backend ('auto': the fastest usable)."""
    if backend not in BACKENDS:
        raise HistoseekError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "torch"):
        from histoseek.inference.torch_backend import TorchEmbedder

        return TorchEmbedder(model, device=device)
    raise HistoseekError(f"the {backend} backend is not available in this build")
