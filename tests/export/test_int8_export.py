"""INT8 quantisation: calibration sources and samples, the quantised graph, the parity ladder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.inference.exported import META_CONFIG, META_FINGERPRINT, META_PRECISION
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.model.checkpoint import load_checkpoint
from histoseek_export.int8_export import (
    FP32_INPUT_CONV_STEPS,
    CalibrationSource,
    Int8Quantizer,
    calibration_images,
    calibration_source,
    quantize_until_parity,
    rounded_weights,
    spread_over_classes,
)
from histoseek_export.onnx_export import TRUNK_SCOPE
from histoseek_export.parity import ParityResult

IMAGE_SIZE = 64  # the size of the checkpoints conftest.py makes


def _write_tiles(folder: Path, counts: dict[str, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    written = []
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / name / f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
            written.append(path)
    return written


def test_calibration_source_prefers_the_folder_given(tmp_path: Path):
    given, trained_on = tmp_path / "given", tmp_path / "train"
    given.mkdir()
    trained_on.mkdir()
    extra = {"train_config": {"data_dir": str(trained_on)}}
    assert calibration_source(given, extra) == CalibrationSource(given, "--calibration")


def test_calibration_source_falls_back_to_the_training_folder_then_synthetic(
    tmp_path: Path, monkeypatch
):
    trained_on = tmp_path / "train"
    trained_on.mkdir()
    found = calibration_source(None, {"train_config": {"data_dir": str(trained_on)}})
    assert found.folder == trained_on
    assert "training folder" in found.describe()
    # Moved away since training, or never recorded: synthetic patches.
    moved = {"train_config": {"data_dir": str(tmp_path / "gone")}}
    # A relative path says nothing about where training ran, though "train" exists here.
    relative = {"train_config": {"data_dir": "train"}}
    monkeypatch.chdir(tmp_path)
    for extra in (moved, relative, {}, None, {"train_config": "not a dict"}):
        source = calibration_source(None, extra)
        assert source.folder is None
        assert source.describe() == "synthetic H&E-like patches"


def test_missing_calibration_folder_is_one_line(tmp_path: Path):
    with pytest.raises(HistoseekError, match=r"^--calibration: not a folder: .*nowhere$"):
        calibration_source(tmp_path / "nowhere")


def test_spread_over_classes_shares_the_sample_between_classes_deterministically(tmp_path):
    paths = _write_tiles(tmp_path, {"a": 20, "b": 3, "c": 10})
    picks = spread_over_classes(paths, 12)
    assert picks == spread_over_classes(list(paths), 12)
    by_class = {name: sum(p.parent.name == name for p in picks) for name in "abc"}
    # b has only 3; its unused share goes to the others, evenly.
    assert by_class == {"a": 5, "b": 3, "c": 4} or by_class == {"a": 4, "b": 3, "c": 5}
    assert len(set(picks)) == 12
    assert sorted(spread_over_classes(paths, 100)) == sorted(paths)


def test_calibration_images_use_eval_preprocessing_and_skip_the_parity_images(tmp_path):
    from histoseek.model.cgd import ModelConfig

    paths = _write_tiles(tmp_path, {"a": 6, "b": 6})
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    config = ModelConfig(image_size=IMAGE_SIZE)
    source = CalibrationSource(tmp_path, "--calibration")
    excluded = frozenset(paths[:6])  # every image of class a
    batch = calibration_images(config, source, 8, exclude=excluded)
    assert batch.shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.dtype == np.float32
    from histoseek.data.images import load_rgb
    from histoseek.data.transforms import EvalTransform

    transform = EvalTransform(IMAGE_SIZE, config.mean, config.std)
    expected = np.stack([transform(load_rgb(path)) for path in paths[6:]])
    assert np.allclose(np.sort(batch.reshape(6, -1), axis=0), np.sort(expected.reshape(6, -1), 0))
    with pytest.raises(HistoseekError, match="besides the parity images"):
        calibration_images(config, source, 8, exclude=frozenset(paths))
    synthetic = calibration_images(config, CalibrationSource(None, "synthetic"), 5)
    assert synthetic.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(HistoseekError, match="at least 1"):
        calibration_images(config, source, 0)


@pytest.mark.parametrize("groups", [1, 4])
def test_rounding_shift_is_the_mean_output_change_of_the_rounded_weights(groups: int):
    from onnx import helper

    from histoseek_export.int8_export import _rounding_shift

    rng = np.random.default_rng(groups)
    weights = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32)
    means = rng.uniform(0, 2, 8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups)
    # A constant input (no padding) makes every output position see exactly the means.
    constant = torch.from_numpy(np.broadcast_to(means[None, :, None, None], (1, 8, 5, 5)).copy())

    def conv(w: np.ndarray) -> np.ndarray:
        return torch.nn.functional.conv2d(constant, torch.from_numpy(w), groups=groups).numpy()

    change = (conv(rounded_weights(weights)) - conv(weights)).mean(axis=(0, 2, 3))
    assert np.allclose(_rounding_shift(node, weights, means), change, atol=1e-5)


def test_rounded_weights_use_a_per_channel_symmetric_int8_grid():
    weights = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.9]], np.float32)
    rounded = rounded_weights(weights)
    for row, original in zip(rounded, weights, strict=True):
        scale = np.abs(original).max() / 127 if np.abs(original).max() else 1.0
        steps = row / scale
        assert np.allclose(steps, np.round(steps), atol=1e-4)
        assert np.abs(row - original).max() <= scale / 2 + 1e-7
    assert not rounded[1].any()


@pytest.fixture(scope="module")
def quantised(tmp_path_factory, checkpoint_maker) -> tuple[Path, Path, Path]:
    """(FP32 export, its INT8 quantisation, checkpoint) of the small test checkpoint."""
    from histoseek_export.onnx_export import export_onnx

    checkpoint = checkpoint_maker(tmp_path_factory.mktemp("int8"))
    model, class_names, _ = load_checkpoint(checkpoint)
    fp32 = checkpoint.with_suffix(".onnx")
    export_onnx(model, fp32, class_names=class_names)
    calibration = calibration_images(model.config, CalibrationSource(None, "synthetic"), 32)
    int8 = checkpoint.with_suffix(".int8.onnx")
    Int8Quantizer(fp32, calibration).quantize(int8, FP32_INPUT_CONV_STEPS[0])
    return fp32, int8, checkpoint


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def test_int8_model_has_int8_trunk_weights_and_an_fp32_head(quantised):
    fp32_path, int8_path, _ = quantised
    proto = onnx.load(str(int8_path))
    onnx.checker.check_model(proto, full_check=True)
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    producers = _producers(proto.graph)
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    quantised_convs = []
    for conv in convs:
        weight_source = producers.get(conv.input[1])
        if weight_source is not None and weight_source.op_type == "DequantizeLinear":
            assert initializers[weight_source.input[0]].dtype == np.int8
            quantised_convs.append(conv.name)
    trunk_convs = [conv.name for conv in convs if conv.name.startswith(TRUNK_SCOPE)]
    # All but the first few input-side convolutions run in INT8.
    assert quantised_convs == trunk_convs[FP32_INPUT_CONV_STEPS[0] :]
    # Nothing outside the trunk is quantised: GeM's Pow and ReduceMean, the projections'
    # MatMul and the L2 norms get float weights, and only trunk outputs are quantised.
    quantisation = {"QuantizeLinear", "DequantizeLinear"}
    head = [
        node
        for node in proto.graph.node
        if not node.name.startswith(TRUNK_SCOPE) and node.op_type not in quantisation
    ]
    assert {"Pow", "ReduceMean", "MatMul", "ReduceL2"} <= {node.op_type for node in head}
    for node in head:
        for name in node.input:
            source = producers.get(name)
            if source is not None and source.op_type == "DequantizeLinear":
                assert source.input[0] not in initializers, f"{node.name} reads int8 weights"
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            assert producers[node.input[0]].name.startswith(TRUNK_SCOPE)


def test_int8_weights_are_the_rounding_the_bias_correction_assumed(quantised):
    fp32_path, int8_path, _ = quantised
    original = onnx.load(str(fp32_path))
    fp32_initializers = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    fp32_weights = {
        node.name: fp32_initializers[node.input[1]]
        for node in original.graph.node
        if node.op_type == "Conv" and node.input[1] in fp32_initializers
    }
    proto = onnx.load(str(int8_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = _producers(proto.graph)
    checked = 0
    for conv in proto.graph.node:
        source = producers.get(conv.input[1]) if conv.op_type == "Conv" else None
        if source is None or source.op_type != "DequantizeLinear" or conv.name not in fp32_weights:
            continue
        values, scale = initializers[source.input[0]], initializers[source.input[1]]
        dequantised = values.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        assert np.allclose(dequantised, rounded_weights(fp32_weights[conv.name]), atol=1e-6)
        checked += 1
    assert checked > 20


def test_int8_model_carries_the_fp32_metadata_and_precision_int8(quantised):
    fp32_path, int8_path, checkpoint = quantised
    fp32 = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    int8 = {p.key: p.value for p in onnx.load(str(int8_path)).metadata_props}
    assert fp32[META_PRECISION] == "fp32" and int8[META_PRECISION] == "int8"
    assert {k: v for k, v in int8.items() if k != META_PRECISION} == {
        k: v for k, v in fp32.items() if k != META_PRECISION
    }
    assert json.loads(int8[META_CONFIG])["image_size"] == IMAGE_SIZE
    from histoseek.model.checkpoint import model_fingerprint

    assert int8[META_FINGERPRINT] == model_fingerprint(load_checkpoint(checkpoint)[0])


def test_int8_model_runs_and_stays_close_to_torch(quantised):
    from histoseek.inference.torch_backend import TorchEmbedder
    from histoseek.model.cgd import ModelConfig
    from histoseek_export.parity import parity_images

    _, int8_path, checkpoint = quantised
    model = load_checkpoint(checkpoint)[0]
    images = parity_images(ModelConfig(image_size=IMAGE_SIZE), count=16)
    int8 = OnnxEmbedder(int8_path).embed_batch(images)
    reference = TorchEmbedder(model, device="cpu").embed_batch(images)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    assert np.min(np.sum(int8 * reference, axis=1)) > 0.98


def _result(label: str, passed: bool) -> ParityResult:
    return ParityResult(label, 64, 0.999 if passed else 0.5, 0.999, 1.0, 0.99, 0.95)


class _CountingQuantizer:
    """Records the FP32 input convolutions of every attempt (the real one is slow to repeat)."""

    def __init__(self):
        self.attempts: list[int] = []

    def quantize(self, out_path: Path, input_convs: int) -> None:
        self.attempts.append(input_convs)
        out_path.write_bytes(b"attempt")


def test_ladder_keeps_more_layers_fp32_until_parity_passes(tmp_path: Path):
    quantizer, lines = _CountingQuantizer(), []
    passing_at = FP32_INPUT_CONV_STEPS[1]

    def judge(path: Path, label: str) -> ParityResult:
        return _result(label, passed=quantizer.attempts[-1] == passing_at)

    result = quantize_until_parity(quantizer, tmp_path / "m.int8.onnx", judge, lines.append)
    assert quantizer.attempts == list(FP32_INPUT_CONV_STEPS[:2])
    assert result.passed and f"first {passing_at} convolutions" in result.backend
    assert [line.endswith("FAIL") for line in lines] == [True, False]


def test_ladder_gives_up_with_one_line_when_nothing_passes(tmp_path: Path):
    quantizer = _CountingQuantizer()
    with pytest.raises(HistoseekError, match=r"^onnxruntime int8 parity failed, even with"):
        quantize_until_parity(
            quantizer, tmp_path / "m.int8.onnx", lambda p, label: _result(label, False), print
        )
    assert quantizer.attempts == list(FP32_INPUT_CONV_STEPS)


def test_a_graph_without_a_trunk_is_refused(tmp_path: Path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["embeddings"], name="/relu")],
        "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(HistoseekError, match="cannot find the backbone"):
        Int8Quantizer(path, np.zeros((2, 3, 8, 8), np.float32))
