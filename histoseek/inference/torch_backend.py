"""The PyTorch backend: always available, and the reference the others are checked against."""

from __future__ import annotations

import numpy as np
import torch

from histoseek.errors import HistoseekError
from histoseek.model.cgd import CGD


def resolve_device(device: str) -> torch.device:
    """Map --device auto|cpu|cuda to a torch device, refusing cuda where there is none."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise HistoseekError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


class TorchEmbedder:
    """Eager PyTorch inference; channels-last memory layout, which is much faster on CPUs."""

    def __init__(self, model: CGD, device: str = "auto", amp: bool = False):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.amp = amp and self.device.type == "cuda"
        self.dim = model.config.dim
        self.name = f"torch ({self.device.type}{', amp' if self.amp else ''})"

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed an NCHW float32 batch → (N, dim) float32."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            embeddings = self.model.embed(batch)
        return embeddings.float().cpu().numpy()
