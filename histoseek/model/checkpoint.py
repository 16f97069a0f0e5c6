"""Saving and loading trained models safely (`torch.load(weights_only=True)`, atomic writes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.model.cgd import CGD, ModelConfig, build_model, builtin_model
from histoseek.model.safe_load import load_tensors

CHECKPOINT_FORMAT = "histoseek-cgd"
CHECKPOINT_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's parameters and buffers, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: Path, model: CGD, class_names: list[str], extra: dict | None = None
) -> None:
    """Write a checkpoint atomically: weights, full config, class names and `extra`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "class_names": list(class_names),
        "state_dict": state,
        "extra": extra or {},
    }
    with atomic_file(Path(path)) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint's raw payload, refusing anything but plain tensors and containers."""
    payload = load_tensors(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise HistoseekError(f"{path} is not a histoseek checkpoint")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise HistoseekError(
            f"{path} was written by a newer histoseek (checkpoint version {payload['version']})"
        )
    return payload


def load_checkpoint(path: Path) -> tuple[CGD, list[str], dict]:
    """Load (model in eval mode, class names, extra) from a checkpoint file."""
    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["config"])
    model = build_model(config, weights="none")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise HistoseekError(f"{path} does not match its own config: {error}") from None
    model.eval()
    return model, list(payload["class_names"]), payload.get("extra", {})


BUILTIN_MODEL = "builtin"


def load_model(model: str | Path | None) -> tuple[CGD, list[str], str]:
    """Load a model by checkpoint path, or the built-in one for None/'builtin'.

    Returns (model in eval mode, class names, a reference to record: 'builtin' or the
    checkpoint's absolute path).
    """
    if model is None or str(model) == BUILTIN_MODEL:
        return builtin_model(), [], BUILTIN_MODEL
    loaded, class_names, _ = load_checkpoint(Path(model))
    return loaded, class_names, str(Path(model).resolve())
