"""CPU throughput of torch, ONNX Runtime FP32 and ONNX Runtime INT8, raw and end to end.

On crc-polyps5/train (2,000 JPEG patches): for each backend, the raw model's images/s on
preprocessed batches and `histoseek index`'s images/s from files to a finished index, in
histoseek's layout of the cores (ONNX Runtime: a batch per core, each thread decoding its own)
and, for ONNX Runtime, also one batch at a time on every core fed by a decoding process, each
the median of --turns raw figures and index runs taken in turn; where a serial pipeline
spends its time (decode, resize and normalise, inference, Annoy); and R@1 on
crc-polyps5 test → train for FP32 and INT8 side by side. The INT8 model is made the way
`histoseek export --int8` makes it (calibrated on crc-polyps5/train, its parity gate judged on
other crc-polyps5/train images, never on test), unless --int8-export names one. Prints a
table and writes JSON.

    python benchmarks/cpu_int8.py                      # the built-in model, every image
    python benchmarks/cpu_int8.py --model runs/x/model.pt
    python benchmarks/cpu_int8.py --quick              # 300 train / 150 test images, short timings
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from machine import machine_record

from histoseek.data.folder import list_images
from histoseek.data.images import load_rgb
from histoseek.data.transforms import EvalTransform
from histoseek.embedder import ImageEmbedder, embedder_for_model
from histoseek.evaluate import check_evaluation_set, evaluate
from histoseek.fsutil import atomic_file
from histoseek.index.annoy_index import build_annoy
from histoseek.index.build import build_index
from histoseek.index.defaults import DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.manifest import EMBEDDINGS_NAME
from histoseek.inference.cpu import cpu_flags, int8_instructions
from histoseek.inference.exported import META_PARITY
from histoseek.model.checkpoint import BUILTIN_MODEL, load_model
from histoseek_export.int8_export import spread_over_classes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "crc-polyps5"
RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("torch", "onnx", "onnx-int8")
QUICK_TRAIN, QUICK_TEST = 300, 150
# The targets on the 2-core CPU.
INT8_RAW_SPEEDUP = 2.0
END_TO_END_SHARE = 0.8
INT8_END_TO_END = 250.0
MAX_R1_LOSS = 0.01
# A batch per core, each thread decoding its own (histoseek's default for ONNX Runtime on the
# CPU); or one batch at a time on every core, fed by one decoding worker process.
LAYOUT_NAMES = {True: "batch per core", False: "one at a time"}
TURNS = 3


def subset(folder: Path, count: int | None, scratch: Path) -> Path:
    """`folder` itself, or a folder of links to `count` of its images spread over the classes."""
    if count is None:
        return folder
    target = scratch / folder.name
    for path in spread_over_classes(list_images(folder), count):
        link = target / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return target


def per_image_ms(work: Callable[[Path], object], paths: list[Path]) -> float:
    """Mean milliseconds of `work` per file, single-threaded."""
    started = time.perf_counter()
    for path in paths:
        work(path)
    return 1000 * (time.perf_counter() - started) / len(paths)


def stage_times(paths: list[Path], image_size: int, mean, std) -> dict:
    """Milliseconds per image of each preprocessing stage, on one core."""
    transform = EvalTransform(image_size, mean, std)
    target = (image_size, image_size)
    decoded = {path: load_rgb(path, min_size=image_size) for path in paths}

    def resize(path: Path):
        image = decoded[path]
        return image if image.size == target else image.resize(target, resample=2)

    resized = {path: resize(path) for path in paths}
    return {
        "decode_ms": per_image_ms(lambda path: load_rgb(path, min_size=image_size), paths),
        "resize_ms": per_image_ms(resize, paths),  # 0 where the decoded size is the model's
        "normalise_ms": per_image_ms(lambda path: transform(resized[path]), paths),
        "decoded_sizes": sorted({f"{w}x{h}" for w, h in (i.size for i in decoded.values())}),
    }


def raw_images_per_second(embedder: ImageEmbedder, batch: np.ndarray, seconds: float) -> float:
    """The model alone: preprocessed batches in, embeddings out, after two warm-up calls; as
    many batches side by side as the backend runs that way (its `batch_threads`)."""
    backend = embedder.backend
    for _ in range(2):
        backend.embed_batch(batch)
    started = time.perf_counter()

    def calls_until_done() -> int:
        calls = 0
        while time.perf_counter() - started < seconds:
            backend.embed_batch(batch)
            calls += 1
        return calls

    with ThreadPoolExecutor(backend.batch_threads) as pool:
        calls = sum(pool.map(lambda _: calls_until_done(), range(backend.batch_threads)))
    return calls * len(batch) / (time.perf_counter() - started)


def end_to_end(embedder: ImageEmbedder, source: Path, index_dir: Path) -> dict:
    """`histoseek index` from files to a finished index at `index_dir`, built afresh (an index
    of the same folder and model left there would be reused, not embedded again)."""
    shutil.rmtree(index_dir, ignore_errors=True)
    started = time.perf_counter()
    report = build_index(source, index_dir, embedder, overwrite=True)
    seconds = time.perf_counter() - started
    return {"images": report.items, "seconds": seconds, "images_per_s": report.items / seconds}


def measured_in_turns(
    layouts: list[tuple[ImageEmbedder, ImageEmbedder]],
    batch: np.ndarray,
    seconds: float,
    source: Path,
    index_dir: Path,
    turns: int = TURNS,
) -> list[dict]:
    """For each layout (the embedder timed raw, the embedder that indexes): the median of
    `turns` raw figures and of `turns` index runs, every measurement of every layout taken in
    turn, so that raw and index figures sample the same moments (a VM's speed drifts by ±15%
    over minutes, which one index run after three raw figures would not average out)."""
    raw: list[list[float]] = [[] for _ in layouts]
    runs: list[list[dict]] = [[] for _ in layouts]
    for _ in range(turns):
        for number, (timed_raw, indexing) in enumerate(layouts):
            raw[number].append(raw_images_per_second(timed_raw, batch, seconds))
            runs[number].append(end_to_end(indexing, source, index_dir))
    return [
        {
            "raw_images_per_s": float(np.median(raw_figures)),
            "raw_turns": raw_figures,
            "index": {
                "images": index_runs[0]["images"],
                "images_per_s": float(np.median([run["images_per_s"] for run in index_runs])),
                "turns": [run["images_per_s"] for run in index_runs],
            },
        }
        for raw_figures, index_runs in zip(raw, runs, strict=True)
    ]


def make_int8(model_ref: str, scratch: Path, train: Path, count: int) -> Path:
    """FP32 and INT8 exports as `histoseek export --onnx --int8` writes them (gate included).

    The gate, which chooses how many early convolutions stay FP32, is judged on train images
    held out from calibration: never on the test set that R@1 is then reported on."""
    from histoseek_export.checked_export import run_export

    run_export(
        None if model_ref == BUILTIN_MODEL else model_ref,
        onnx=str(scratch / "model.onnx"),
        int8=str(scratch / "model.int8.onnx"),
        calibration_dir=train,
        calibration_count=count,
        parity_dir=train,
        notify=lambda line: print(f"  {line}"),
    )
    return scratch / "model.int8.onnx"


def run(args: argparse.Namespace) -> dict:
    """Measure everything; return the JSON document."""
    if not DATA.is_dir():
        raise SystemExit(f"crc-polyps5 not found at {DATA}: the benchmark needs ../shared/data")
    network, class_names, reference = load_model(args.model)
    config = network.config
    seconds = 1.0 if args.quick else args.min_seconds
    with tempfile.TemporaryDirectory(prefix="histoseek-cpu-int8-") as folder:
        scratch = Path(folder)
        train = subset(DATA / "train", QUICK_TRAIN if args.quick else None, scratch / "sample")
        test = subset(DATA / "test", QUICK_TEST if args.quick else None, scratch / "sample")
        paths = list_images(train)
        counts = {"train": len(paths), "test": len(list_images(test))}
        print(f"exporting ({reference}): FP32 ONNX and INT8 calibrated on {train}")
        fp32_path = scratch / "model.onnx"
        int8_path = args.int8_export or make_int8(
            reference, scratch, train, args.calibration_images
        )
        if args.int8_export:
            from histoseek_export.onnx_export import export_onnx

            export_onnx(network, fp32_path, class_names=class_names)
        exported = {"torch": None, "onnx": fp32_path, "onnx-int8": Path(int8_path)}
        stages = stage_times(paths[:200], config.image_size, config.mean, config.std)
        transform = EvalTransform(config.image_size, config.mean, config.std)
        batch = np.stack(
            [transform(load_rgb(path, config.image_size)) for path in paths[: args.batch_size]]
        )
        rows = []
        for backend in BACKENDS:

            def embedder_with(workers: int | None, backend: str = backend) -> ImageEmbedder:
                return embedder_for_model(
                    network,
                    reference,
                    class_names,
                    backend=backend,
                    device="cpu",
                    exported=exported[backend],
                    batch_size=args.batch_size,
                    workers=workers,
                    notify=lambda line: None,
                )

            embedder = embedder_with(args.workers)
            # The other layout, for comparison: one batch at a time on every core, fed by one
            # decoding worker process (its threads spinning when alone, for the raw figure).
            compared = embedder.backend.batch_threads > 1
            layouts = [(embedder, embedder)]
            if compared:
                layouts.append((embedder_with(0), embedder_with(1)))
            own, *other = measured_in_turns(
                layouts, batch, seconds, train, scratch / f"index-{backend}", args.turns
            )
            row = {
                "backend": backend,
                "name": embedder.name,
                **own,
                "batch_threads": embedder.backend.batch_threads,
                "decoding_workers": embedder.workers,
            }
            print(
                f"{embedder.name}: raw {own['raw_images_per_s']:.1f}, "
                f"index {own['index']['images_per_s']:.1f} images/s",
                flush=True,
            )
            if other:
                row["one_batch_at_a_time"] = other[0]
                print(
                    f"{embedder.name}, one batch at a time: raw "
                    f"{other[0]['raw_images_per_s']:.1f}, index "
                    f"{other[0]['index']['images_per_s']:.1f} images/s",
                    flush=True,
                )
            if backend == "onnx-int8":
                row["parity"] = json.loads(embedder.backend.metadata.get(META_PARITY, "{}"))
            if backend != "torch":
                quality = evaluate(embedder, check_evaluation_set(train, test), recall_ks=(1,))
                row["recall@1"] = quality.metrics["recall@1"]
                print(f"{embedder.name}: R@1 {row['recall@1']:.4f}", flush=True)
            rows.append(row)
        embeddings = np.load(scratch / "index-onnx" / EMBEDDINGS_NAME)
        started = time.perf_counter()
        build_annoy(embeddings, DEFAULT_TREES, DEFAULT_SEED, scratch / "annoy.ann")
        stages["annoy_build_ms"] = 1000 * (time.perf_counter() - started) / len(embeddings)
    flags = cpu_flags()
    return {
        "machine": machine_record(
            int8_instructions=int8_instructions(flags),
            cpu_flags=flags,
            onnxruntime=__import__("onnxruntime").__version__,
            load_average_at_end=os.getloadavg() if hasattr(os, "getloadavg") else None,
        ),
        "model": reference,
        "config": config.to_dict(),
        "quick": args.quick,
        "images": counts,
        "batch_size": args.batch_size,
        "stages_ms_per_image": stages,
        "results": rows,
        "targets": targets(rows),
    }


def best_raw(row: dict) -> float:
    """The model's raw images/s in the faster of the layouts measured."""
    other = row.get("one_batch_at_a_time", {}).get("raw_images_per_s", 0.0)
    return max(row["raw_images_per_s"], other)


