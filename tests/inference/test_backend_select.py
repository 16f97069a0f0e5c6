"""Choosing a backend: auto order, exports beside checkpoints, stale exports, missing packages."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.inference.select import _ExportFinder, create_embedder
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint, save_checkpoint
from histoseek_export.onnx_export import export_onnx

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU choices; a CUDA GPU changes them"
)


def _small_model(seed: int = 0):
    return build_model(ModelConfig(image_size=64), weights="none", seed=seed)


@pytest.fixture(scope="module")
def exported_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint with its ONNX export beside it (model.pt + model.onnx)."""
    path = tmp_path_factory.mktemp("select") / "model.pt"
    save_checkpoint(path, _small_model(), [])
    model, _, _ = load_checkpoint(path)
    export_onnx(model, path.with_suffix(".onnx"))
    return path


def _load(path: Path):
    return load_checkpoint(path)[0]


@needs_cpu_only
def test_auto_picks_onnxruntime_cpu_for_an_export_beside_the_checkpoint(exported_checkpoint):
    embedder = create_embedder(_load(exported_checkpoint), "auto", checkpoint=exported_checkpoint)
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.name == "onnxruntime (CPUExecutionProvider)"
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reference = TorchEmbedder(_load(exported_checkpoint), device="cpu").embed_batch(images)
    assert np.min(np.sum(reference * embedder.embed_batch(images), axis=1)) >= 0.9999


def test_explicit_torch_is_torch(exported_checkpoint):
    embedder = create_embedder(
        _load(exported_checkpoint), "torch", device="cpu", checkpoint=exported_checkpoint
    )
    assert isinstance(embedder, TorchEmbedder)
    assert embedder.name == "torch (cpu)"


def test_an_export_given_with_torch_is_refused(exported_checkpoint):
    with pytest.raises(HistoseekError) as raised:
        create_embedder(
            _load(exported_checkpoint),
            "torch",
            checkpoint=exported_checkpoint,
            exported=exported_checkpoint.with_suffix(".onnx"),
        )
    assert str(raised.value) == (
        f"--exported {exported_checkpoint.with_suffix('.onnx')} is run by ONNX Runtime or "
        "TensorRT, and --backend torch runs the model itself: drop one"
    )


@needs_cpu_only
def test_auto_without_export_exports_into_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.pt"
    save_checkpoint(path, _small_model(), [])
    embedder = create_embedder(
        _load(path), "auto", device="cpu", checkpoint=path, onnx_exporter=export_onnx
    )
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.path.parent == tmp_path / "cache" / "onnx"
    assert not path.with_suffix(".onnx").exists()  # nothing written beside the checkpoint


def test_explicit_onnx_without_export_says_how_to_make_one(tmp_path: Path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _small_model(), [])
    with pytest.raises(HistoseekError, match=r"there is none at .*model\.onnx.*histoseek export"):
        create_embedder(_load(path), "onnx", checkpoint=path)


@needs_cpu_only
def test_stale_export_is_refused_explicitly_and_skipped_by_auto(tmp_path: Path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _small_model(seed=0), [])
    export_onnx(_load(path), path.with_suffix(".onnx"))
    # Retrained: new weights in the same place, the old export still beside them.
    save_checkpoint(path, _small_model(seed=1), [])
    retrained = _load(path)
    with pytest.raises(HistoseekError, match="was exported from other weights"):
        create_embedder(retrained, "onnx", checkpoint=path)
    notes: list[str] = []
    embedder = create_embedder(
        retrained, "auto", "cpu", checkpoint=path, notify=notes.append, onnx_exporter=export_onnx
    )
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.path != path.with_suffix(".onnx")  # a fresh export of the new weights
    assert len(notes) == 2
    assert notes[0].startswith(f"not using {path.with_suffix('.onnx')}: ")
    assert "exported from other weights" in notes[0]
    assert notes[1].startswith("exporting the model to ONNX once")


@needs_cpu_only
def test_model_without_checkpoint_is_exported_once_into_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    model = _small_model()
    notes: list[str] = []
    embedder = create_embedder(model, "auto", notify=notes.append, onnx_exporter=export_onnx)
    assert isinstance(embedder, OnnxEmbedder)
    (cached,) = (tmp_path / "cache" / "onnx").iterdir()
    assert cached.suffix == ".onnx" and "64px" in cached.name
    # The one slow first export is announced, with where it is cached.
    assert len(notes) == 1 and "exporting the model to ONNX once" in notes[0]
    assert str(cached) in notes[0]
    stamp = cached.stat().st_mtime_ns
    again = create_embedder(model, "onnx", notify=notes.append, onnx_exporter=export_onnx)
    assert again.path == cached
    assert cached.stat().st_mtime_ns == stamp
    assert len(notes) == 1


@needs_cpu_only
@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_a_damaged_cached_export_is_exported_again(tmp_path: Path, monkeypatch, backend):
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    model = _small_model()
    create_embedder(model, backend, "cpu", notify=lambda _: None, onnx_exporter=export_onnx)
    (cached,) = (tmp_path / "cache" / "onnx").iterdir()
    whole = cached.read_bytes()
    cached.write_bytes(whole[:1000])  # a disk that filled up, a copy cut short
    notes: list[str] = []
    embedder = create_embedder(
        model, backend, "cpu", notify=notes.append, onnx_exporter=export_onnx
    )
    assert isinstance(embedder, OnnxEmbedder) and embedder.path == cached
    assert cached.read_bytes() == whole
    assert len(notes) == 1
    assert notes[0].startswith(
        "exporting the model to ONNX again, as its cached export is damaged: cannot load ONNX "
        f"model {cached}: "
    )
    # Only the leftovers of killed exports are ever left beside it, and this one finished.
    assert list(cached.parent.iterdir()) == [cached]


