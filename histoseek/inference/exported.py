"""Exported models (ONNX files, TensorRT engines): where they live and whether they still fit.

An export records the fingerprint of the weights it was made from, so an export left beside a
checkpoint that was retrained since is recognised as stale instead of silently giving other
embeddings than the checkpoint would.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from histoseek.errors import HistoseekError

if TYPE_CHECKING:
    from histoseek.model.cgd import ModelConfig

ONNX_SUFFIX = ".onnx"
# INT8 exports are ONNX files too; the name tells them apart before anything is loaded.
INT8_SUFFIX = ".int8.onnx"
ENGINE_SUFFIX = ".engine"

# ONNX metadata_props keys, written by `histoseek export` and read by the backends.
META_VERSION = "histoseek.version"
META_FINGERPRINT = "histoseek.fingerprint"
META_CONFIG = "histoseek.config"
META_CLASS_NAMES = "histoseek.class_names"
# "fp32" or "int8"; exports older than INT8 support carry none and are FP32.
META_PRECISION = "histoseek.precision"
# The parity check an INT8 export passed, as JSON: figures, thresholds, image count.
META_PARITY = "histoseek.parity"

ENGINE_METADATA_KEYS = frozenset(
    {"fingerprint", "config", "precision", "tensorrt_version", "gpu_name", "compute_capability"}
)
ENGINE_PRECISIONS = ("fp16", "fp32")

INSTALL_CPU = "pip install 'histoseek[cpu]'"
INSTALL_GPU = "pip install 'histoseek[gpu]'"


class UnusableExportError(HistoseekError):
    """An exported file that cannot run as asked: it does not load, or does not fit the weights,
    config or precision it should run. Making it again fixes it, as histoseek does in its cache."""


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


EXPORT_SUFFIXES = {"onnx": ONNX_SUFFIX, "onnx-int8": INT8_SUFFIX, "tensorrt": ENGINE_SUFFIX}


def export_beside(checkpoint: Path, kind: str) -> Path:
    """Where `histoseek export` writes a checkpoint's export of `kind` ('onnx', 'onnx-int8' or
    'tensorrt') by default: model.pt → model.onnx, model.int8.onnx, model.engine."""
    return checkpoint.with_suffix(EXPORT_SUFFIXES[kind])


def export_kind(path: Path) -> str:
    """'onnx', 'onnx-int8' or 'tensorrt' from an exported model's file name."""
    name = path.name.lower()
    if name.endswith(INT8_SUFFIX):
        return "onnx-int8"
    if name.endswith(ONNX_SUFFIX):
        return "onnx"
    if name.endswith(ENGINE_SUFFIX):
        return "tensorrt"
    raise HistoseekError(
        f"{path}: an exported model must end in {ONNX_SUFFIX} (ONNX) or {ENGINE_SUFFIX} "
        f"(TensorRT), an INT8 ONNX model in {INT8_SUFFIX}"
    )


def check_fingerprint(path: Path, recorded: str | None, expected: str) -> None:
    """Refuse an export whose recorded weights fingerprint is not the model's."""
    if recorded is None:
        raise UnusableExportError(
            f"{path} has no histoseek fingerprint; export it with histoseek export"
        )
    if recorded != expected:
        raise UnusableExportError(
            f"{path} was exported from other weights (fingerprint {recorded[:12]}, model "
            f"{expected[:12]}); re-export it: histoseek export --model CHECKPOINT --overwrite"
        )


def config_from_metadata(path: Path, props: dict[str, str]) -> ModelConfig:
    """The model config recorded in an export's metadata."""
    # Imported here so that this module, and with it `histoseek cache`, never loads torch.
    from histoseek.model.cgd import ModelConfig

    try:
        return ModelConfig.from_dict(json.loads(props[META_CONFIG]))
    except (KeyError, ValueError, TypeError) as error:
        raise UnusableExportError(
            f"{path} carries no readable histoseek config ({error})"
        ) from None


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
    _check_engine_metadata(meta_path, metadata)
    return metadata


