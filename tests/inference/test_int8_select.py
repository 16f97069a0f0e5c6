"""Choosing the INT8 backend: explicit onnx-int8, auto's preference on CPU only, stale exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.inference import select
from histoseek.inference.exported import META_PARITY, cached_onnx_path
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.inference.select import create_embedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from histoseek_export.int8_export import (
    CalibrationSource,
    Int8Quantizer,
    calibration_images,
    record_parity,
)
from histoseek_export.onnx_export import export_onnx
from histoseek_export.parity import (
    INT8_MIN_COSINE,
    INT8_MIN_OVERLAP,
    compare,
    embed_all,
    parity_images,
)

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU choices; a CUDA GPU changes them"
)


def _model(seed: int = 0):
    return build_model(ModelConfig(image_size=64), weights="imagenet", seed=seed).eval()


def _quantise(model, fp32: Path, out: Path) -> None:
    """INT8 export of `model` at `out`, with its real parity check recorded."""
    from histoseek.inference.torch_backend import TorchEmbedder

    calibration = calibration_images(model.config, CalibrationSource(None, "synthetic"), 16)
    Int8Quantizer(fp32, calibration).quantize(out, 3)
    images = parity_images(model.config)
    expected = embed_all(TorchEmbedder(model, device="cpu"), images)
    result = compare(
        "int8", expected, embed_all(OnnxEmbedder(out), images), INT8_MIN_COSINE, INT8_MIN_OVERLAP
    )
    assert result.passed, result.summary()
    record_parity(out, result)


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory) -> Path:
    """model.pt with model.onnx and a passing model.int8.onnx beside it."""
    path = tmp_path_factory.mktemp("int8-select") / "model.pt"
    save_checkpoint(path, _model(), [])
    model = load_checkpoint(path)[0]
    export_onnx(model, path.with_suffix(".onnx"))
    _quantise(model, path.with_suffix(".onnx"), path.with_suffix(".int8.onnx"))
    return path.parent


@pytest.fixture
def checkpoint(int8_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the folder, free to change."""
    shutil.copytree(int8_folder, tmp_path / "run")
    return tmp_path / "run" / "model.pt"


def _load(path: Path):
    return load_checkpoint(path)[0]


@needs_cpu_only
def test_auto_prefers_the_int8_export_on_cpu_and_says_so(checkpoint: Path):
    notes: list[str] = []
    embedder = create_embedder(
        _load(checkpoint), "auto", "cpu", checkpoint=checkpoint, notify=notes.append
    )
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.path == checkpoint.with_suffix(".int8.onnx")
    assert embedder.name == "onnxruntime int8 (CPUExecutionProvider)"
    (note,) = notes
    assert note.startswith(f"using the INT8 export {checkpoint.with_suffix('.int8.onnx')}")
    assert "parity at export: cosine ≥ 0.9" in note


def test_explicit_onnx_int8_and_onnx_pick_their_own_export(checkpoint: Path):
    model = _load(checkpoint)
    int8 = create_embedder(model, "onnx-int8", "cpu", checkpoint=checkpoint)
    assert int8.path == checkpoint.with_suffix(".int8.onnx") and int8.precision == "int8"
    fp32 = create_embedder(model, "onnx", "cpu", checkpoint=checkpoint)
    assert fp32.path == checkpoint.with_suffix(".onnx") and fp32.precision == "fp32"
    named = create_embedder(model, "onnx-int8", exported=checkpoint.with_suffix(".int8.onnx"))
    assert named.precision == "int8"


def test_explicit_onnx_int8_without_an_export_says_how_to_make_one(checkpoint: Path):
    checkpoint.with_suffix(".int8.onnx").unlink()
    with pytest.raises(
        HistoseekError,
        match=r"needs an INT8 ONNX model of .*there is none at .*model\.int8\.onnx; make one: "
        r"histoseek export --model .*model\.pt --int8$",
    ):
        create_embedder(_load(checkpoint), "onnx-int8", checkpoint=checkpoint)
    with pytest.raises(HistoseekError, match=r"INT8 ONNX model \(\*\.int8\.onnx\), but .* is not"):
        create_embedder(_load(checkpoint), "onnx-int8", exported=checkpoint.with_suffix(".onnx"))
    with pytest.raises(HistoseekError, match=r"`histoseek export --int8` \(it goes to the cache\)"):
        create_embedder(_load(checkpoint), "onnx-int8")


