"""The ONNX Runtime backend: CPU everywhere, CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np

from histoseek.errors import HistoseekError
from histoseek.inference.base import checked_embeddings
from histoseek.inference.exported import (
    INSTALL_GPU,
    META_FINGERPRINT,
    META_PRECISION,
    UnusableExportError,
    check_fingerprint,
    config_from_metadata,
    import_onnxruntime,
)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime was built with the CUDA execution provider."""
    return CUDA_PROVIDER in import_onnxruntime().get_available_providers()


PRECISIONS = ("fp32", "int8")


class OnnxEmbedder:
    """Runs an exported ONNX model, FP32 or INT8, with ONNX Runtime (all graph optimisations).

    `fingerprint` and `precision`, when given, must match what the export records. `threads`
    (default: every core) and `spinning` size ONNX Runtime's intra-op thread pool;
    `batch_threads` > 1 says that many batches may run side by side, one per calling thread,
    each on a single intra-op thread (see histoseek.inference.cpu).
    """

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        fingerprint: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        spinning: bool = True,
        batch_threads: int = 1,
    ):
        ort = import_onnxruntime()
        path = Path(path)
        if device == "cuda" and not ort_has_cuda():
            raise HistoseekError(
                f"ONNX Runtime on CUDA needs onnxruntime-gpu: {INSTALL_GPU} (or use --device cpu)"
            )
        providers = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        side_by_side = batch_threads > 1
        options.intra_op_num_threads = 1 if side_by_side else threads or cpu_cores()
        spin = spinning and not side_by_side
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for bad files
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise UnusableExportError(f"cannot load ONNX model {path}: {first_line}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        #: The export's metadata_props (fingerprint, config, precision, parity...).
        self.metadata = dict(props)
        if fingerprint is not None:
            check_fingerprint(path, props.get(META_FINGERPRINT), fingerprint)
        self.precision = props.get(META_PRECISION, "fp32")
        if self.precision not in PRECISIONS:
            raise UnusableExportError(f"{path} records an unknown precision {self.precision!r}")
        if precision is not None and precision != self.precision:
            raise UnusableExportError(
                f"{path} is an {self.precision.upper()} export, not {precision.upper()}; "
                f"use --backend {'onnx-int8' if self.precision == 'int8' else 'onnx'}"
            )
        self.config = config_from_metadata(path, props)
        self.path = path
        self.dim = self.config.dim
        self.batch_threads = batch_threads
        model_input = self._check_graph()
        self.input_name = model_input.name
        # Static exports fix H and W as ints; dynamic ones name them with strings.
        height, width = model_input.shape[2:]
        self.fixed_size = (height, width) if isinstance(height, int) else None
        self.provider = self.session.get_providers()[0]
        precision_label = " int8" if self.precision == "int8" else ""
        self.name = f"onnxruntime{precision_label} ({self.provider})"

    def _check_graph(self):
        """The graph's one input, after refusing a graph that does not take NCHW images of the
        config's size (where fixed) and give `dim` values per image, as its metadata says."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            counts = f"{len(inputs)} input(s) and {len(outputs)} output(s)"
            self._refuse(f"has {counts}, not one of each")
        input_shape, output_shape = inputs[0].shape, outputs[0].shape
        size = self.config.image_size
        if len(input_shape) != 4:
            self._refuse(f"takes {len(input_shape)}-D input, not batches of images (N×3×H×W)")
        # Dynamic axes are named with strings (or None): only the fixed ones can be checked.
        if any(
            isinstance(found, int) and found != wanted
            for found, wanted in zip(input_shape[1:], (3, size, size), strict=True)
        ):
            self._refuse(f"takes input of shape {input_shape}, not N×3×{size}×{size}")
        if len(output_shape) != 2:
            self._refuse(f"gives {len(output_shape)}-D output, not one row per image")
        if isinstance(output_shape[1], int) and output_shape[1] != self.dim:
            self._refuse(f"gives {output_shape[1]} values per image, not dim {self.dim}")
        return inputs[0]

    def _refuse(self, problem: str) -> NoReturn:
        raise UnusableExportError(
            f"{self.path} is not the model its metadata describes: it {problem}; {self._remedy}"
        )

    @property
    def _remedy(self) -> str:
        int8 = " --int8" if self.precision == "int8" else ""
        return f"export it again: histoseek export --model CHECKPOINT{int8} --overwrite"

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed an NCHW float32 batch → (N, dim) float32."""
        if self.fixed_size is not None and tuple(images.shape[2:]) != self.fixed_size:
            height, width = self.fixed_size
            raise HistoseekError(
                f"{self.path} takes {height}×{width} images, not "
                f"{images.shape[2]}×{images.shape[3]}; export it with --dynamic-size"
            )
        batch = np.ascontiguousarray(images, dtype=np.float32)
        (embeddings,) = self.session.run(None, {self.input_name: batch})
        return checked_embeddings(
            embeddings, len(images), self.dim, f"the exported model {self.path}", self._remedy
        )
