"""CGD: a backbone whose last feature map feeds several global descriptors, concatenated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from histoseek.errors import HistoseekError
from histoseek.model.backbones import build_trunk, get_backbone_spec
from histoseek.model.defaults import (
    DEFAULT_BACKBONE,
    DEFAULT_DIM,
    DEFAULT_GD_CONFIG,
    DEFAULT_IMAGE_SIZE,
)
from histoseek.model.descriptors import build_descriptor, parse_gd_config


@dataclass
class ModelConfig:
    """Everything needed to rebuild a CGD model; stored in checkpoints and index manifests."""

    backbone: str = DEFAULT_BACKBONE
    gd_config: str = DEFAULT_GD_CONFIG
    dim: int = DEFAULT_DIM
    num_classes: int = 0
    image_size: int = DEFAULT_IMAGE_SIZE
    mean: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    def __post_init__(self) -> None:
        spec = get_backbone_spec(self.backbone)
        self.gd_config = parse_gd_config(self.gd_config)
        if self.dim <= 0 or self.dim % len(self.gd_config):
            raise HistoseekError(
                f"--dim {self.dim} must be a positive multiple of the number of descriptors "
                f"({len(self.gd_config)} in {self.gd_config})"
            )
        if self.num_classes == 1 or self.num_classes < 0:
            raise HistoseekError("a CGD classifier needs at least 2 classes (0: no classifier)")
        if self.image_size < 32:
            raise HistoseekError(f"image size {self.image_size} is too small; use 32 or more")
        if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0):
            self.mean, self.std = spec.mean, spec.std
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def to_dict(self) -> dict:
        """A plain dict (JSON- and weights_only-safe)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from `to_dict` output, ignoring keys this version does not know."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class CGD(nn.Module):
    """Combination of multiple global descriptors (Jun et al., arXiv 1903.10663)."""

    def __init__(self, config: ModelConfig, trunk: nn.Module):
        super().__init__()
        self.config = config
        channels = get_backbone_spec(config.backbone).out_channels
        per_descriptor = config.dim // len(config.gd_config)
        self.trunk = trunk
        self.descriptors = nn.ModuleList(build_descriptor(c) for c in config.gd_config)
        self.projections = nn.ModuleList(
            nn.Linear(channels, per_descriptor, bias=False) for _ in config.gd_config
        )
        # The auxiliary classifier only matters for training; the built-in untrained model has none.
        self.classifier = (
            nn.Sequential(nn.BatchNorm1d(channels), nn.Linear(channels, config.num_classes))
            if config.num_classes
            else None
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (L2-normalised embeddings, class logits from the first descriptor or None)."""
        feature_map = self.trunk(images)
        parts = []
        logits = None
        for i, (pool, project) in enumerate(zip(self.descriptors, self.projections, strict=True)):
            pooled = pool(feature_map)
            if i == 0 and self.classifier is not None:
                logits = self.classifier(pooled)
            parts.append(F.normalize(project(pooled.to(project.weight.dtype)), dim=-1))
        return F.normalize(torch.cat(parts, dim=-1), dim=-1), logits

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings only (what retrieval, indexing and export use)."""
        return self.forward(images)[0]


class EmbeddingOnly(nn.Module):
    """Wraps a CGD so its forward returns only the embedding (for export and tracing)."""

    def __init__(self, model: CGD):
        super().__init__()
        self.model = model
        self.train(model.training)  # a new Module starts in training mode; keep the model's

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def build_model(config: ModelConfig, weights: str = "none", seed: int = 0) -> CGD:
    """Build a CGD model; randomly initialised layers come from `seed`, so builds repeat."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CGD(config, build_trunk(config.backbone, weights))


def builtin_model() -> CGD:
    """The built-in model: ImageNet EfficientNet-Lite0 with the default CGD head, untrained.

    Its projections are fixed random (seed 0) maps, which preserve distances well enough to
    search with before any training; a trained checkpoint is better.
    """
    return build_model(ModelConfig(), weights="imagenet", seed=0).eval()
