"""Embedding throughput (images/s) of every inference backend usable on this machine.

Runs the same model through each backend at several batch sizes: torch eager and ONNX Runtime on
the CPU; on a CUDA machine also torch eager FP32 and AMP (channels-last, as histoseek runs them, and
NCHW), ONNX Runtime CUDA (needs onnxruntime-gpu) and TensorRT FP16 (needs tensorrt). Prints a
table and writes JSON.

    python benchmarks/inference_speed.py                      # the default model at 224 px
    python benchmarks/inference_speed.py --quick              # one timed run per cell
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from machine import machine_record

from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.inference.base import Embedder
from histoseek.inference.onnx_backend import OnnxEmbedder, ort_has_cuda
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import CGD, ModelConfig, build_model
from histoseek.model.checkpoint import load_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference_speed.json"
MIN_SECONDS = 3.0
# Backends get faster over their first calls (oneDNN and cuDNN pick kernels, ORT allocates
# arenas): warm up for this many calls, or at most this long.
WARMUP_CALLS = 3
WARMUP_SECONDS = 5.0


def installed_version(package: str) -> str | None:
    """The version of an optional package, or None where it is not installed."""
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def images_per_second(embedder: Embedder, batch: np.ndarray, min_seconds: float) -> dict:
    """Time `embed_batch` after warming up, for at least one call and `min_seconds`."""
    start = time.perf_counter()
    for _ in range(WARMUP_CALLS):
        embedder.embed_batch(batch)
        if time.perf_counter() - start >= WARMUP_SECONDS:
            break
    calls, start = 0, time.perf_counter()
    while True:
        embedder.embed_batch(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return {"images_per_s": calls * len(batch) / elapsed, "calls": calls, "seconds": elapsed}


def backends(model: CGD, onnx_path: Path, max_batch: int) -> Iterator[tuple[str, str, Callable]]:
    """(label, device, factory) of every backend to measure on this machine."""
    yield "torch eager fp32", "cpu", lambda: TorchEmbedder(copy.deepcopy(model), device="cpu")
    # PyTorch's default memory layout, as a plain eager baseline (histoseek uses channels-last).
    yield (
        "torch eager fp32 nchw",
        "cpu",
        lambda: TorchEmbedder(copy.deepcopy(model), device="cpu", channels_last=False),
    )
    yield "onnxruntime", "cpu", lambda: OnnxEmbedder(onnx_path, device="cpu")
    if not torch.cuda.is_available():
        return
    yield "torch eager fp32", "cuda", lambda: TorchEmbedder(copy.deepcopy(model), device="cuda")
    yield "torch amp fp16", "cuda", lambda: TorchEmbedder(copy.deepcopy(model), "cuda", amp=True)
    yield (
        "torch eager fp32 nchw",
        "cuda",
        lambda: TorchEmbedder(copy.deepcopy(model), device="cuda", channels_last=False),
    )
    yield (
        "torch amp fp16 nchw",
        "cuda",
        lambda: TorchEmbedder(copy.deepcopy(model), "cuda", amp=True, channels_last=False),
    )
    if ort_has_cuda():
        yield "onnxruntime", "cuda", lambda: OnnxEmbedder(onnx_path, device="cuda")
    yield "tensorrt fp16", "cuda", lambda: tensorrt_embedder(model, onnx_path, max_batch)


def tensorrt_embedder(model: CGD, onnx_path: Path, max_batch: int) -> Embedder:
    """Build an FP16 engine for the model and load it."""
    from histoseek.inference.tensorrt_backend import TensorRTEmbedder
    from histoseek.model.checkpoint import model_fingerprint
    from histoseek_export.tensorrt_build import build_engine

    built = build_engine(
        onnx_path,
        model.config.image_size,
        model_fingerprint(model),
        model.config.to_dict(),
        fp16=True,
        max_batch=max_batch,
    )
    return TensorRTEmbedder(built.serialized, built.metadata)


@contextmanager
def exported_onnx(model: CGD) -> Iterator[Path]:
    """The model exported to ONNX in a temporary folder."""
    from histoseek_export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="histoseek-bench-") as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path)
        yield path


def run(model: CGD, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """Measure every backend at every batch size; unusable backends are recorded with why."""
    size = model.config.image_size
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in batch_sizes}
    rows = []
    with exported_onnx(model) as onnx_path:
        for label, device, factory in backends(model, onnx_path, max(batch_sizes)):
            try:
                embedder = factory()
            except HistoseekError as error:
                rows.append({"backend": label, "device": device, "skipped": str(error)})
                continue
            for batch_size in batch_sizes:
                timing = images_per_second(embedder, batches[batch_size], min_seconds)
                rows.append({"backend": label, "device": device, "batch": batch_size, **timing})
                print(f"{label} ({device}) batch {batch_size}: {timing['images_per_s']:.1f} img/s")
            del embedder
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def speedups(rows: list[dict]) -> dict:
    """The ratios the project's targets are stated in, where both sides were measured."""
    rate = {
        (r["backend"], r["device"], r["batch"]): r["images_per_s"] for r in rows if "batch" in r
    }
    wanted = {
        "onnxruntime_cpu_vs_torch_cpu_batch32": (
            ("onnxruntime", "cpu", 32),
            ("torch eager fp32", "cpu", 32),
        ),
        "onnxruntime_cpu_vs_torch_nchw_cpu_batch32": (
            ("onnxruntime", "cpu", 32),
            ("torch eager fp32 nchw", "cpu", 32),
        ),
        "torch_amp_vs_torch_fp32_cuda_batch256": (
            ("torch amp fp16", "cuda", 256),
            ("torch eager fp32", "cuda", 256),
        ),
        "torch_fp32_vs_torch_nchw_cuda_batch256": (
            ("torch eager fp32", "cuda", 256),
            ("torch eager fp32 nchw", "cuda", 256),
        ),
        "tensorrt_fp16_vs_torch_fp32_cuda_batch256": (
            ("tensorrt fp16", "cuda", 256),
            ("torch eager fp32", "cuda", 256),
        ),
    }
    return {
        name: rate[fast] / rate[slow]
        for name, (fast, slow) in wanted.items()
        if fast in rate and slow in rate
    }


