"""The CPU: its INT8 instructions, and how image decoding and inference share its cores.

Measured on crc-polyps5's 224 px JPEG patches: decoding and preprocessing one takes about
1 ms of one core, INT8 inference about 5 ms and FP32 inference about 8. A backend that can
run batches side by side (ONNX Runtime on the CPU) gets one thread per core, each decoding a
batch and then running the model on it with one intra-op thread: the cores never wait for
each other, and nothing is handed between processes. Other backends run one batch at a time
on every core, fed by decoding worker processes: one per four cores keeps up with a CPU
model, and a GPU leaves the cores to decoding.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CORES_PER_DECODING_WORKER = 4
MAX_DECODING_WORKERS = 8
# /proc/cpuinfo flags of the x86 instructions that make INT8 convolutions fast, best first.
INT8_INSTRUCTIONS = {
    "amx_int8": "AMX-INT8",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
}


def cpu_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    # On Linux platform.processor() is empty, and machine() names only the architecture.
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return line.split(":", 1)[1].split()
    return []


def int8_instructions(flags: list[str]) -> str:
    """The fastest INT8 dot-product instructions among `flags`, described for users."""
    found = [label for flag, label in INT8_INSTRUCTIONS.items() if flag in flags]
    if found:
        return f"CPU with {', '.join(found)}"
    return "this CPU has no VNNI or AMX: INT8 may run no faster than FP32"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


@dataclass(frozen=True)
class CpuPlan:
    """How images are decoded and the model's threads run, for either kind of backend."""

    #: For a backend that runs one batch at a time: processes decoding images for it.
    decoding_workers: int
    #: For a backend that runs one batch at a time: its intra-op threads.
    inference_threads: int
    #: Whether those threads busy-wait for the next operator instead of sleeping.
    spinning: bool
    #: For a backend that can run batches side by side: threads that each decode a batch and
    #: run the model on it with one intra-op thread (1: run one batch at a time instead).
    batch_threads: int


def cpu_plan(
    cores: int,
    workers: int | None = None,
    inference_on_cpu: bool = True,
    decoding_alongside: bool = False,
) -> CpuPlan:
    """The plan for embedding images on `cores` cores; `workers` (--workers) when given.

    By default a backend that can run batches side by side gets one batch thread per core.
    One that cannot gets every core for its intra-op threads (threads left out would idle
    whenever decoding waits) and, on the CPU, one decoding worker per
    CORES_PER_DECODING_WORKER cores (at least one; more would only take cores from the model
    to wait for it); on a GPU one worker per core, at most MAX_DECODING_WORKERS.

    `workers` asks for decoding worker processes, so batches run one at a time. So they do
    when `decoding_alongside`: other threads decode while the model runs (histoseek serve's
    requests), and the model's threads must then not spin, as spinning burns the cores that
    decoding needs. Spinning is faster where nothing decodes alongside (no workers).
    """
    cores = max(1, cores)
    one_at_a_time = workers is not None or decoding_alongside or not inference_on_cpu
    if workers is None:
        if inference_on_cpu:
            workers = max(1, cores // CORES_PER_DECODING_WORKER)
        else:
            workers = min(cores, MAX_DECODING_WORKERS)
    return CpuPlan(
        decoding_workers=workers,
        inference_threads=cores,
        spinning=workers == 0 and not decoding_alongside,
        batch_threads=1 if one_at_a_time else cores,
    )
