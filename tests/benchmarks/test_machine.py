"""The machine record every benchmark writes: the CPU's model name, cores, threads, versions."""

from __future__ import annotations

import platform

import torch

from histoseek.inference.cpu import cpu_name
from histoseek.inference.onnx_backend import cpu_cores


def test_the_record_names_the_machine_and_keeps_the_extras(benchmark_script):
    machine = benchmark_script("machine")
    record = machine.machine_record(onnxruntime="1.2.3", load_average_at_end=None)
    assert record["cpu"] == cpu_name()
    assert record["cpu_cores"] == cpu_cores()
    assert record["torch_threads"] == torch.get_num_threads()
    assert record["python"] == platform.python_version()
    assert record["torch"] == torch.__version__
    expected_gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    assert record["gpu"] == expected_gpu
    assert record["onnxruntime"] == "1.2.3"
    assert "load_average_at_end" in record and record["load_average_at_end"] is None
