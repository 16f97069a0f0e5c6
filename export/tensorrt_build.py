"""Building a TensorRT engine from an exported ONNX model.

In FP16 mode the trunk runs in half precision, but every layer after it (the descriptors'
pooling including GeM's x^p and mean, the projections and the L2 normalisations) is pinned to
FP32: x^3 overflows float16 for ordinary activations, and the norms lose the precision that
cosine similarity needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from histoseek.errors import HistoseekError
from histoseek.inference.exported import import_tensorrt
from histoseek.inference.tensorrt_backend import gpu_identity, require_cuda
from histoseek_export.defaults import DEFAULT_MAX_BATCH
from histoseek_export.onnx_export import TRUNK_SCOPE

OPT_BATCH = 32


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and the metadata to write beside it."""

    serialized: bytes
    metadata: dict


def pin_head_to_fp32(network, trt) -> int:
    """Force every layer after the backbone to compute and output FP32; return how many.

    Constants are included: the normalisations' 1e-12 floor would round to zero in FP16.
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    trunk = [i for i, layer in enumerate(layers) if layer.name.startswith(TRUNK_SCOPE)]
    if not trunk:
        raise HistoseekError(
            f"cannot find the backbone ({TRUNK_SCOPE}) in the ONNX graph; export it with "
            "histoseek export --onnx first"
        )
    floating = (trt.float32, trt.float16)
    pinned = 0
    # The parser adds layers in the ONNX graph's topological order, where the trunk comes first.
    for layer in layers[trunk[-1] + 1 :]:
        float_outputs = [
            i for i in range(layer.num_outputs) if layer.get_output(i).dtype in floating
        ]
        if not float_outputs:
            continue
        layer.precision = trt.float32
        for index in float_outputs:
            layer.set_output_type(index, trt.float32)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: Path,
    image_size: int,
    fingerprint: str,
    config: dict,
    fp16: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> BuiltEngine:
    """Parse `onnx_path` and build an engine for batches 1..max_batch of image_size² images."""
    trt = import_tensorrt("building a TensorRT engine")
    require_cuda("building a TensorRT engine")
    if max_batch < 1:
        raise HistoseekError("--max-batch must be at least 1")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise HistoseekError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors)}")
    builder_config = builder.create_builder_config()
    model_input = network.get_input(0)
    profile = builder.create_optimization_profile()
    shape = (3, image_size, image_size)
    profile.set_shape(
        model_input.name,
        (1, *shape),
        (min(OPT_BATCH, max_batch), *shape),
        (max_batch, *shape),
    )
    builder_config.add_optimization_profile(profile)
    pinned = 0
    if fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
        builder_config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = pin_head_to_fp32(network, trt)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise HistoseekError("TensorRT could not build the engine (see its log above)")
    metadata = {
        **gpu_identity(),
        "fingerprint": fingerprint,
        "config": config,
        "precision": "fp16" if fp16 else "fp32",
        "fp32_layers": pinned,
        "min_batch": 1,
        "opt_batch": min(OPT_BATCH, max_batch),
        "max_batch": max_batch,
        "image_size": image_size,
    }
    return BuiltEngine(bytes(serialized), metadata)
