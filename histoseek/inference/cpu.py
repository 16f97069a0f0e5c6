"""The CPU: its INT8 instructions, and how image decoding and inference share its cores.

Measured on crc-polyps5's 224 px JPEG patches: decoding and preprocessing one takes about
1 ms of one core (1.4 ms with the hand-over from a worker process), INT8 inference about 5 ms
and FP32 inference about 8. Decoding is the small share, so the model gets every core, and a
decoding worker per four cores keeps up with it.
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
    return platform.processor() or "unknown"


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
    """How many processes decode images, and how ONNX Runtime's intra-op threads run."""

    decoding_workers: int
    inference_threads: int
    #: Whether idle inference threads busy-wait for the next operator instead of sleeping.
    spinning: bool


def cpu_plan(
    cores: int,
    workers: int | None = None,
    inference_on_cpu: bool = True,
    decoding_alongside: bool = False,
) -> CpuPlan:
    """The plan for embedding images on `cores` cores; `workers` (--workers) when given.

    The model always gets every core: threads left out would idle whenever decoding waits.
    By default inference on the CPU has one decoding worker per CORES_PER_DECODING_WORKER
    cores (at least one); more would only take cores from the model to wait for it. Inference
    on a GPU leaves the cores to decoding: one worker per core, at most MAX_DECODING_WORKERS.
    ONNX Runtime's threads spin between operators only when nothing decodes alongside them
    (no workers, and not `decoding_alongside`, as histoseek serve's request threads do):
    spinning is faster alone, but it burns the cores that decoding needs.
    """
    cores = max(1, cores)
    if workers is None:
        if inference_on_cpu:
            workers = max(1, cores // CORES_PER_DECODING_WORKER)
        else:
            workers = min(cores, MAX_DECODING_WORKERS)
    spinning = workers == 0 and not decoding_alongside
    return CpuPlan(decoding_workers=workers, inference_threads=cores, spinning=spinning)
