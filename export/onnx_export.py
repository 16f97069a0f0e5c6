"""ONNX export of a CGD model's embedding, checked by onnx and tagged with what it was made from."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from histoseek import __version__
from histoseek.errors import HistoseekError
from histoseek.inference.exported import (
    INSTALL_CPU,
    META_CLASS_NAMES,
    META_CONFIG,
    META_FINGERPRINT,
    META_PRECISION,
    META_VERSION,
)
from histoseek.model.cgd import CGD, EmbeddingOnly
from histoseek.model.checkpoint import model_fingerprint
from histoseek_export.defaults import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# ONNX node names carry the module scope they were exported from; the backbone's is /trunk/.
# Everything outside it (pooling, projections, normalisation) is the head that reduced-precision
# builds keep in FP32.
TRUNK_SCOPE = "/trunk/"


def import_onnx():
    """Import the onnx package, or fail with one line naming the extra that provides it."""
    try:
        import onnx
    except ImportError:
        raise HistoseekError(f"exporting needs the onnx package: {INSTALL_CPU}") from None
    return onnx


def export_onnx(
    model: CGD,
    path: Path,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = False,
    class_names: Sequence[str] = (),
) -> None:
    """Write the model's embedding (no classifier) to `path` as a fully checked ONNX model.

    The batch axis is always dynamic; height and width are the config's image size unless
    `dynamic_size`. metadata_props record the weights' fingerprint, the config and class names.
    """
    onnx = import_onnx()
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise HistoseekError(f"--opset {opset} is not supported; use {MIN_OPSET} to {MAX_OPSET}")
    # A new module starts in training mode, and torch.onnx.export restores the wrapper's mode
    # on exit, which would switch the wrapped model's batch norms to training.
    wrapper = EmbeddingOnly(model.eval()).eval()
    device = next(model.parameters()).device
    size = model.config.image_size
    example = torch.zeros(2, 3, size, size, device=device)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which
        # needs onnxscript; it still exports this model exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        META_VERSION: __version__,
        META_FINGERPRINT: model_fingerprint(model),
        META_CONFIG: json.dumps(model.config.to_dict(), sort_keys=True),
        META_CLASS_NAMES: json.dumps(list(class_names)),
        META_PRECISION: "fp32",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "histoseek CGD embedding model (L2-normalised embeddings)"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise HistoseekError(f"the exported ONNX model fails onnx.checker: {error}") from None
    onnx.save(proto, str(path))
