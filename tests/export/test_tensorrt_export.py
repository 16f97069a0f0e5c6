"""TensorRT FP16 engines: parity with PyTorch FP32, metadata, refusal of foreign engines.

Needs a CUDA GPU and the tensorrt package; skipped elsewhere. Run with `pytest -m tensorrt`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from histoseek.cli import cli
from histoseek.errors import HistoseekError
from histoseek.inference.select import create_embedder
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint
from histoseek_export.parity import ENGINE_MIN_COSINE, ENGINE_MIN_OVERLAP, compare, parity_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.tensorrt,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("tensorrt") is None, reason="needs the tensorrt package"
    ),
]

MAX_BATCH = 8


@pytest.fixture(scope="module")
def engine_export(tmp_path_factory, kather_dir, checkpoint_maker) -> tuple[Path, Path, str]:
    """(checkpoint, FP16 engine beside it, the export command's output)."""
    checkpoint = checkpoint_maker(tmp_path_factory.mktemp("trt"))
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--model",
            str(checkpoint),
            "--trt",
            "--max-batch",
            str(MAX_BATCH),
            "--parity-images",
            str(kather_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    return checkpoint, checkpoint.with_suffix(".engine"), result.output


def test_fp16_engine_passes_parity_on_real_tiles(engine_export):
    checkpoint, engine, output = engine_export
    assert "parity onnxruntime" in output
    (trt_line,) = [line for line in output.splitlines() if line.startswith("parity tensorrt")]
    assert trt_line.startswith("parity tensorrt fp16 vs torch fp32 on 64 images")
    assert trt_line.endswith("PASS")
    assert checkpoint.with_suffix(".onnx").is_file()
    metadata = json.loads(Path(f"{engine}.json").read_text())
    assert metadata["precision"] == "fp16"
    assert metadata["fp32_layers"] > 0
    assert metadata["max_batch"] == MAX_BATCH
    assert metadata["gpu_name"] == torch.cuda.get_device_name()
    assert metadata["fingerprint"] == model_fingerprint(load_checkpoint(checkpoint)[0])


def test_auto_picks_tensorrt_and_chunks_large_batches(engine_export, kather_dir):
    checkpoint, _, _ = engine_export
    model = load_checkpoint(checkpoint)[0]
    embedder = create_embedder(model, "auto", checkpoint=checkpoint)
    assert embedder.name.startswith("tensorrt (fp16")
    images = parity_images(model.config, kather_dir, count=3 * MAX_BATCH + 1)
    reference = TorchEmbedder(load_checkpoint(checkpoint)[0], device="cuda").embed_batch(images)
    got = embedder.embed_batch(images)
    result = compare(
        "tensorrt",
        reference.astype(np.float64),
        got.astype(np.float64),
        ENGINE_MIN_COSINE,
        ENGINE_MIN_OVERLAP,
    )
    assert result.passed, result.summary()


def test_engine_from_another_gpu_is_refused(engine_export, tmp_path: Path):
    checkpoint, engine, _ = engine_export
    foreign = tmp_path / "model.engine"
    shutil.copyfile(engine, foreign)
    metadata = json.loads(Path(f"{engine}.json").read_text())
    metadata["gpu_name"] = "Some Other GPU"
    Path(f"{foreign}.json").write_text(json.dumps(metadata))
    model = load_checkpoint(checkpoint)[0]
    with pytest.raises(HistoseekError, match="built for another setup.*Some Other GPU"):
        create_embedder(model, "tensorrt", exported=foreign)
    notes: list[str] = []
    embedder = create_embedder(model, "auto", exported=foreign, notify=notes.append)
    assert not embedder.name.startswith("tensorrt")
    assert "built for another setup" in notes[0]


def test_engine_of_other_weights_or_without_metadata_is_refused(engine_export, tmp_path: Path):
    checkpoint, engine, _ = engine_export
    from histoseek.model.cgd import build_model

    other = build_model(load_checkpoint(checkpoint)[0].config, weights="none", seed=5)
    with pytest.raises(HistoseekError, match="exported from other weights"):
        create_embedder(other, "tensorrt", exported=engine)
    bare = tmp_path / "bare.engine"
    shutil.copyfile(engine, bare)
    with pytest.raises(HistoseekError, match="has no metadata file bare.engine.json"):
        create_embedder(load_checkpoint(checkpoint)[0], "tensorrt", exported=bare)


def test_fp32_engine_at_a_named_path(checkpoint: Path, tmp_path: Path):
    engine = tmp_path / "engines" / "fp32.engine"
    result = CliRunner().invoke(
        cli,
        ["export", "--model", str(checkpoint), "--trt", str(engine), "--fp32", "--max-batch", "4"],
    )
    assert result.exit_code == 0, result.output
    assert "parity tensorrt fp32" in result.output
    metadata = json.loads(Path(f"{engine}.json").read_text())
    assert metadata["precision"] == "fp32"
    assert metadata["fp32_layers"] == 0
    assert metadata["max_batch"] == 4
    # Only the engine was asked for: the ONNX it was built from is not kept.
    assert not checkpoint.with_suffix(".onnx").exists()
