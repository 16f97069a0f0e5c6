"""The one way histoseek reads torch files: tensors and plain containers only, never code."""

from __future__ import annotations

from pathlib import Path

import torch

from histoseek.errors import HistoseekError


def load_tensors(path: Path, what: str) -> object:
    """`torch.load(weights_only=True)` with every failure turned into one clear line.

    `what` names the file in the message ("checkpoint", "weights", "training state").
    """
    path = Path(path)
    if not path.is_file():
        raise HistoseekError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        if "weights_only" in text or "Unsupported global" in text:
            reason = "it contains pickled code or objects, which histoseek never runs"
        raise HistoseekError(f"cannot load {what} {path}: {reason}") from None
