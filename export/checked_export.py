"""`histoseek export`: ONNX (FP32, INT8) and TensorRT exports, each placed only after its parity
check passes."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file, write_errors
from histoseek.inference.exported import (
    ENGINE_SUFFIX,
    INT8_SUFFIX,
    ONNX_SUFFIX,
    cached_onnx_path,
    engine_metadata_path,
    import_onnxruntime,
    import_tensorrt,
)
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.inference.tensorrt_backend import TensorRTEmbedder, require_cuda
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import CGD
from histoseek.model.checkpoint import (
    BUILTIN_MODEL,
    load_model,
    model_fingerprint,
    read_checkpoint,
)
from histoseek_export.defaults import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_BATCH, DEFAULT_OPSET
from histoseek_export.int8_export import (
    Int8Quantizer,
    calibration_images,
    calibration_source,
    quantize_until_parity,
    record_parity,
)
from histoseek_export.onnx_export import export_onnx, import_onnx
from histoseek_export.parity import (
    ENGINE_MIN_COSINE,
    ENGINE_MIN_OVERLAP,
    INT8_MIN_COSINE,
    INT8_MIN_OVERLAP,
    ONNX_MIN_COSINE,
    ParityResult,
    compare,
    embed_all,
    parity_images,
    parity_paths,
)
from histoseek_export.tensorrt_build import build_engine


def resolve_outputs(
    checkpoint: Path | None, onnx: str | None, trt: str | None, int8_only: bool = False
) -> tuple[Path | None, Path | None]:
    """(ONNX path, engine path) to write. None: not asked for; "": the default beside the
    checkpoint (the ONNX one also when nothing is asked for, INT8 included); anything else:
    that path."""
    if onnx is None and trt is None and not int8_only:
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


def resolve_int8_output(int8: str | None, checkpoint: Path | None, model: CGD) -> Path | None:
    """The INT8 model to write. None: not asked for; "": model.int8.onnx beside the checkpoint,
    or for the built-in model the cache, where `--backend auto` finds it; else that path."""
    if int8 is None:
        return None
    if int8:
        if not int8.lower().endswith(INT8_SUFFIX):
            raise HistoseekError(
                f"--int8 {int8}: the name must end in {INT8_SUFFIX}, which tells the backends "
                "it holds an INT8 model"
            )
        return Path(int8)
    if checkpoint is None:
        return cached_onnx_path(model_fingerprint(model), model.config.image_size, int8=True)
    return checkpoint.with_suffix(INT8_SUFFIX)


def _refuse_clashing_outputs(checkpoint: Path | None, named: list[tuple[str, Path]]) -> None:
    """Refuse an output (`named`: option, path) that is the checkpoint or another output,
    however the paths are spelt: with --overwrite the export would replace its own input, and
    two outputs would overwrite each other whatever the options."""
    source = checkpoint.resolve() if checkpoint is not None else None
    taken: dict[Path, str] = {}
    for option, path in named:
        key = path.resolve()
        if key == source:
            raise HistoseekError(
                f"{option} {path} is the checkpoint being exported; give the output another path"
            )
        if key in taken:
            raise HistoseekError(
                f"{taken[key]} and {option} both name {path}; give each output its own path"
            )
        taken[key] = option


def run_export(
    model_ref: str | Path | None,
    onnx: str | None = None,
    trt: str | None = None,
    int8: str | None = None,
    calibration_dir: Path | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = False,
    fp16: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    overwrite: bool = False,
    parity_dir: Path | None = None,
    notify: Notify = print,
) -> list[ParityResult]:
    """Export a checkpoint (None or 'builtin': the built-in model); outputs failing parity
    are not placed. Returns the parity results, which `notify` has already been given.

    `int8` (see resolve_int8_output) adds a static INT8 quantisation calibrated on
    `calibration_count` images of `calibration_dir`, else of the checkpoint's training folder,
    else synthetic patches (histoseek_export.int8_export).
    """
    model, class_names, reference = load_model(model_ref)
    checkpoint = None if reference == BUILTIN_MODEL else Path(str(model_ref))
    int8_out = resolve_int8_output(int8, checkpoint, model)
    onnx_out, engine_out = resolve_outputs(checkpoint, onnx, trt, int8_only=int8 is not None)
    if dynamic_size and onnx_out is None and int8_out is None:
        raise HistoseekError(
            "--dynamic-size shapes an ONNX model, and a TensorRT engine is built for the "
            "checkpoint's size: add --onnx, or drop --dynamic-size"
        )
    named = [("--onnx", onnx_out), ("--int8", int8_out), ("--trt", engine_out)]
    if engine_out is not None:
        named.append(("--trt's metadata", engine_metadata_path(engine_out)))
    named = [(option, path) for option, path in named if path is not None]
    _refuse_clashing_outputs(checkpoint, named)
    for option, path in named:
        if path.is_dir():  # --overwrite would not replace it: refuse before any work
            raise HistoseekError(f"{option} {path} is a folder; name a file to write")
    targets = [path for _, path in named]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise HistoseekError(f"{', '.join(existing)} already exists; use --overwrite to replace it")
    # Fail on a missing package or GPU now rather than after minutes of work.
    import_onnx()
    import_onnxruntime("the parity check of every export")
    if engine_out is not None:
        import_tensorrt("--trt")
        require_cuda("--trt")
    if int8_out is not None:
        extra = read_checkpoint(checkpoint).get("extra") if checkpoint is not None else None
        source = calibration_source(calibration_dir, extra if isinstance(extra, dict) else None)
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
        # Placed only once every check has passed, so a failed check writes nothing.
        placements = [] if onnx_out is None else [(staged, onnx_out)]
        if int8_out is not None:
            # The parity images never calibrate, so the check judges unseen images.
            held_out = (
                frozenset(parity_paths(parity_dir)) if parity_dir is not None else frozenset()
            )
            calibration = calibration_images(model.config, source, calibration_count, held_out)
            notify(f"calibrating INT8 on {len(calibration)} images: {source.describe()}")

            def judge(candidate: Path, label: str) -> ParityResult:
                int8_embedder = OnnxEmbedder(candidate, "cpu", fingerprint, precision="int8")
                return compare(
                    label,
                    expected,
                    embed_all(int8_embedder, images),
                    INT8_MIN_COSINE,
                    INT8_MIN_OVERLAP,
                )

            staged_int8 = Path(scratch) / f"model{INT8_SUFFIX}"
            quantizer = Int8Quantizer(staged, calibration)
            results.append(quantize_until_parity(quantizer, staged_int8, judge, notify))
            record_parity(staged_int8, results[-1])
            placements.append((staged_int8, int8_out))
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
            staged_engine = Path(scratch) / "model.engine"
            staged_engine.write_bytes(built.serialized)
            staged_metadata = Path(scratch) / engine_metadata_path(staged_engine).name
            staged_metadata.write_text(
                json.dumps(built.metadata, indent=2) + "\n", encoding="utf-8"
            )
            placements += [
                (staged_engine, engine_out),
                (staged_metadata, engine_metadata_path(engine_out)),
            ]
        for source, target in placements:
            with write_errors(target), atomic_file(target) as tmp:
                shutil.copyfile(source, tmp)
            notify(f"wrote {target}")
    return results


def _checked(result: ParityResult, notify: Notify) -> ParityResult:
    notify(result.summary())
    if not result.passed:
        raise HistoseekError(f"{result.backend} parity failed; its output was not written")
    return result
