"""The one way histoseek reads torch files: tensors and plain containers only, never code."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from histoseek.errors import HistoseekError

# torch.save writes a zip archive holding <name>/data.pkl, or (legacy) a bare pickle stream,
# which starts with the pickle PROTO opcode.
_PICKLE_PROTO = 0x80


def _not_torch_reason(path: Path) -> str | None:
    """Why `path` cannot be a file torch.save wrote, or None when it may be one."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not names:
            return "an empty zip archive"
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "a zip archive without PyTorch's data.pkl"
        return None
    if head.startswith(b"PK"):
        return None  # a damaged zip archive: torch names the damage
    if head[0] != _PICKLE_PROTO:
        return "neither a zip archive nor a pickle, the two formats torch.save writes"
    return None


def load_tensors(path: Path, what: str) -> object:
    """`torch.load(weights_only=True)` with every failure turned into one clear line.

    `what` names the file in the message ("checkpoint", "weights", "training state").
    """
    path = Path(path)
    if not path.is_file():
        raise HistoseekError(f"{what} not found: {path}")
    try:
        reason = _not_torch_reason(path)
    except OSError as error:
        raise HistoseekError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if reason is not None:
        raise HistoseekError(f"{path} is not a PyTorch {what} ({reason})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        if "weights_only" in text or "Unsupported global" in text:
            reason = "it contains pickled code or objects, which histoseek never runs"
        raise HistoseekError(f"cannot load {what} {path}: {reason}") from None