def test_onnx_int8_runs_on_the_cpu_only(checkpoint: Path):
    with pytest.raises(HistoseekError, match="^--backend onnx-int8 runs on the CPU; drop --device"):
        create_embedder(_load(checkpoint), "onnx-int8", "cuda", checkpoint=checkpoint)


def test_precision_in_the_file_must_match_the_backend(checkpoint: Path, tmp_path: Path):
    disguised = tmp_path / "plain.onnx"
    shutil.copyfile(checkpoint.with_suffix(".int8.onnx"), disguised)
    with pytest.raises(
        HistoseekError, match="is an INT8 export, not FP32; use --backend onnx-int8"
    ):
        create_embedder(_load(checkpoint), "onnx", exported=disguised)


@needs_cpu_only
def test_stale_int8_export_is_skipped_for_the_fp32_one(checkpoint: Path):
    stale = checkpoint.with_suffix(".int8.onnx")
    save_checkpoint(checkpoint, _model(seed=1), [])  # retrained: new head weights
    retrained = _load(checkpoint)
    export_onnx(retrained, checkpoint.with_suffix(".onnx"))
    notes: list[str] = []
    embedder = create_embedder(retrained, "auto", "cpu", checkpoint=checkpoint, notify=notes.append)
    assert embedder.path == checkpoint.with_suffix(".onnx")
    (note,) = notes
    assert note.startswith(f"not using {stale}: ") and "exported from other weights" in note
    with pytest.raises(HistoseekError, match="was exported from other weights"):
        create_embedder(retrained, "onnx-int8", checkpoint=checkpoint)


@needs_cpu_only
def test_int8_export_without_a_passed_parity_check_is_skipped(checkpoint: Path):
    path = checkpoint.with_suffix(".int8.onnx")
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == META_PARITY:
            entry.value = json.dumps({**json.loads(entry.value), "passed": False})
    onnx.save(proto, str(path))
    notes: list[str] = []
    embedder = create_embedder(
        _load(checkpoint), "auto", "cpu", checkpoint=checkpoint, notify=notes.append
    )
    assert embedder.path == checkpoint.with_suffix(".onnx")
    assert notes == [
        f"not using {path}: it records no passed parity check; make it with histoseek export --int8"
    ]


def test_auto_never_runs_int8_on_cuda(checkpoint: Path, monkeypatch):
    class GpuTorch:
        name = "torch (cuda)"

        def __init__(self, model, device):
            self.device = device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(select, "TorchEmbedder", GpuTorch)
    monkeypatch.setattr("histoseek.inference.onnx_backend.ort_has_cuda", lambda: False)
    notes: list[str] = []
    embedder = create_embedder(
        _load(checkpoint), "auto", "auto", checkpoint=checkpoint, notify=notes.append
    )
    assert isinstance(embedder, GpuTorch)
    assert (
        f"not using {checkpoint.with_suffix('.int8.onnx')}: INT8 exports run on the CPU"
        in (notes[0])
    )


@needs_cpu_only
def test_builtin_model_finds_its_int8_export_in_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    model = _model()
    fp32 = tmp_path / "model.onnx"
    export_onnx(model, fp32)
    cached = cached_onnx_path(model_fingerprint(model), 64, int8=True)
    cached.parent.mkdir(parents=True)
    _quantise(model, fp32, cached)
    notes: list[str] = []
    embedder = create_embedder(model, "auto", "cpu", notify=notes.append)
    assert embedder.path == cached and embedder.precision == "int8"
    assert create_embedder(model, "onnx-int8").path == cached
