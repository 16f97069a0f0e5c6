"""`--exported PATH`: index, query and evaluate run an export kept away from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from index_helpers import error_line, run_cli

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_elsewhere(checkpoint: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("exports") / "renamed.onnx"
    result = run_cli("export", "--model", checkpoint, "--onnx", path)
    assert result.exit_code == 0, result.output
    return path


def test_index_query_and_evaluate_use_the_named_export(tiles, checkpoint, onnx_elsewhere, tmp_path):
    index_dir = tmp_path / "index"
    common = ["--backend", "onnx", "--exported", onnx_elsewhere, "--workers", "0"]
    built = run_cli("index", tiles, "--model", checkpoint, "-o", index_dir, *common)
    assert built.exit_code == 0, built.output
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["backend"].startswith("onnxruntime")

    query_image = sorted(tiles.rglob("*.tif"))[0]
    found = run_cli(
        "query", query_image, "--index", index_dir, "-k", "3", "--json", "--include-self", *common
    )
    assert found.exit_code == 0, found.output
    results = json.loads(found.stdout)["queries"][0]["results"]
    assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)

    scored = run_cli("evaluate", "--model", checkpoint, "--gallery", tiles, "--json", *common)
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["backend"].startswith("onnxruntime")


def test_export_of_other_weights_is_refused(tiles, other_checkpoint, onnx_elsewhere, tmp_path):
    result = run_cli(
        "index",
        tiles,
        "--model",
        other_checkpoint,
        "-o",
        tmp_path / "index",
        "--backend",
        "onnx",
        "--exported",
        onnx_elsewhere,
        "--workers",
        "0",
    )
    assert "fingerprint" in error_line(result)
    assert not (tmp_path / "index").exists()


def test_missing_export_is_refused(tiles, checkpoint, tmp_path):
    result = run_cli(
        "index",
        tiles,
        "--model",
        checkpoint,
        "-o",
        tmp_path / "index",
        "--exported",
        tmp_path / "missing.onnx",
        "--workers",
        "0",
    )
    assert "not found" in error_line(result)


def test_an_export_that_computes_something_else_is_refused_naming_it(tiles, checkpoint, tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from histoseek.model.checkpoint import load_checkpoint
    from histoseek_export.onnx_export import export_onnx

    # The model's own export, but with its embeddings doubled: metadata and graph look right.
    scaled = tmp_path / "scaled.onnx"
    export_onnx(load_checkpoint(checkpoint)[0], scaled)
    graph = onnx.load(str(scaled))
    (node,) = [node for node in graph.graph.node if "embeddings" in node.output]
    node.output[:] = ["unscaled"]
    graph.graph.initializer.append(numpy_helper.from_array(np.float32(2), "two"))
    graph.graph.node.append(helper.make_node("Mul", ["unscaled", "two"], ["embeddings"]))
    onnx.save(graph, str(scaled))

    index_dir = tmp_path / "index"
    common = ["--exported", scaled, "--workers", "0"]
    built = run_cli("index", tiles, "--model", checkpoint, "-o", index_dir, *common)
    assert error_line(built) == (
        f"Error: the exported model {scaled} embeds an image as a vector of length 2, not of "
        "unit length; export it again: histoseek export --model CHECKPOINT --overwrite"
    )
    assert not index_dir.exists()
