"""CGD: a backbone whose last feature map feeds several global descriptors, concatenated."""

from __future__ import annotations

import math
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
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
)
from histoseek.model.descriptors import build_descriptor, parse_gd_config

# Bounds far beyond any real CGD model, to refuse nonsense before allocating for it.
MAX_DIM = 16384
MAX_CLASSES = 100_000
POWER_FLOOR = 1e-6


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoseekError(f"{name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise HistoseekError(f"{name} {value} is out of range; use {low} to {high}")


def _check_channels(name: str, value: object) -> tuple[float, float, float]:
    numbers = list(value) if isinstance(value, (list, tuple)) else []
    if len(numbers) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in numbers
    ):
        raise HistoseekError(f"{name} must be 3 finite numbers (one per channel), not {value!r}")
    return tuple(float(v) for v in numbers)


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
    # Power normalisation: every pooled descriptor is raised to this power before its
    # projection (1: none). 0.5 keeps the few channels with large activations from
    # dominating cosine similarity ("burstiness").
    power: float = 1.0

    def __post_init__(self) -> None:
        # A config may come from a file (checkpoint, manifest): check types and bounds before
        # anything is built from it, so a bad value is one clear line, never a huge allocation.
        if not isinstance(self.backbone, str):
            raise HistoseekError(f"backbone must be a name, not {self.backbone!r}")
        spec = get_backbone_spec(self.backbone)
        if not isinstance(self.gd_config, str):
            raise HistoseekError(f"gd-config must be a string such as SMG, not {self.gd_config!r}")
        self.gd_config = parse_gd_config(self.gd_config)
        _check_int("dim", self.dim, 1, MAX_DIM)
        _check_int("num_classes", self.num_classes, 0, MAX_CLASSES)
        _check_int("image size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        if self.dim % len(self.gd_config):
            raise HistoseekError(
                f"dim {self.dim} must be a positive multiple of the number of descriptors "
                f"({len(self.gd_config)} in {self.gd_config})"
            )
        if self.num_classes == 1:
            raise HistoseekError("a CGD classifier needs at least 2 classes (0: no classifier)")
        power = self.power
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power <= 1:
            raise HistoseekError(f"descriptor power must be a number in (0, 1], not {power!r}")
        self.power = float(power)
        if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0):
            self.mean, self.std = spec.mean, spec.std
        self.mean = _check_channels("mean", self.mean)
        self.std = _check_channels("std", self.std)
        if min(self.std) <= 0:
            raise HistoseekError(f"std {list(self.std)} must be positive")

    def to_dict(self) -> dict:
        """A plain dict (JSON- and weights_only-safe)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from `to_dict` output, ignoring keys this version does not know."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if isinstance(known.get(key), list):
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
        return self.describe(self.trunk(images))

    def describe(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings, logits) of a trunk feature map: pool, project, normalise, concatenate."""
        parts = []
        logits = None
        for i, (pool, project) in enumerate(zip(self.descriptors, self.projections, strict=True)):
            pooled = pool(feature_map)
            if self.config.power != 1.0:
                # Trunks end in ReLU/ReLU6, so pooled values are ≥ 0; the floor keeps the
                # root's gradient finite.
                pooled = pooled.clamp(min=POWER_FLOOR).pow(self.config.power)
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


def builtin_config() -> ModelConfig:
    """The built-in model's configuration (its architecture; see builtin_model)."""
    trunk_channels = get_backbone_spec(DEFAULT_BACKBONE).out_channels
    return ModelConfig(gd_config="S", dim=trunk_channels, power=0.5)


def builtin_model() -> CGD:
    """The built-in model: ImageNet EfficientNet-Lite0, average-pooled, square-rooted, 1280-d.

    Untrained, so nothing is learnt about tissue: its embedding is the trunk's last feature map
    averaged over space (SPoC), raised to the power 0.5 and L2-normalised, through an identity
    projection. The former built-in model, the CGD head with random projections of SPoC, MAC
    and GeM, lost to plain average pooling and plain GeM; the square root was chosen on
    crc-polyps5/train and matches or beats each on kather2016 in all but one figure (README,
    "The built-in model"; benchmarks/builtin_pooling.py). A trained checkpoint is better still.
    """
    model = build_model(builtin_config(), weights="imagenet")
    set_identity_projections(model)
    return model.eval()


def set_identity_projections(model: CGD) -> None:
    """Make every projection the identity, so the embedding is the pooled descriptors
    themselves; refused unless dim is the trunk's channels × the number of descriptors."""
    channels = get_backbone_spec(model.config.backbone).out_channels
    descriptors = len(model.config.gd_config)
    if model.config.dim != channels * descriptors:
        raise HistoseekError(
            f"identity projections need dim {channels * descriptors} ({channels} channels × "
            f"{descriptors} descriptor(s) of {model.config.gd_config}), not {model.config.dim}"
        )
    with torch.no_grad():
        for projection in model.projections:
            projection.weight.copy_(torch.eye(channels))
