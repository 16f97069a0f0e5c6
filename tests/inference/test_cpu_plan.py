"""How decoding workers and ONNX Runtime's threads share the cores: the rule, and its use."""

from __future__ import annotations

import platform

import pytest

from histoseek.inference import cpu
from histoseek.inference.cpu import CpuPlan, cpu_name, cpu_plan

CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R45 64-Core Processor
flags\t\t: fpu avx2 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9R45 64-Core Processor
"""


def test_the_cpu_name_is_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo_lines", CPUINFO.splitlines)
    assert cpu_name() == "AMD EPYC 9R45 64-Core Processor"


def test_without_a_model_name_the_cpu_name_falls_back_to_the_platform(monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    # No /proc/cpuinfo, or one without a model name (as on many ARM machines).
    for lines in ([], ["processor\t: 0", "Features\t: fp asimd"]):
        monkeypatch.setattr(cpu, "_cpuinfo_lines", lambda lines=lines: lines)
        assert cpu_name() == "aarch64"
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert cpu_name() == "unknown"


@pytest.mark.parametrize(
    "cores, workers",
    [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 16)],
)
def test_cpu_inference_runs_a_batch_per_core_or_gets_every_core_and_a_decoder_per_four(
    cores, workers
):
    assert cpu_plan(cores) == CpuPlan(
        decoding_workers=workers, inference_threads=cores, spinning=False, batch_threads=cores
    )


def test_gpu_inference_leaves_the_cores_to_decoding_one_batch_at_a_time():
    assert cpu_plan(2, inference_on_cpu=False) == CpuPlan(2, 2, False, batch_threads=1)
    assert cpu_plan(32, inference_on_cpu=False).decoding_workers == 8


def test_workers_given_run_one_batch_at_a_time_and_threads_spin_only_without_them():
    assert cpu_plan(2, workers=3) == CpuPlan(3, 2, spinning=False, batch_threads=1)
    assert cpu_plan(2, workers=0) == CpuPlan(0, 2, spinning=True, batch_threads=1)
    # A service decodes uploads on its request threads while the model runs: no spinning.
    assert cpu_plan(2, workers=0, decoding_alongside=True) == CpuPlan(0, 2, False, 1)
    assert cpu_plan(2, decoding_alongside=True) == CpuPlan(1, 2, False, 1)


def test_the_embedder_sizes_onnxruntime_by_the_plan(tmp_path, monkeypatch):
    import torch

    from histoseek.embedder import embedder_for_model
    from histoseek.inference import cpu
    from histoseek.model.cgd import ModelConfig, build_model

    monkeypatch.setenv("HISTOSEEK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("histoseek.inference.onnx_backend.cpu_cores", lambda: 8)
    model = build_model(ModelConfig(image_size=64), weights="none")
    # By default a batch per core, each on one intra-op thread; with --workers, one batch at a
    # time on every core.
    for workers, threads, batch_threads, spinning, decoding in (
        (None, 1, 8, "0", 0),
        (0, 8, 1, "1", 0),
        (3, 8, 1, "0", 3),
    ):
        embedder = embedder_for_model(
            model, "builtin", backend="onnx", device="cpu", workers=workers
        )
        options = embedder.backend.session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert embedder.backend.batch_threads == batch_threads
        assert embedder.workers == decoding
    torch_embedder = embedder_for_model(model, "builtin", backend="torch", device="cpu")
    assert torch_embedder.backend.batch_threads == 1
    assert torch_embedder.workers == 8 // cpu.CORES_PER_DECODING_WORKER
