"""The TensorRT backend: a serialized engine run on CUDA, with torch tensors as its buffers.

An engine only runs on the TensorRT version and the GPU model that built it, so the metadata
written beside it is checked against this machine before the engine is deserialised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from histoseek.errors import HistoseekError
from histoseek.inference.base import checked_embeddings
from histoseek.inference.exported import (
    check_fingerprint,
    import_tensorrt,
    read_engine_metadata,
)


def require_cuda(what: str) -> None:
    """Fail with one line when no CUDA GPU is usable."""
    if not torch.cuda.is_available():
        raise HistoseekError(f"{what} needs a CUDA GPU, and none is available here")


def gpu_identity() -> dict:
    """This machine's TensorRT version, GPU name and compute capability (what engines fit)."""
    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def check_engine_fits(engine: Path, metadata: dict) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU, in one line."""
    here = gpu_identity()
    differences = [
        f"{key.replace('_', ' ')} {metadata.get(key)} ≠ {value} here"
        for key, value in here.items()
        if metadata.get(key) != value
    ]
    if differences:
        raise HistoseekError(
            f"{engine} was built for another setup ({'; '.join(differences)}); rebuild it on "
            "this machine: histoseek export --model CHECKPOINT --trt --overwrite"
        )


class TensorRTEmbedder:
    """Runs a serialized TensorRT engine; batches above the engine's maximum run in chunks."""

    def __init__(self, serialized: bytes, metadata: dict, label: str = "engine"):
        trt = import_tensorrt()
        require_cuda("the tensorrt backend")
        self.device = torch.device("cuda")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise HistoseekError(f"TensorRT could not deserialise {label} (see its log above)")
        self.context = self.engine.create_execution_context()
        self.torch_dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise HistoseekError(f"{label} is not a histoseek embedding engine")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = self._torch_dtype(self.input_name)
        self.output_dtype = self._torch_dtype(self.output_name)
        self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]
        self.dim = int(metadata["config"]["dim"])
        self.batch_threads = 1
        self.precision = metadata["precision"]
        self.name = f"tensorrt ({self.precision}, {torch.cuda.get_device_name()})"
        self.label = label

    @classmethod
    def load(cls, engine: Path, fingerprint: str | None = None) -> TensorRTEmbedder:
        """Load an engine file after checking its metadata against this machine and model."""
        import_tensorrt()
        require_cuda("the tensorrt backend")
        engine = Path(engine)
        if not engine.is_file():
            raise HistoseekError(f"TensorRT engine not found: {engine}")
        metadata = read_engine_metadata(engine)
        if fingerprint is not None:
            check_fingerprint(engine, metadata.get("fingerprint"), fingerprint)
        check_engine_fits(engine, metadata)
        return cls(engine.read_bytes(), metadata, label=str(engine))

    def _torch_dtype(self, tensor_name: str) -> torch.dtype:
        dtype = self.engine.get_tensor_dtype(tensor_name)
        try:
            return self.torch_dtypes[dtype]
        except KeyError:
            raise HistoseekError(
                f"unsupported engine tensor type {dtype} for {tensor_name}"
            ) from None

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed an NCHW float32 batch → (N, dim) float32."""
        host = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        chunks = [self._run(chunk) for chunk in host.split(self.max_batch)]
        return checked_embeddings(
            torch.cat(chunks).float().cpu().numpy(),
            len(images),
            self.dim,
            f"the TensorRT engine {self.label}",
            "build it again (with --fp32 if FP16 overflows): histoseek export --model CHECKPOINT "
            "--trt --overwrite",
        )

    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream()
        batch = chunk.to(self.device, non_blocking=True).to(self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise HistoseekError(
                f"the engine does not accept input shape {tuple(batch.shape)}; it was built for "
                f"{tuple(self.engine.get_tensor_profile_shape(self.input_name, 0)[2])} at most"
            )
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        output = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise HistoseekError("TensorRT failed to run the engine (see its log above)")
        # The input must outlive the asynchronous run; synchronising also makes `output` ready.
        stream.synchronize()
        return output
