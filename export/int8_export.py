"""Static INT8 quantisation of an exported ONNX model, calibrated on the user's own patches.

The trunk's convolutions run in INT8 (QDQ format: per-channel symmetric int8 weights, uint8
activations, which x86 runs with VNNI dot products). Three things keep the embeddings close to
FP32; each was found by measuring the layers' shares of the error:

- The head (SPoC and MAC pooling, GeM's power and mean, the projections, the L2 norms) stays
  FP32, as in the TensorRT FP16 engine: x^3 and the norms need the range and the precision.
- So do the trunk's first convolutions (EfficientNet-Lite0's stem and first stage, more if the
  parity check asks for it). On near-uniform patches such as background glass their rounding
  shifts every later activation, and at full resolution they gain least from INT8.
- Rounding a convolution's weights moves the mean of its output by (W_int8 - W) · E[input].
  That shift is measured on the calibration images and taken out of the bias before
  quantising (empirical bias correction): SPoC and GeM average the whole feature map, where
  rounding noise cancels but such shifts add up.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.data.folder import display_path, list_images
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.data.synth import TISSUE_CLASSES, render_tissue
from histoseek.data.transforms import EvalTransform
from histoseek.errors import HistoseekError
from histoseek.inference.exported import META_PARITY, META_PRECISION, import_onnxruntime
from histoseek.model.cgd import ModelConfig
from histoseek_export.defaults import DEFAULT_CALIBRATION_IMAGES
from histoseek_export.onnx_export import TRUNK_SCOPE, import_onnx
from histoseek_export.parity import ParityResult

CALIBRATION_BATCH = 16
# The synthetic parity images use seed 0; calibrating on other draws keeps the check honest.
SYNTHETIC_CALIBRATION_SEED = 1
# How many of the trunk's first convolutions stay FP32, tried in turn until the parity check
# passes: for EfficientNet-Lite0, its stem and first stage, then also the second, then the third.
FP32_INPUT_CONV_STEPS = (3, 9, 15)
INT8_MAX = 127

Judge = Callable[[Path, str], ParityResult]


@dataclass(frozen=True)
class CalibrationSource:
    """Where the calibration images come from: a folder of patches, or None for synthetic."""

    folder: Path | None
    origin: str

    def describe(self) -> str:
        """One phrase for the export report."""
        if self.folder is None:
            return "synthetic H&E-like patches"
        return f"{display_path(self.folder)} ({self.origin})"


def calibration_source(
    explicit: Path | None, checkpoint_extra: dict | None = None
) -> CalibrationSource:
    """--calibration DIR, else the training folder the checkpoint records if it still exists,
    else synthetic patches."""
    if explicit is not None:
        if not Path(explicit).is_dir():
            raise HistoseekError(f"--calibration: not a folder: {display_path(explicit)}")
        return CalibrationSource(Path(explicit), "--calibration")
    train_config = (checkpoint_extra or {}).get("train_config")
    data_dir = train_config.get("data_dir") if isinstance(train_config, dict) else None
    # A relative path (recorded by histoseek before 2026-11-28) would be read from wherever
    # export runs, perhaps another folder of that name.
    if isinstance(data_dir, str) and Path(data_dir).is_absolute() and Path(data_dir).is_dir():
        return CalibrationSource(Path(data_dir), "the checkpoint's training folder")
    return CalibrationSource(None, "synthetic")


def spread_over_classes(paths: list[Path], count: int) -> list[Path]:
    """Up to `count` of `paths`, shared evenly between their parent folders (the classes) and
    evenly spaced within each; the same paths always give the same picks."""
    classes: dict[Path, list[Path]] = {}
    for path in paths:
        classes.setdefault(path.parent, []).append(path)
    members = [classes[key] for key in sorted(classes, key=str)]
    quotas = [0] * len(members)
    remaining = min(count, len(paths))
    # Round-robin, so a small class gives up its unused share to the others.
    while remaining:
        for index, group in enumerate(members):
            if remaining and quotas[index] < len(group):
                quotas[index] += 1
                remaining -= 1
    picks = []
    for group, quota in zip(members, quotas, strict=True):
        if quota:
            # Centres of `quota` equal slices of the class.
            positions = ((np.arange(quota) + 0.5) * len(group) / quota).astype(int)
            picks.extend(group[position] for position in positions)
    return picks


def calibration_images(
    config: ModelConfig,
    source: CalibrationSource,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    exclude: frozenset[Path] = frozenset(),
) -> np.ndarray:
    """An NCHW float32 batch of `count` calibration images in the model's eval preprocessing.

    Files in `exclude` (the parity images) are never used, so the parity check judges the
    quantised model on images it was not calibrated on.
    """
    if count < 1:
        raise HistoseekError("--calibration-images must be at least 1")
    transform = EvalTransform(config.image_size, config.mean, config.std)
    if source.folder is None:
        rng = np.random.default_rng(SYNTHETIC_CALIBRATION_SEED)
        size = (config.image_size, config.image_size)
        return np.stack(
            [
                transform(render_tissue(TISSUE_CLASSES[i % len(TISSUE_CLASSES)], size, rng))
                for i in range(count)
            ]
        )
    excluded = {path.resolve() for path in exclude}
    candidates = [path for path in list_images(source.folder) if path.resolve() not in excluded]
    arrays = []
    for path in spread_over_classes(candidates, count):
        try:
            # The same reduced-size decoding as indexing, so calibration sees what runs later.
            arrays.append(transform(load_rgb(path, min_size=config.image_size)))
        except UnreadableImageError:
            continue
    if not arrays:
        raise HistoseekError(
            f"no readable calibration images in {display_path(source.folder)}"
            + (" besides the parity images" if exclude else "")
        )
    return np.stack(arrays)


def fp32_nodes(graph, input_convs: int) -> list[str]:
    """Names of the nodes that stay FP32: the head, and the trunk up to and including its
    `input_convs`-th convolution."""
    trunk = [node for node in graph.node if node.name.startswith(TRUNK_SCOPE)]
    if not trunk:
        raise HistoseekError(
            f"cannot find the backbone ({TRUNK_SCOPE}) in the ONNX graph; only models exported "
            "by histoseek export can be quantised"
        )
    keep = [node.name for node in graph.node if not node.name.startswith(TRUNK_SCOPE)]
    convs = 0
    for node in trunk:
        if convs == input_convs:
            break
        keep.append(node.name)
        convs += node.op_type == "Conv"
    return keep


def rounded_weights(weights: np.ndarray) -> np.ndarray:
    """Weights after onnxruntime's per-channel symmetric int8 quantisation and back:
    each output channel's scale is its largest magnitude over 127."""
    flat = np.abs(weights).reshape(weights.shape[0], -1).max(axis=1)
    scale = np.where(flat > 0, flat / INT8_MAX, 1.0).reshape(-1, *([1] * (weights.ndim - 1)))
    return (np.clip(np.round(weights / scale), -INT8_MAX, INT8_MAX) * scale).astype(weights.dtype)