def print_table(rows: list[dict], batch_sizes: list[int], info: dict) -> None:
    """A rich table: one row per backend, one column per batch size."""
    from rich.console import Console
    from rich.table import Table

    gpu = f", GPU {info['gpu']}" if info["gpu"] else ""
    table = Table(title=f"images/s — {info['cpu']} ({info['cpu_cores']} cores){gpu}")
    table.add_column("backend")
    table.add_column("device")
    for batch_size in batch_sizes:
        table.add_column(f"batch {batch_size}", justify="right")
    cells: dict[tuple[str, str], dict] = {}
    for row in rows:
        cell = cells.setdefault((row["backend"], row["device"]), {})
        if "skipped" in row:
            cell["skipped"] = row["skipped"]
        else:
            cell[row["batch"]] = f"{row['images_per_s']:.1f}"
    for (backend, device), cell in cells.items():
        if "skipped" in cell:
            table.add_row(backend, device, f"skipped: {cell['skipped']}")
        else:
            table.add_row(backend, device, *(cell[b] for b in batch_sizes))
    Console().print(table)


def parse_batch_sizes(text: str) -> list[int]:
    """'1,32,256' → [1, 32, 256]."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are whole numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be 1 or more: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return (and write) the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Checkpoint (default: the built-in model).")
    parser.add_argument(
        "--image-size", type=int, default=None, help="Input size (default: the model's, 224)."
    )
    parser.add_argument("--batch-sizes", type=parse_batch_sizes, default=[1, 32, 256])
    parser.add_argument("--quick", action="store_true", help="One timed call per cell.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file.")
    args = parser.parse_args(argv)
    model = load_model(args.model)[0]
    if args.image_size is not None and args.image_size != model.config.image_size:
        # Same weights, other input size: only the config's size changes.
        config = ModelConfig.from_dict({**model.config.to_dict(), "image_size": args.image_size})
        resized = build_model(config)
        resized.load_state_dict(model.state_dict())
        model = resized.eval()
    info = machine_record(
        onnxruntime=installed_version("onnxruntime"), tensorrt=installed_version("tensorrt")
    )
    rows = run(model, args.batch_sizes, 0.0 if args.quick else MIN_SECONDS)
    document = {
        "machine": info,
        "model": args.model or "builtin",
        "config": model.config.to_dict(),
        "results": rows,
        "speedups": speedups(rows),
    }
    print_table(rows, args.batch_sizes, info)
    for name, ratio in document["speedups"].items():
        print(f"{name}: {ratio:.2f}×")
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
