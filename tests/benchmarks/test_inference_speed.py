"""The inference benchmark script runs end to end and writes its JSON (tiny sizes, no timing)."""

from __future__ import annotations

import json
from pathlib import Path

from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint


def test_benchmark_measures_cpu_backends_and_writes_json(benchmark_script, tmp_path: Path):
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, build_model(ModelConfig(image_size=64)), [])
    out = tmp_path / "speed.json"
    argv = ["--model", str(checkpoint), "--image-size", "48", "--batch-sizes", "1,2"]
    document = benchmark_script("inference_speed").main([*argv, "--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == document
    assert document["config"]["image_size"] == 48
    machine = document["machine"]
    assert machine["cpu"] and machine["cpu_cores"] >= 1 and machine["torch_threads"] >= 1
    assert {"python", "torch", "gpu", "onnxruntime", "tensorrt"} <= machine.keys()
    timed = [row for row in document["results"] if "batch" in row]
    measured = {(row["backend"], row["device"], row["batch"]) for row in timed}
    for backend in ("torch eager fp32", "onnxruntime"):
        assert {(backend, "cpu", 1), (backend, "cpu", 2)} <= measured
    assert all(row["images_per_s"] > 0 for row in timed)
    # The stated targets need batch 32 (CPU) and 256 (GPU), which were not run.
    assert document["speedups"] == {}