def _check_engine_metadata(meta_path: Path, metadata: dict) -> None:
    """Refuse metadata whose values are not what `histoseek export --trt` writes."""
    from histoseek.model.cgd import ModelConfig

    for key in ("fingerprint", "tensorrt_version", "gpu_name", "compute_capability"):
        if not isinstance(metadata[key], str):
            raise HistoseekError(f"{meta_path}: {key} is not a string")
    if metadata["precision"] not in ENGINE_PRECISIONS:
        raise HistoseekError(
            f"{meta_path}: precision {metadata['precision']!r} is not "
            f"{' or '.join(ENGINE_PRECISIONS)}"
        )
    if not isinstance(metadata["config"], dict):
        raise HistoseekError(f"{meta_path}: config is not a mapping")
    # from_dict fills in defaults, which would stand in for the engine's own dim or size.
    missing = [name for name in ModelConfig.__dataclass_fields__ if name not in metadata["config"]]
    if missing:
        raise HistoseekError(f"{meta_path}: config has no {', '.join(missing)}")
    try:
        ModelConfig.from_dict(metadata["config"])
    except HistoseekError as error:
        raise HistoseekError(f"{meta_path}: config: {error}") from None


def cache_dir() -> Path:
    """histoseek's cache folder: $HISTOSEEK_CACHE, else $XDG_CACHE_HOME/histoseek, else ~/.cache."""
    if os.environ.get("HISTOSEEK_CACHE"):
        return Path(os.environ["HISTOSEEK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histoseek"


CACHED_ONNX_FOLDER = "onnx"
# The names cached_onnx_path gives, and those of atomic_file's temporaries of them, which a
# killed export leaves behind: only files named so are histoseek's to list and remove.
_CACHED_ONNX_NAME = re.compile(r"[0-9a-f]{24}-[0-9]+px(\.int8)?\.onnx")
_UNFINISHED_ONNX_NAME = re.compile(r"\.[0-9a-f]{24}-[0-9]+px(\.int8)?\.onnx\.[A-Za-z0-9_]+\.tmp")
#: An unfinished export younger than this may still be being written by a running command.
UNFINISHED_GRACE_S = 3600


def cached_onnx_path(fingerprint: str, image_size: int, int8: bool = False) -> Path:
    """Where an ONNX export of these weights is cached: the FP32 one `auto` makes on the fly,
    or the INT8 one `histoseek export --int8` writes for the built-in model."""
    suffix = INT8_SUFFIX if int8 else ONNX_SUFFIX
    return cache_dir() / CACHED_ONNX_FOLDER / f"{fingerprint[:24]}-{image_size}px{suffix}"


@dataclass(frozen=True)
class CachedFile:
    """One file histoseek wrote into its cache."""

    path: Path
    size: int
    modified: float  # seconds since the epoch
    finished: bool  # False: the temporary file of an export that did not complete


def cached_files() -> list[CachedFile]:
    """histoseek's own files in its cache folder (exports, finished or not), sorted by name."""
    folder = cache_dir() / CACHED_ONNX_FOLDER
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise HistoseekError(f"cannot read the cache folder {folder}: {error}") from None
    found = []
    for entry in entries:
        finished = _CACHED_ONNX_NAME.fullmatch(entry.name) is not None
        if not (finished or _UNFINISHED_ONNX_NAME.fullmatch(entry.name)):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        stat = entry.stat(follow_symlinks=False)
        found.append(CachedFile(Path(entry.path), stat.st_size, stat.st_mtime, finished))
    return sorted(found, key=lambda cached: cached.path.name.lstrip("."))


def clear_cache() -> list[CachedFile]:
    """Remove histoseek's cached exports and return them; nothing else in the folder is touched.

    Unfinished exports younger than UNFINISHED_GRACE_S are kept: another command may be
    writing them right now.
    """
    removed = []
    now = time.time()
    for cached in cached_files():
        if not cached.finished and now - cached.modified < UNFINISHED_GRACE_S:
            continue
        try:
            cached.path.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile by another clear
        except OSError as error:
            raise HistoseekError(f"cannot remove {cached.path}: {error}") from None
        removed.append(cached)
    return removed