def targets(rows: list[dict]) -> dict:
    """The issue's targets, measured against what was run."""
    by = {row["backend"]: row for row in rows}
    fp32, int8 = by["onnx"], by["onnx-int8"]
    checks = {
        "int8_raw_vs_fp32_raw": (
            best_raw(int8) / best_raw(fp32),
            INT8_RAW_SPEEDUP,
        ),
        "int8_end_to_end_images_per_s": (int8["index"]["images_per_s"], INT8_END_TO_END),
        "r1_loss_int8_vs_fp32": (fp32["recall@1"] - int8["recall@1"], -MAX_R1_LOSS),
    }
    for row in rows:
        share = row["index"]["images_per_s"] / best_raw(row)
        checks[f"{row['backend']}_end_to_end_vs_raw"] = (share, END_TO_END_SHARE)
    return {
        name: {"value": value, "target": abs(target), "met": value >= target}
        if target >= 0
        else {"value": value, "target": abs(target), "met": value <= abs(target)}
        for name, (value, target) in checks.items()
    }


def print_tables(document: dict) -> None:
    """The throughput table, the stage breakdown and the targets."""
    from rich.console import Console
    from rich.table import Table

    machine = document["machine"]
    console = Console()
    title = f"{machine['cpu']} ({machine['cpu_cores']} cores; {machine['int8_instructions']})" + (
        " — quick run" if document["quick"] else ""
    )
    table = Table(title=title)
    columns = ("backend", "layout", "raw images/s", "index images/s", "index / best raw", "R@1")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for row in document["results"]:
        layouts = [(LAYOUT_NAMES[row["batch_threads"] > 1], row)]
        if "one_batch_at_a_time" in row:
            layouts.append((LAYOUT_NAMES[False], row["one_batch_at_a_time"]))
        for number, (layout, measured) in enumerate(layouts):
            e2e = measured["index"]["images_per_s"]
            table.add_row(
                row["backend"] if number == 0 else "",
                layout,
                f"{measured['raw_images_per_s']:.1f}",
                f"{e2e:.1f}",
                f"{e2e / best_raw(row):.2f}",
                f"{row['recall@1']:.4f}" if "recall@1" in row and number == 0 else "",
            )
    console.print(table)
    stages = document["stages_ms_per_image"]
    breakdown = Table(title="serial cost per image, one core (ms)")
    for column in ("decode", "resize", "normalise", "Annoy build"):
        breakdown.add_column(column, justify="right")
    keys = ("decode_ms", "resize_ms", "normalise_ms", "annoy_build_ms")
    breakdown.add_row(*(f"{stages[key]:.3f}" for key in keys))
    console.print(breakdown)
    goals = Table(title="targets")
    for column in ("target", "measured", "needed", "met"):
        goals.add_column(column)
    for name, check in document["targets"].items():
        goals.add_row(name, f"{check['value']:.3f}", f"{check['target']:.3f}", str(check["met"]))
    console.print(goals)
    flags = [flag for flag in machine["cpu_flags"] if flag.startswith(("avx", "amx"))]
    console.print(f"CPU flags (AVX/AMX): {' '.join(flags)}", highlight=False)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables; write (and return) the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Checkpoint (default: the built-in model).")
    parser.add_argument("--int8-export", type=Path, default=None, help="Use this INT8 export.")
    parser.add_argument("--quick", action="store_true", help="A few hundred images, 1 s timings.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="[default: histoseek's plan]")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="Per raw measurement.")
    parser.add_argument(
        "--turns",
        type=int,
        default=TURNS,
        help="Raw figures and index runs per layout, taken in turn; medians are reported.",
    )
    parser.add_argument("--calibration-images", type=int, default=192)
    parser.add_argument("--out", type=Path, default=None, help="JSON output file.")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error(f"--turns must be 1 or more, not {args.turns} (medians of no figures)")
    document = run(args)
    out = args.out or RESULTS / ("cpu_int8_quick.json" if args.quick else "cpu_int8.json")
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print_tables(document)
    print(f"wrote {out}")
    return document


if __name__ == "__main__":
    main()
