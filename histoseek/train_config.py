"""The training configuration: plain data, cheap to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from histoseek.model.defaults import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE


@dataclass(frozen=True)
class Bounds:
    """The numbers an option accepts: the CLI builds its option types from these, and
    `--resume` checks a saved configuration against them, so the two never disagree."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        if self.high is None:
            return above
        return above and (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        start, end = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {start}{self.low}, {self.high}{end}"


#: Every command's `--seed`: the range that Annoy, NumPy and torch all take.
SEED_BOUNDS = Bounds(0, 2**31 - 1)
#: Every command's `--image-size`: the sizes a model may have.
IMAGE_SIZE_BOUNDS = Bounds(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
#: Every command's `--batch-size` and `--workers`.
BATCH_SIZE_BOUNDS = Bounds(1)
WORKERS_BOUNDS = Bounds(0)

#: The range of each numeric option of `histoseek train` (None, where a field allows it, is
#: always accepted).
TRAIN_BOUNDS = {
    "dim": Bounds(1),
    "image_size": IMAGE_SIZE_BOUNDS,
    "epochs": Bounds(1),
    "batch_size": BATCH_SIZE_BOUNDS,
    "m_per_class": Bounds(2),
    "lr": Bounds(0, low_open=True),
    "backbone_lr_scale": Bounds(0),
    "weight_decay": Bounds(0),
    "warmup_epochs": Bounds(0),
    "freeze_stages": Bounds(0),
    "label_smoothing": Bounds(0, 1, high_open=True),
    "temperature": Bounds(0, low_open=True),
    "margin": Bounds(0),
    "crop_scale": Bounds(0, 1, low_open=True),
    # Each stain's amount is scaled by 1 ± up to this, so above 1 a stain could turn negative.
    "stain_jitter": Bounds(0, 1),
    # Past a few pixels' standard deviation a 224 px patch keeps little tissue texture.
    "blur": Bounds(0, 8),
    # Saturation is scaled by 1 ± up to this, so above 1 it could turn negative.
    "hsv_jitter": Bounds(0, 1),
    "ema_epochs": Bounds(0),
    "val_fraction": Bounds(0, 1, high_open=True),
    "workers": WORKERS_BOUNDS,
    "seed": SEED_BOUNDS,
}


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
    # Blur each training image by a Gaussian whose standard deviation, in pixels of the
    # model's input, is drawn from 0 to this (0: no blur): focus differs between scans.
    blur: float = 0.0
    # Shift each training image's hue by up to ±this/10 of a turn and scale its saturation
    # by 1 ± up to this (0: off): dyes differ in shade between laboratories.
    hsv_jitter: float = 0.0
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
