"""`histoseek export`: outputs, refusals and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import histoseek_export.checked_export as checked_export
from histoseek.cli import cli


def _export(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def test_default_export_lands_beside_checkpoint_after_parity(checkpoint: Path, kather_dir):
    result = _export("--model", str(checkpoint), "--parity-images", str(kather_dir))
    assert result.exit_code == 0, result.output
    assert "parity onnxruntime vs torch fp32 on 64 images" in result.output
    assert "PASS" in result.output
    onnx.checker.check_model(onnx.load(str(checkpoint.with_suffix(".onnx"))), full_check=True)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_as_output_is_refused_before_any_work(checkpoint: Path, tmp_path, overwrite):
    # It used to be refused as "already exists; use --overwrite", and with --overwrite to fail
    # only after the whole export and parity check, with "cannot write ...: Is a directory".
    folder = tmp_path / "models.onnx"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = _export("--model", str(checkpoint), "--onnx", str(folder), *overwrite)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --onnx {folder} is a folder; name a file to write"
    ]
    assert (folder / "keep.txt").read_text() == "mine"


def test_existing_output_is_refused_without_overwrite(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep me")
    result = _export("--model", str(checkpoint), "--onnx", str(out))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {out} already exists; use --overwrite to replace it"
    ]
    assert out.read_bytes() == b"keep me"

    replaced = _export(
        "--model",
        str(checkpoint),
        "--onnx",
        str(out),
        "--overwrite",
        "--dynamic-size",
        "--opset",
        "18",
    )
    assert replaced.exit_code == 0, replaced.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 18


def test_failed_parity_writes_nothing(checkpoint: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checked_export, "ONNX_MIN_COSINE", 1.5)
    out = tmp_path / "never.onnx"
    result = _export("--model", str(checkpoint), "--onnx", str(out))
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "Error: onnxruntime parity failed; its output was not written" in result.output
    # Neither the output nor a temporary file is left; only the checkpoint's folder remains.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_dynamic_size_for_an_engine_alone_is_refused_before_any_work(checkpoint: Path):
    result = _export("--model", str(checkpoint), "--trt", "--dynamic-size")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: --dynamic-size shapes an ONNX model, and a TensorRT engine is built for the "
        "checkpoint's size: add --onnx, or drop --dynamic-size"
    )
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]


def test_an_output_that_is_the_checkpoint_or_another_output_is_refused(checkpoint: Path):
    before = checkpoint.read_bytes()
    roundabout = checkpoint.parent / ".." / checkpoint.parent.name / checkpoint.name
    result = _export("--model", str(checkpoint), "--onnx", str(roundabout), "--overwrite")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: --onnx {roundabout} is the checkpoint being exported; give the output another path"
    )
    assert checkpoint.read_bytes() == before

    both = checkpoint.parent / "both.onnx"
    result = _export("--model", str(checkpoint), "--onnx", str(both), "--trt", str(both))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: --onnx and --trt both name {both}; give each output its own path"
    )
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]


def test_bad_checkpoint_is_one_line(tmp_path: Path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    result = _export("--model", str(bad))
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {bad} is not a PyTorch checkpoint (")
    assert not bad.with_suffix(".onnx").exists()


def test_builtin_model_needs_an_output_path():
    result = _export("--model", "builtin")
    assert result.exit_code == 1
    assert "give --onnx PATH" in result.output


def test_precision_options_need_trt(checkpoint: Path):
    for option in (["--fp32"], ["--max-batch", "8"]):
        result = _export("--model", str(checkpoint), *option)
        assert result.exit_code == 1
        assert "only apply with --trt" in result.output


def test_trt_without_tensorrt_names_the_extra(checkpoint: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = _export("--model", str(checkpoint), "--trt")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --trt needs TensorRT (not installed): pip install 'histoseek[gpu]'"
    ]
    # Checked before any work: not even the ONNX file is written.
    assert not checkpoint.with_suffix(".onnx").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="onnx import blocking relies on sys.modules")
def test_export_without_onnx_names_the_extra(checkpoint: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = _export("--model", str(checkpoint))
    assert result.exit_code == 1
    assert "pip install 'histoseek[cpu]'" in result.output
