"""Exported models (ONNX files, TensorRT engines): where they live and whether they still fit.

An export records the fingerprint of the weights it was made from, so an export left beside a
checkpoint that was retrained since is recognised as stale instead of silently giving other
embeddings than the checkpoint would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from histoseek.errors import HistoseekError
from histoseek.model.cgd import ModelConfig

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIX = ".engine"

# ONNX metadata_props keys, written by `histoseek export` and read by the backends.
META_VERSION = "histoseek.version"
META_FINGERPRINT = "histoseek.fingerprint"
META_CONFIG = "histoseek.config"
META_CLASS_NAMES = "histoseek.class_names"

ENGINE_METADATA_KEYS = frozenset(
    {"fingerprint", "config", "precision", "tensorrt_version", "gpu_name", "compute_capability"}
)

INSTALL_CPU = "pip install 'histoseek[cpu]'"
INSTALL_GPU = "pip install 'histoseek[gpu]'"


def import_onnxruntime(purpose: str = "the onnx backend"):
    """Import onnxruntime, or fail with one line naming the extra that provides it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise HistoseekError(
            f"{purpose} needs onnxruntime ({_import_reason(error)}): {INSTALL_CPU}, "
            f"or {INSTALL_GPU} for CUDA"
        ) from None
    return onnxruntime


def import_tensorrt(purpose: str = "the tensorrt backend"):
    """Import tensorrt, or fail with one line naming the extra that provides it."""
    try:
        import tensorrt
    except (ImportError, OSError) as error:
        raise HistoseekError(
            f"{purpose} needs TensorRT ({_import_reason(error)}): {INSTALL_GPU}"
        ) from None
    return tensorrt


def _import_reason(error: Exception) -> str:
    if isinstance(error, ModuleNotFoundError):
        return "not installed"
    return f"it failed to load: {str(error).splitlines()[0] if str(error) else type(error)}"


def engine_metadata_path(engine: Path) -> Path:
    """The JSON file written beside an engine: `model.engine` → `model.engine.json`."""
    return engine.with_name(engine.name + ".json")


def exports_beside(checkpoint: Path) -> tuple[Path, Path]:
    """(ONNX path, engine path) that `histoseek export` writes beside a checkpoint by default."""
    return checkpoint.with_suffix(ONNX_SUFFIX), checkpoint.with_suffix(ENGINE_SUFFIX)


def export_kind(path: Path) -> str:
    """'onnx' or 'tensorrt' from an exported model's file name."""
    suffix = path.suffix.lower()
    if suffix == ONNX_SUFFIX:
        return "onnx"
    if suffix == ENGINE_SUFFIX:
        return "tensorrt"
    raise HistoseekError(
        f"{path}: an exported model must end in {ONNX_SUFFIX} (ONNX) or {ENGINE_SUFFIX} (TensorRT)"
    )


def check_fingerprint(path: Path, recorded: str | None, expected: str) -> None:
    """Refuse an export whose recorded weights fingerprint is not the model's."""
    if recorded is None:
        raise HistoseekError(
            f"{path} has no histoseek fingerprint; export it with histoseek export"
        )
    if recorded != expected:
        raise HistoseekError(
            f"{path} was exported from other weights (fingerprint {recorded[:12]}, model "
            f"{expected[:12]}); re-export it: histoseek export --model CHECKPOINT --overwrite"
        )


def config_from_metadata(path: Path, props: dict[str, str]) -> ModelConfig:
    """The model config recorded in an export's metadata."""
    try:
        return ModelConfig.from_dict(json.loads(props[META_CONFIG]))
    except (KeyError, ValueError, TypeError) as error:
        raise HistoseekError(f"{path} carries no readable histoseek config ({error})") from None


def read_engine_metadata(engine: Path) -> dict:
    """The metadata JSON beside a TensorRT engine."""
    meta_path = engine_metadata_path(engine)
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HistoseekError(
            f"{engine} has no metadata file {meta_path.name}; rebuild it: histoseek export --trt"
        ) from None
    except (OSError, ValueError) as error:
        raise HistoseekError(f"cannot read {meta_path}: {error}") from None
    if not isinstance(metadata, dict) or not metadata.keys() >= ENGINE_METADATA_KEYS:
        raise HistoseekError(f"{meta_path} is not histoseek engine metadata")
    return metadata


def cache_dir() -> Path:
    """histoseek's cache folder: $HISTOSEEK_CACHE, else $XDG_CACHE_HOME/histoseek, else ~/.cache."""
    if os.environ.get("HISTOSEEK_CACHE"):
        return Path(os.environ["HISTOSEEK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histoseek"


def cached_onnx_path(fingerprint: str, image_size: int) -> Path:
    """Where an automatically exported ONNX model for these weights is cached."""
    return cache_dir() / "onnx" / f"{fingerprint[:24]}-{image_size}px{ONNX_SUFFIX}"
