"""The training configuration: plain data, cheap to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Every training choice; saved with the run so `--resume` continues it exactly.

    The defaults are the recipe benchmarks/quality_recipes.py chose on crc-polyps5 validation
    (README, "Validation by colour clusters").
    """

    data_dir: str
    run_dir: str
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    gd_config: str = "G"
    dim: int = 1536
    # Power normalisation of the pooled descriptors (0.5: the built-in model's square root).
    power: float = 1.0
    # Projections that start as the identity, so training starts from the pooled descriptors
    # themselves (with gd_config "S" and power 0.5: from the built-in model). Needs dim =
    # the trunk's channels × the number of descriptors.
    identity_init: bool = False
    # None: the backbone's native input size (BackboneSpec.native_size).
    image_size: int | None = None
    # Multi-scale training: each batch resized to one of these sides, drawn at random
    # (None: every batch at image_size, which is also the size the model is evaluated at).
    train_sizes: list[int] | None = None
    epochs: int = 20
    batch_size: int = 60
    m_per_class: int = 12
    lr: float = 3e-3
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    # None: the backbone's own default (BackboneSpec.default_frozen_stages).
    freeze_stages: int | None = None
    label_smoothing: float = 0.1
    temperature: float = 0.2
    margin: float = 0.1
    crop_scale: float = 0.8
    stain_jitter: float = 0.5
    # Validate, and keep as model.pt, a moving average of the weights over about this many
    # epochs instead of the weights themselves (0: no average).
    ema_epochs: float = 0.0
    val_dir: str | None = None
    val_fraction: float = 0.1
    group_regex: str | None = None
    # Hold out whole colour clusters of each class (stand-ins for patients) instead of single
    # images, for data whose file names record no patient or slide.
    colour_groups: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    # None: one decoding process per CPU core, at most 8.
    workers: int | None = None
