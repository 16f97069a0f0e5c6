"""What training optimises and how fast: frozen stages, AdamW groups, warm-up then cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from histoseek.errors import HistoseekError
from histoseek.model.backbones import get_backbone_spec
from histoseek.model.cgd import CGD
from histoseek.train_config import TrainConfig


def freeze_stages(model: CGD, count: int | None) -> list[nn.Module]:
    """Freeze the first `count` backbone stages (None: the backbone's default); returns them.

    Frozen stages are kept in eval mode while training, so their BatchNorm statistics stay.
    """
    spec = get_backbone_spec(model.config.backbone)
    count = spec.default_frozen_stages if count is None else count
    stages = spec.stages(model.trunk)
    if count > len(stages):
        raise HistoseekError(
            f"--freeze-stages {count}: {model.config.backbone} has only {len(stages)} stages"
        )
    for stage in stages[:count]:
        for parameter in stage.parameters():
            parameter.requires_grad_(False)
    return stages[:count]


def make_optimizer(model: CGD, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: the new CGD layers at `lr`, the pretrained backbone at lr × backbone_lr_scale."""
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    trunk_ids = {id(p) for p in model.trunk.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in trunk_ids]
    groups = [{"params": head, "lr": config.lr}]
    if trunk:
        groups.append({"params": trunk, "lr": config.lr * config.backbone_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
