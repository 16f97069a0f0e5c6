"""The PyTorch backend: always available, and the reference the others are checked against."""

from __future__ import annotations

import numpy as np
import torch

from histoseek.errors import HistoseekError
from histoseek.inference.base import checked_embeddings
from histoseek.model.cgd import CGD


def resolve_device(device: str) -> torch.device:
    """Map --device auto|cpu|cuda to a torch device, refusing cuda where there is none."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise HistoseekError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


class TorchEmbedder:
    """Eager PyTorch inference; channels-last memory layout, which is much faster on CPUs.

    `channels_last=False` keeps PyTorch's default NCHW layout (for comparisons).
    """

    def __init__(
        self, model: CGD, device: str = "auto", amp: bool = False, channels_last: bool = True
    ):
        self.device = resolve_device(device)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.layout)
        self.amp = amp and self.device.type == "cuda"
        self.dim = model.config.dim
        self.batch_threads = 1
        self.name = f"torch ({self.device.type}{', amp' if self.amp else ''})"
        self.precision = "fp16" if self.amp else "fp32"

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed an NCHW float32 batch → (N, dim) float32."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.contiguous(memory_format=self.layout)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            embeddings = self.model.embed(batch)
        return checked_embeddings(
            embeddings.float().cpu().numpy(),
            len(images),
            self.dim,
            "the model",
            "its weights are damaged, or overflow in this precision; use another checkpoint",
        )