class Int8Quantizer:
    """Quantises one FP32 ONNX model with one calibration set, keeping a chosen number of the
    trunk's input-side convolutions in FP32; the preparation is shared between attempts."""

    def __init__(self, fp32_path: Path, calibration: np.ndarray):
        onnx = import_onnx()
        import_onnxruntime("INT8 quantisation")
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.source = onnx.load(str(fp32_path))
        self.calibration = calibration
        with tempfile.TemporaryDirectory(prefix="histoseek-int8-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            # Folds constants and drops Identity nodes, so that every weight and bias is an
            # initializer of its own that the bias correction can rewrite.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            self.prepared = onnx.load(str(prepared))
        fp32_nodes(self.prepared.graph, 0)  # refuse a graph without a trunk before any work
        initializers = {init.name for init in self.prepared.graph.initializer}
        self.convs = [
            node
            for node in self.prepared.graph.node
            if node.op_type == "Conv"
            and node.name.startswith(TRUNK_SCOPE)
            and node.input[1] in initializers
        ]
        self.input_means = _channel_means(
            self.prepared, sorted({node.input[0] for node in self.convs}), calibration
        )

    def quantize(self, out_path: Path, input_convs: int) -> None:
        """Write the INT8 (QDQ) model to `out_path`; metadata as the FP32 model's, precision
        int8."""
        onnx = import_onnx()
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        calibration = self.calibration

        class Reader(CalibrationDataReader):
            def __init__(self, input_name: str):
                self.input_name, self.start = input_name, 0

            def get_next(self) -> dict | None:
                if self.start >= len(calibration):
                    return None
                batch = calibration[self.start : self.start + CALIBRATION_BATCH]
                self.start += CALIBRATION_BATCH
                return {self.input_name: batch}

        proto = onnx.ModelProto()
        proto.CopyFrom(self.prepared)
        keep = fp32_nodes(proto.graph, input_convs)
        self._correct_rounding_bias(proto, set(keep))
        with tempfile.TemporaryDirectory(prefix="histoseek-int8-") as scratch:
            corrected, quantized = Path(scratch) / "corrected.onnx", Path(scratch) / "int8.onnx"
            onnx.save(proto, str(corrected))
            quantize_static(
                str(corrected),
                str(quantized),
                Reader(proto.graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=keep,
            )
            result = onnx.load(str(quantized))
        del result.metadata_props[:]
        for entry in self.source.metadata_props:
            if entry.key != META_PRECISION:
                result.metadata_props.add(key=entry.key, value=entry.value)
        result.metadata_props.add(key=META_PRECISION, value="int8")
        result.doc_string = f"{self.source.doc_string} (INT8, calibrated)".strip()
        try:
            onnx.checker.check_model(result, full_check=True)
        except onnx.checker.ValidationError as error:
            raise HistoseekError(f"the INT8 model fails onnx.checker: {error}") from None
        onnx.save(result, str(out_path))

    def _correct_rounding_bias(self, proto, keep_fp32: set[str]) -> None:
        """Take the mean output shift that INT8 weight rounding causes out of the bias of every
        convolution that will be quantised (in `proto`, a copy of the prepared model)."""
        from onnx import numpy_helper

        initializers = {init.name: init for init in proto.graph.initializer}
        nodes = {node.name: node for node in proto.graph.node}
        for conv in self.convs:
            if conv.name in keep_fp32:
                continue
            node = nodes[conv.name]
            weights = numpy_helper.to_array(initializers[node.input[1]])
            shift = _rounding_shift(node, weights, self.input_means[node.input[0]])
            has_bias = len(node.input) > 2 and node.input[2] in initializers
            bias = (
                numpy_helper.to_array(initializers[node.input[2]])
                if has_bias
                else np.zeros(weights.shape[0], weights.dtype)
            )
            # A bias of its own: the exporter shares equal initializers between layers.
            corrected = numpy_helper.from_array(
                (bias - shift).astype(weights.dtype), f"{node.name}/rounding_corrected_bias"
            )
            proto.graph.initializer.append(corrected)
            if has_bias:
                node.input[2] = corrected.name
            else:
                node.input.append(corrected.name)
        used = {name for node in proto.graph.node for name in node.input}
        for init in [init for init in proto.graph.initializer if init.name not in used]:
            proto.graph.initializer.remove(init)


def _rounding_shift(node, weights: np.ndarray, input_means: np.ndarray) -> np.ndarray:
    """(W_int8 - W) · E[input] per output channel of a (grouped) convolution."""
    groups = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
    error = (rounded_weights(weights) - weights).reshape(weights.shape[0], weights.shape[1], -1)
    error = error.sum(axis=2)  # every kernel position sees the same channel mean
    group_in, group_out = weights.shape[1], weights.shape[0] // groups
    return np.concatenate(
        [
            error[g * group_out : (g + 1) * group_out]
            @ input_means[g * group_in : (g + 1) * group_in]
            for g in range(groups)
        ]
    )


def _channel_means(proto, tensors: list[str], calibration: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel means of NCHW tensors inside the model, over the calibration images."""
    ort = import_onnxruntime("INT8 calibration")
    from onnx import TensorProto, helper

    probe = type(proto)()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in tensors
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    sums = {name: np.zeros(0) for name in tensors}
    for start in range(0, len(calibration), CALIBRATION_BATCH):
        batch = calibration[start : start + CALIBRATION_BATCH]
        for name, value in zip(tensors, session.run(tensors, {input_name: batch}), strict=True):
            batch_sum = value.mean(axis=(2, 3)).sum(axis=0, dtype=np.float64)
            sums[name] = batch_sum if sums[name].size == 0 else sums[name] + batch_sum
    return {name: (total / len(calibration)).astype(np.float32) for name, total in sums.items()}


def quantize_until_parity(
    quantizer: Int8Quantizer, out_path: Path, judge: Judge, report: Callable[[str], None]
) -> ParityResult:
    """Quantise to `out_path` with ever more input-side convolutions in FP32 until `judge`
    (given the file and a label) passes it; each result goes to `report`. Raises when none
    passes, leaving the last attempt at `out_path` for the caller to discard."""
    for convs in FP32_INPUT_CONV_STEPS:
        quantizer.quantize(out_path, convs)
        result = judge(out_path, f"onnxruntime int8 (first {convs} convolutions fp32)")
        report(result.summary())
        if result.passed:
            return result
    raise HistoseekError(
        f"onnxruntime int8 parity failed, even with the first {FP32_INPUT_CONV_STEPS[-1]} "
        "convolutions in FP32; its output was not written"
    )


def record_parity(path: Path, result: ParityResult) -> None:
    """Add the parity check an INT8 export passed to its metadata, where `--backend auto`
    looks for it."""
    onnx = import_onnx()
    proto = onnx.load(str(path))
    figures = {
        "passed": result.passed,
        "images": result.images,
        "min_cosine": result.min_cosine,
        "mean_cosine": result.mean_cosine,
        "neighbour_overlap": result.neighbour_overlap,
        "min_cosine_required": result.min_cosine_required,
        "min_overlap_required": result.min_overlap_required,
        "check": result.backend,
    }
    kept = [entry for entry in proto.metadata_props if entry.key != META_PARITY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=META_PARITY, value=json.dumps(figures))
    onnx.save(proto, str(path))
