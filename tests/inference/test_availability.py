"""What `histoseek info` says each backend needs, checked against stand-in modules."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from histoseek.inference.availability import auto_device, backend_statuses


def statuses(monkeypatch, onnxruntime, tensorrt, gpu: bool) -> dict[str, tuple[bool, str]]:
    monkeypatch.setitem(sys.modules, "onnxruntime", onnxruntime)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    return {s.name: (s.available, s.detail) for s in backend_statuses()}


def fake_ort(*providers: str) -> SimpleNamespace:
    return SimpleNamespace(__version__="1.99", get_available_providers=lambda: list(providers))


def test_missing_packages_say_what_to_install(monkeypatch):
    found = statuses(monkeypatch, None, None, gpu=False)  # None in sys.modules: not installed
    assert list(found) == ["torch", "onnx (CPU)", "onnx-int8 (CPU)", "onnx (CUDA)", "tensorrt"]
    assert found["torch"] == (True, f"PyTorch {torch.__version__}")
    for name in ("onnx (CPU)", "onnx-int8 (CPU)", "onnx (CUDA)"):
        available, detail = found[name]
        assert not available
        assert "needs onnxruntime (not installed): pip install 'histoseek[cpu]'" in detail
    assert found["tensorrt"] == (
        False,
        "the tensorrt backend needs TensorRT (not installed): pip install 'histoseek[gpu]'",
    )


def test_cpu_onnxruntime_and_no_gpu(monkeypatch):
    import histoseek.inference.availability as availability

    monkeypatch.setattr(availability, "cpu_flags", lambda: ["avx2", "avx512_vnni"])
    trt = SimpleNamespace(__version__="10.9")
    found = statuses(monkeypatch, fake_ort("CPUExecutionProvider"), trt, gpu=False)
    assert found["onnx (CPU)"] == (True, "onnxruntime 1.99")
    assert found["onnx-int8 (CPU)"] == (
        True,
        "onnxruntime 1.99, CPU with AVX-512 VNNI; needs histoseek export --int8",
    )
    assert found["onnx (CUDA)"] == (
        False,
        "onnxruntime 1.99 has no CUDA support: pip install 'histoseek[gpu]'",
    )
    assert found["tensorrt"] == (False, "TensorRT 10.9, but PyTorch sees no CUDA GPU")


@pytest.mark.parametrize("gpu", [False, True])
def test_gpu_onnxruntime_needs_a_gpu(monkeypatch, gpu):
    ort = fake_ort("CUDAExecutionProvider", "CPUExecutionProvider")
    found = statuses(monkeypatch, ort, SimpleNamespace(__version__="10.9"), gpu=gpu)
    if gpu:
        assert found["onnx (CUDA)"] == (True, "onnxruntime 1.99")
        assert found["tensorrt"] == (True, "TensorRT 10.9")
    else:
        assert found["onnx (CUDA)"] == (False, "onnxruntime 1.99, but PyTorch sees no CUDA GPU")


def test_auto_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device() == "cpu (PyTorch sees no CUDA GPU)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Test GPU")
    assert auto_device() == "cuda (Test GPU)"


def test_int8_instructions_name_the_best_the_cpu_has():
    from histoseek.inference.cpu import int8_instructions

    assert int8_instructions(["avx512f", "avx512_vnni", "amx_int8"]) == (
        "CPU with AMX-INT8, AVX-512 VNNI"
    )
    assert int8_instructions(["avx2", "avx_vnni"]) == "CPU with AVX-VNNI"
    assert "INT8 may run no faster than FP32" in int8_instructions(["sse4_2", "avx2"])