def test_a_cached_export_that_cannot_run_here_is_not_exported_again(tmp_path, monkeypatch):
    from histoseek.inference.onnx_backend import ort_has_cuda

    if ort_has_cuda():
        pytest.skip("needs an onnxruntime without CUDA support")
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    model = _small_model()
    create_embedder(model, "onnx", "cpu", notify=lambda _: None, onnx_exporter=export_onnx)
    (cached,) = (tmp_path / "cache" / "onnx").iterdir()
    stamp = cached.stat().st_mtime_ns
    notes: list[str] = []
    with pytest.raises(HistoseekError, match="needs onnxruntime-gpu"):
        create_embedder(model, "onnx", "cuda", notify=notes.append, onnx_exporter=export_onnx)
    assert notes == [] and cached.stat().st_mtime_ns == stamp


@needs_cpu_only
def test_an_unwritable_cache_is_one_line_and_auto_falls_back_to_torch(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HISTOSEEK_CACHE", str(blocker))
    model = _small_model()
    notes: list[str] = []
    embedder = create_embedder(model, "auto", "cpu", notify=notes.append, onnx_exporter=export_onnx)
    assert isinstance(embedder, TorchEmbedder)
    assert notes[-1].startswith(f"not using an on-the-fly ONNX export: cannot write {blocker}/")
    with pytest.raises(HistoseekError, match=f"^cannot write {blocker}/onnx/"):
        create_embedder(model, "onnx", onnx_exporter=export_onnx)


def test_without_an_exporter_auto_uses_torch_and_onnx_says_how_to_export(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    model = _small_model()
    assert isinstance(create_embedder(model, "auto", "cpu"), TorchEmbedder)
    with pytest.raises(HistoseekError) as raised:
        create_embedder(model, "onnx")
    assert str(raised.value) == (
        "the built-in model needs an ONNX model for --backend onnx; make one with "
        "`histoseek export --onnx builtin.onnx`, then pass --exported builtin.onnx"
    )


def test_builtin_model_tensorrt_hint_names_one_working_command():
    finder = _ExportFinder(_small_model(), None, None, None, lambda message: None)
    with pytest.raises(HistoseekError) as raised:
        finder.require("tensorrt")
    assert str(raised.value) == (
        "the built-in model needs a TensorRT engine for --backend tensorrt; make one with "
        "`histoseek export --trt builtin.engine`, then pass --exported builtin.engine"
    )


def test_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch):
    from histoseek.inference.exported import cache_dir

    monkeypatch.delenv("HISTOSEEK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "histoseek"


def test_named_export_is_used_and_checked(exported_checkpoint, tmp_path: Path):
    model = _load(exported_checkpoint)
    onnx_path = exported_checkpoint.with_suffix(".onnx")
    embedder = create_embedder(model, "onnx", exported=onnx_path)
    assert embedder.path == onnx_path
    with pytest.raises(HistoseekError, match="exported model not found"):
        create_embedder(model, "auto", exported=tmp_path / "missing.onnx")
    with pytest.raises(HistoseekError, match=r"must end in \.onnx \(ONNX\) or \.engine"):
        create_embedder(model, "auto", exported=exported_checkpoint)


def test_missing_onnxruntime_names_the_cpu_extra(exported_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = _load(exported_checkpoint)
    with pytest.raises(HistoseekError) as raised:
        create_embedder(model, "onnx", checkpoint=exported_checkpoint)
    assert str(raised.value).startswith("the onnx backend needs onnxruntime (not installed)")
    assert "pip install 'histoseek[cpu]'" in str(raised.value)
    notes: list[str] = []
    embedder = create_embedder(
        model, "auto", "cpu", checkpoint=exported_checkpoint, notify=notes.append
    )
    assert isinstance(embedder, TorchEmbedder)
    assert "pip install 'histoseek[cpu]'" in notes[0]


def test_missing_tensorrt_names_the_gpu_extra(exported_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        HistoseekError,
        match=r"^the tensorrt backend needs TensorRT \(not installed\): "
        r"pip install 'histoseek\[gpu\]'$",
    ):
        create_embedder(_load(exported_checkpoint), "tensorrt", checkpoint=exported_checkpoint)


@needs_cpu_only
def test_tensorrt_without_a_gpu_is_one_clear_line(exported_checkpoint, monkeypatch):
    # An importable stand-in: the package being present must not hide the missing GPU.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(HistoseekError, match="^the tensorrt backend needs a CUDA GPU"):
        create_embedder(_load(exported_checkpoint), "tensorrt", checkpoint=exported_checkpoint)


def test_tensorrt_refuses_device_cpu(exported_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(HistoseekError, match="runs on CUDA GPUs only; drop --device cpu"):
        create_embedder(_load(exported_checkpoint), "tensorrt", device="cpu")


def test_engine_on_cpu_is_skipped_with_a_note(exported_checkpoint, tmp_path: Path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    notes: list[str] = []
    embedder = create_embedder(
        _load(exported_checkpoint), "auto", "cpu", exported=engine, notify=notes.append
    )
    assert isinstance(embedder, TorchEmbedder)
    assert notes == [f"not using {engine}: TensorRT engines need a CUDA GPU"]


def test_onnx_on_cuda_without_onnxruntime_gpu_is_refused(exported_checkpoint):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(HistoseekError, match=r"onnxruntime-gpu: pip install 'histoseek\[gpu\]'"):
        create_embedder(
            _load(exported_checkpoint), "onnx", device="cuda", checkpoint=exported_checkpoint
        )


def test_unknown_backend_is_refused(exported_checkpoint):
    with pytest.raises(HistoseekError, match="unknown backend 'openvino'"):
        create_embedder(_load(exported_checkpoint), "openvino")
