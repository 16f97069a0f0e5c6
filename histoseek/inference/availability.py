"""What this installation can run: each inference backend (or why not) and the auto device.

Only import checks and CUDA visibility: nothing here loads a model or starts a session.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from histoseek.errors import HistoseekError
from histoseek.inference.cpu import cpu_flags, int8_instructions
from histoseek.inference.exported import INSTALL_GPU, import_onnxruntime, import_tensorrt
from histoseek.inference.onnx_backend import CUDA_PROVIDER
from histoseek.inference.torch_backend import resolve_device

NO_CUDA_GPU = "PyTorch sees no CUDA GPU"


@dataclass(frozen=True)
class BackendStatus:
    """Whether one inference backend can run here: its version, or why not."""

    name: str
    available: bool
    detail: str


def backend_statuses() -> list[BackendStatus]:
    """torch, ONNX Runtime on CPU (FP32, INT8) and on CUDA, and TensorRT, in that order."""
    gpu = torch.cuda.is_available()
    statuses = [BackendStatus("torch", True, f"PyTorch {torch.__version__}")]
    try:
        ort = import_onnxruntime()
    except HistoseekError as error:
        for name in ("onnx (CPU)", "onnx-int8 (CPU)", "onnx (CUDA)"):
            statuses.append(BackendStatus(name, False, str(error)))
    else:
        version = f"onnxruntime {ort.__version__}"
        statuses.append(BackendStatus("onnx (CPU)", True, version))
        int8 = f"{version}, {int8_instructions(cpu_flags())}; needs histoseek export --int8"
        statuses.append(BackendStatus("onnx-int8 (CPU)", True, int8))
        if CUDA_PROVIDER not in ort.get_available_providers():
            why = f"{version} has no CUDA support: {INSTALL_GPU}"
            statuses.append(BackendStatus("onnx (CUDA)", False, why))
        elif not gpu:
            statuses.append(BackendStatus("onnx (CUDA)", False, f"{version}, but {NO_CUDA_GPU}"))
        else:
            statuses.append(BackendStatus("onnx (CUDA)", True, version))
    try:
        trt = import_tensorrt()
    except HistoseekError as error:
        statuses.append(BackendStatus("tensorrt", False, str(error)))
    else:
        version = f"TensorRT {trt.__version__}"
        detail = version if gpu else f"{version}, but {NO_CUDA_GPU}"
        statuses.append(BackendStatus("tensorrt", gpu, detail))
    return statuses


def auto_device() -> str:
    """What `--device auto` resolves to here, and on what."""
    if resolve_device("auto").type == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({NO_CUDA_GPU})"
