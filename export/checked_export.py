"""`histoseek export`: ONNX and TensorRT exports, each placed only after its parity check passes."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.inference.exported import (
    ENGINE_SUFFIX,
    ONNX_SUFFIX,
    engine_metadata_path,
    import_onnxruntime,
    import_tensorrt,
)
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.inference.tensorrt_backend import TensorRTEmbedder, require_cuda
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.checkpoint import BUILTIN_MODEL, load_model, model_fingerprint
from histoseek_export.defaults import DEFAULT_MAX_BATCH, DEFAULT_OPSET
from histoseek_export.onnx_export import export_onnx, import_onnx
from histoseek_export.parity import (
    ENGINE_MIN_COSINE,
    ENGINE_MIN_OVERLAP,
    ONNX_MIN_COSINE,
    ParityResult,
    compare,
    embed_all,
    parity_images,
)
from histoseek_export.tensorrt_build import build_engine


def resolve_outputs(
    checkpoint: Path | None, onnx: str | None, trt: str | None
) -> tuple[Path | None, Path | None]:
    """(ONNX path, engine path) to write. None: not asked for; "": the default beside the
    checkpoint (the ONNX one also when neither is asked for); anything else: that path."""
    if onnx is None and trt is None:
        onnx = ""
    onnx_out = _default_or_given(onnx, checkpoint, ONNX_SUFFIX, "--onnx")
    base = onnx_out if onnx_out is not None else checkpoint
    engine_out = _default_or_given(trt, base, ENGINE_SUFFIX, "--trt")
    return onnx_out, engine_out


def _default_or_given(
    value: str | None, base: Path | None, suffix: str, option: str
) -> Path | None:
    if value is None:
        return None
    if value:
        return Path(value)
    if base is None:
        raise HistoseekError(
            f"the built-in model has no checkpoint to write beside; give {option} PATH"
        )
    return base.with_suffix(suffix)


def run_export(
    model_ref: str | Path | None,
    onnx: str | None = None,
    trt: str | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = False,
    fp16: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    overwrite: bool = False,
    parity_dir: Path | None = None,
    notify: Notify = print,
) -> list[ParityResult]:
    """Export a checkpoint (None or 'builtin': the built-in model); outputs failing parity
    are not placed. Returns the parity results, which `notify` has already been given."""
    model, class_names, reference = load_model(model_ref)
    checkpoint = None if reference == BUILTIN_MODEL else Path(str(model_ref))
    onnx_out, engine_out = resolve_outputs(checkpoint, onnx, trt)
    targets = [p for p in (onnx_out, engine_out) if p is not None]
    if engine_out is not None:
        targets.append(engine_metadata_path(engine_out))
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise HistoseekError(f"{', '.join(existing)} already exists; use --overwrite to replace it")
    # Fail on a missing package or GPU now rather than after minutes of work.
    import_onnx()
    import_onnxruntime("the parity check of every export")
    if engine_out is not None:
        import_tensorrt("--trt")
        require_cuda("--trt")
    images = parity_images(model.config, parity_dir)
    fingerprint = model_fingerprint(model)
    results = []
    with tempfile.TemporaryDirectory(prefix="histoseek-export-") as scratch:
        staged = Path(scratch) / f"model{ONNX_SUFFIX}"
        export_onnx(model, staged, opset=opset, dynamic_size=dynamic_size, class_names=class_names)
        expected = embed_all(TorchEmbedder(model, device="cpu"), images)
        onnx_embedder = OnnxEmbedder(staged, device="cpu", fingerprint=fingerprint)
        results.append(
            _checked(
                compare("onnxruntime", expected, embed_all(onnx_embedder, images), ONNX_MIN_COSINE),
                notify,
            )
        )
        if onnx_out is not None:
            with atomic_file(onnx_out) as tmp:
                shutil.copyfile(staged, tmp)
            notify(f"wrote {onnx_out}")
        if engine_out is not None:
            built = build_engine(
                staged,
                model.config.image_size,
                fingerprint,
                model.config.to_dict(),
                fp16=fp16,
                max_batch=max_batch,
            )
            engine = TensorRTEmbedder(built.serialized, built.metadata)
            label = f"tensorrt {built.metadata['precision']}"
            results.append(
                _checked(
                    compare(
                        label,
                        expected,
                        embed_all(engine, images),
                        ENGINE_MIN_COSINE,
                        ENGINE_MIN_OVERLAP,
                    ),
                    notify,
                )
            )
            with atomic_file(engine_out) as tmp:
                tmp.write_bytes(built.serialized)
            with atomic_file(engine_metadata_path(engine_out)) as tmp:
                tmp.write_text(json.dumps(built.metadata, indent=2) + "\n", encoding="utf-8")
            notify(f"wrote {engine_out} (+ {engine_metadata_path(engine_out).name})")
    return results


def _checked(result: ParityResult, notify: Notify) -> ParityResult:
    notify(result.summary())
    if not result.passed:
        raise HistoseekError(f"{result.backend} parity failed; its output was not written")
    return result
