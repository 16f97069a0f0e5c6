"""`histoseek export --int8`: calibration source, the parity gate, outputs and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import histoseek_export.checked_export as checked_export
import histoseek_export.int8_export as int8_export
from histoseek.cli import cli
from histoseek.inference.exported import META_PARITY, META_PRECISION, cached_onnx_path
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from histoseek_export.checked_export import resolve_int8_output


def _export(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


@pytest.fixture()
def trained_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """The test checkpoint, recording a folder of synthetic patches as its training folder."""
    from histoseek.data.synth import write_synthetic_set

    data = tmp_path / "train"
    write_synthetic_set(data, per_class=30, size=64, seed=3)
    model, class_names, _ = load_checkpoint(checkpoint)
    extra = {"train_config": {"data_dir": str(data)}}
    save_checkpoint(checkpoint, model, class_names, extra=extra)
    return checkpoint


def test_int8_export_calibrates_on_the_training_folder_and_passes_the_gate(
    trained_checkpoint: Path, tmp_path: Path
):
    result = _export("--model", str(trained_checkpoint), "--int8")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("parity onnxruntime vs torch fp32") and lines[0].endswith("PASS")
    assert lines[1] == (
        f"calibrating INT8 on 150 images: {tmp_path / 'train'} (the checkpoint's training folder)"
    )
    # One line per attempt, each keeping more input-side convolutions in FP32, until one passes.
    attempts = lines[2:-1]
    assert attempts and all(line.startswith("parity onnxruntime int8 (first ") for line in attempts)
    assert [line.endswith("PASS") for line in attempts] == [False] * (len(attempts) - 1) + [True]
    assert "top-10 neighbour overlap" in attempts[-1]
    int8 = trained_checkpoint.with_suffix(".int8.onnx")
    assert lines[-1] == f"wrote {int8}"
    # --int8 alone writes the INT8 model only.
    assert sorted(p.name for p in trained_checkpoint.parent.iterdir()) == [
        "model.int8.onnx",
        "model.pt",
    ]
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert props[META_PRECISION] == "int8"
    parity = json.loads(props[META_PARITY])
    assert parity["passed"] is True and parity["images"] == 64
    assert parity["min_cosine"] >= 0.99 and parity["neighbour_overlap"] >= 0.95


def test_failed_int8_gate_writes_nothing_and_exits_1(checkpoint: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checked_export, "INT8_MIN_COSINE", 1.5)
    monkeypatch.setattr(int8_export, "FP32_INPUT_CONV_STEPS", (3, 9))
    result = _export("--model", str(checkpoint), "--int8", "--calibration-images", "16")
    assert result.exit_code == 1
    fails = [
        line for line in result.output.splitlines() if line.startswith("parity onnxruntime int8")
    ]
    assert len(fails) == 2 and all(line.endswith("FAIL") for line in fails)
    assert result.output.splitlines()[-1] == (
        "Error: onnxruntime int8 parity failed, even with the first 9 convolutions in FP32; "
        "its output was not written"
    )
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failed_int8_gate_leaves_the_onnx_export_asked_with_it_unwritten(
    checkpoint: Path, monkeypatch
):
    (checkpoint.parent / "model.onnx").write_bytes(b"the previous export")
    monkeypatch.setattr(checked_export, "INT8_MIN_COSINE", 1.5)
    monkeypatch.setattr(int8_export, "FP32_INPUT_CONV_STEPS", (3,))
    options = ("--onnx", "--int8", "--calibration-images", "16", "--overwrite")
    result = _export("--model", str(checkpoint), *options)
    assert result.exit_code == 1
    assert "int8 parity failed" in result.output and "wrote" not in result.output
    assert (checkpoint.parent / "model.onnx").read_bytes() == b"the previous export"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.onnx", "model.pt"]


def test_calibration_options_need_int8(checkpoint: Path, tmp_path: Path):
    for option in (["--calibration", str(tmp_path)], ["--calibration-images", "8"]):
        result = _export("--model", str(checkpoint), *option)
        assert result.exit_code == 1
        assert result.output.strip() == (
            "Error: --calibration and --calibration-images only apply with --int8"
        )


def test_missing_calibration_folder_is_refused_before_any_work(checkpoint: Path, tmp_path: Path):
    result = _export("--model", str(checkpoint), "--int8", "--calibration", str(tmp_path / "no"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --calibration: not a folder: {tmp_path / 'no'}"
    ]
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]


def test_int8_output_names_and_defaults(checkpoint: Path, tmp_path: Path, monkeypatch):
    model = load_checkpoint(checkpoint)[0]
    assert resolve_int8_output(None, checkpoint, model) is None
    assert resolve_int8_output("", checkpoint, model) == checkpoint.with_suffix(".int8.onnx")
    assert resolve_int8_output("out/x.INT8.onnx", checkpoint, model) == Path("out/x.INT8.onnx")
    # The built-in model has no checkpoint to write beside: its INT8 export goes to the cache.
    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    assert resolve_int8_output("", None, model) == cached_onnx_path(
        model_fingerprint(model), 64, int8=True
    )
    result = _export("--model", str(checkpoint), "--int8", str(tmp_path / "fast.onnx"))
    assert result.exit_code == 1
    assert "the name must end in .int8.onnx" in result.output


def test_existing_int8_output_is_refused_without_overwrite(checkpoint: Path):
    existing = checkpoint.with_suffix(".int8.onnx")
    existing.write_bytes(b"keep me")
    result = _export("--model", str(checkpoint), "--int8")
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"Error: {existing} already exists; use --overwrite to replace it"
    )
    assert existing.read_bytes() == b"keep me"
