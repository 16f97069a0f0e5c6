"""How decoding workers and ONNX Runtime's threads share the cores: the rule, and its use."""

from __future__ import annotations

import pytest

from histoseek.inference.cpu import CpuPlan, cpu_plan


@pytest.mark.parametrize(
    "cores, workers",
    [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 16)],
)
def test_cpu_inference_gets_every_core_and_one_decoder_per_four(cores, workers):
    assert cpu_plan(cores) == CpuPlan(
        decoding_workers=workers, inference_threads=cores, spinning=False
    )


def test_gpu_inference_leaves_the_cores_to_decoding():
    assert cpu_plan(2, inference_on_cpu=False).decoding_workers == 2
    assert cpu_plan(32, inference_on_cpu=False).decoding_workers == 8


def test_workers_given_are_kept_and_threads_spin_only_without_them():
    assert cpu_plan(2, workers=3) == CpuPlan(3, 2, spinning=False)
    assert cpu_plan(2, workers=0) == CpuPlan(0, 2, spinning=True)
    # A service decodes uploads on its request threads while the model runs: no spinning.
    assert cpu_plan(2, workers=0, decoding_alongside=True) == CpuPlan(0, 2, spinning=False)


def test_the_embedder_sizes_onnxruntime_by_the_plan(tmp_path, monkeypatch):
    import torch

    from histoseek.embedder import embedder_for_model
    from histoseek.inference import cpu
    from histoseek.model.cgd import ModelConfig, build_model

    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("histoseek.inference.onnx_backend.cpu_cores", lambda: 8)
    model = build_model(ModelConfig(image_size=64), weights="none")
    for workers, spinning in ((None, "0"), (0, "1")):
        embedder = embedder_for_model(
            model, "builtin", backend="onnx", device="cpu", workers=workers
        )
        options = embedder.backend.session.get_session_options()
        assert options.intra_op_num_threads == 8
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert embedder.workers == (8 // cpu.CORES_PER_DECODING_WORKER if workers is None else 0)
