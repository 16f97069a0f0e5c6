"""RUN_DIR/last.pt: everything `--resume` needs to continue a run where its last epoch ended."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.model.checkpoint import RESUME_STATE_FORMAT, is_resume_state
from histoseek.model.safe_load import load_tensors


@dataclass
class ResumeState:
    """The state after `epoch` epochs: weights, optimiser, schedule, AMP scaler, history."""

    epoch: int
    history: list[dict]
    best: dict
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    # Empty when the run trained without a float16 gradient scaler.
    scaler: dict = field(default_factory=dict)
    # None in states written before the class names were kept.
    class_names: list[str] | None = None
    unreadable: list[str] = field(default_factory=list)
    # Splits.fingerprint of the run's data; None in states written before it was kept.
    split_fingerprint: str | None = None
    # The weight average (TrainConfig.ema_epochs); empty when the run keeps none.
    averaged_model: dict[str, torch.Tensor] = field(default_factory=dict)


def write_resume_state(path: Path, state: ResumeState) -> None:
    """Write the state atomically, as plain tensors and containers."""
    payload = {"format": RESUME_STATE_FORMAT}
    payload.update((item.name, getattr(state, item.name)) for item in fields(state))
    with atomic_file(Path(path)) as tmp:
        torch.save(payload, tmp)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_resume_state(path: Path) -> ResumeState:
    """Read a resume state back, checking its structure before anything trusts it."""
    payload = load_tensors(path, "training state")
    if not is_resume_state(payload):
        raise HistoseekError(f"{path} is not a histoseek training resume state")

    def damaged(what: str) -> HistoseekError:
        return HistoseekError(f"{path} is a damaged training resume state: {what}")

    missing = [key for key in ("epoch", "model", "optimizer", "scheduler") if key not in payload]
    if missing:
        raise damaged(f"it has no {', '.join(missing)}")
    epoch = payload["epoch"]
    if not _whole(epoch):
        raise damaged(f"its epoch {epoch!r} is not a whole number")
    for key in ("best", "model", "optimizer", "scheduler", "scaler", "averaged_model"):
        if not isinstance(payload.get(key, {}), dict):
            raise damaged(f"its {key} is not a mapping")
    best = payload.get("best", {"epoch": None, "val_score": -1.0})
    # A best epoch without val_score is a run validated the earlier way, which resume names.
    if "val_score" not in best and not best.get("epoch"):
        raise damaged("its best epoch records no val_score")
    if "epoch" not in best:
        raise damaged("its best epoch is not named")
    if best["epoch"] is not None and not _whole(best["epoch"]):
        raise damaged(f"its best epoch {best['epoch']!r} is not a whole number")
    score = best.get("val_score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
    ):
        raise damaged(f"its best epoch's val_score {score!r} is not a finite number")
    for key in ("history", "unreadable"):
        if not isinstance(payload.get(key, []), list):
            raise damaged(f"its {key} is not a list")
    if not all(isinstance(record, dict) for record in payload.get("history", [])):
        raise damaged("its history is not a list of epoch records")
    class_names = payload.get("class_names")
    if class_names is not None and not (
        isinstance(class_names, list) and all(isinstance(n, str) for n in class_names)
    ):
        raise damaged("its class_names is not a list of names")
    split_fingerprint = payload.get("split_fingerprint")
    if split_fingerprint is not None and not isinstance(split_fingerprint, str):
        raise damaged("its split_fingerprint is not text")
    return ResumeState(
        epoch=epoch,
        history=payload.get("history", []),
        best=best,
        model=payload["model"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        scaler=payload.get("scaler", {}),
        class_names=class_names,
        unreadable=[str(p) for p in payload.get("unreadable", [])],
        split_fingerprint=split_fingerprint,
        averaged_model=payload.get("averaged_model", {}),
    )
