"""Saving and loading trained models safely (`torch.load(weights_only=True)`, atomic writes)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.model.cgd import CGD, ModelConfig, build_model, builtin_model
from histoseek.model.safe_load import load_tensors

CHECKPOINT_FORMAT = "histoseek-cgd"
CHECKPOINT_VERSION = 1
#: The format tag of a training run's resume state (RUN_DIR/last.pt), which is not a model.
RESUME_STATE_FORMAT = "histoseek-resume-state"
_RESUME_STATE_KEYS = {"model", "optimizer", "scheduler", "epoch"}


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


def is_resume_state(payload: object) -> bool:
    """Whether a loaded torch file is a training run's resume state (RUN_DIR/last.pt)."""
    if not isinstance(payload, dict):
        return False
    # States written before the format tag existed are recognised by their keys.
    return payload.get("format") == RESUME_STATE_FORMAT or payload.keys() >= _RESUME_STATE_KEYS


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or infinity; None if none."""
    return next(
        (
            name
            for name, value in state.items()
            if value.is_floating_point() and not torch.isfinite(value).all()
        ),
        None,
    )


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_payload(path: Path, payload: object) -> dict:
    """The payload if it has a checkpoint's structure, types and sane values; else one line."""
    if is_resume_state(payload):
        raise HistoseekError(
            f"{path} is a training resume state (last.pt), not a model; "
            f"use {Path(path).parent / 'model.pt'}"
        )
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise HistoseekError(f"{path} is not a histoseek checkpoint")

    def damaged(what: str) -> HistoseekError:
        return HistoseekError(f"{path} is a damaged histoseek checkpoint: {what}")

    version = payload.get("version")
    if not _whole_number(version) or version < 1:
        raise damaged(f"its version {version!r} is not a positive whole number")
    if version > CHECKPOINT_VERSION:
        raise HistoseekError(
            f"{path} was written by a newer histoseek (checkpoint version {version})"
        )
    if not isinstance(payload.get("config"), dict):
        raise damaged("its config is missing or not a mapping")
    class_names = payload.get("class_names")
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise damaged("its class_names is not a list of names")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise damaged("its state_dict does not map parameter names to tensors")
    broken = first_non_finite(state)
    if broken is not None:
        raise damaged(f"{broken} holds numbers that are not finite (NaN or infinite)")
    if not isinstance(payload.get("extra", {}), dict):
        raise damaged("its extra is not a mapping")
    try:
        ModelConfig.from_dict(payload["config"])
    except HistoseekError as error:
        raise damaged(f"config: {error}") from None
    return payload


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint's payload, checked: plain tensors and containers of the right shape."""
    return _checked_payload(path, load_tensors(path, "checkpoint"))


def load_checkpoint(path: Path) -> tuple[CGD, list[str], dict]:
    """Load (model in eval mode, class names, extra) from a checkpoint file."""
    payload = read_checkpoint(path)
    model = build_model(ModelConfig.from_dict(payload["config"]), weights="none")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        # torch's message is a heading, then one indented line per kind of mismatch.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise HistoseekError(f"{path} does not match its own config: {detail}") from None
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
