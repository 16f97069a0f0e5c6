"""Whole-slide benchmark: tile throughput, indexing memory and time, slide-level retrieval.

    python benchmarks/wsi.py [--quick] [--out FILE.json]

1. Tiles/s read from a slide against the same tiles as PNG files, reading alone and embedded
   end to end (ONNX Runtime, histoseek's plan of the cores: on the CPU a batch per core, each
   thread reading its own): the slide must not be slower.
2. Peak RSS of `histoseek index` on a sparse 50,000 × 50,000 px slide written tile by tile
   (never whole in memory): it must stay under 2 GB.
3. Seconds for `histoseek index` on one slide holding 1 cm² of tissue at 0.5 µm/px (20,000 ×
   20,000 px, all tissue) with ONNX Runtime on this CPU.
4. Slide-level R@1 and mMV@5 on pseudo-slides ASSEMBLED from real kather2016 tiles (one slide
   per class and source image; the source image is the slide's group), one slide or group
   left out at a time, with the default aggregation rule (sum of best similarities) against
   the alternative (votes).

The synthetic slides of 1-3 are drawn by histoseek (not real tissue); only their sizes matter.
`--quick` shrinks every size so the whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from machine import machine_record
from PIL import Image
from rich.console import Console
from rich.table import Table

from histoseek.data.synth import render_tissue
from histoseek.slide.defaults import AGGREGATION_RULES, EXCLUDE_CHOICES
from histoseek.slide.pyramid import TILE_SIDE, TileAt, write_pyramidal_tiff, write_streamed_pyramid
from histoseek.slide.reader import open_slide
from histoseek.slide.tiling import read_tile, tissue_tiles

KATHER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kather2016"
KATHER_MPP = 0.495
KATHER_TILE = 150
RESULTS = Path(__file__).resolve().parent / "results"
SOURCE_TOKEN = re.compile(r"CRC-Prim-HE-\d+")
GLASS = 243
MPP = 0.5
RSS_LIMIT_GB = 2.0
#: Nearest tiles per query tile that rank slides, around the default (DEFAULT_TILE_K).
TILE_KS = (5, 10, 20)

FULL = {"throughput_side": 8192, "sparse_side": 50_000, "tissue_side": 20_000, "per_slide": 64}
QUICK = {"throughput_side": 2048, "sparse_side": 12_000, "tissue_side": 3000, "per_slide": 12}


def write_tiled_slide(path: Path, side: int, tile_at: TileAt) -> None:
    """A side × side pyramidal TIFF at MPP µm/px, written tile by tile (never whole in memory)."""
    description = "histoseek benchmark slide: synthetic, not real tissue"
    write_streamed_pyramid(path, side, tile_at, MPP, description)


def tissue_pool(count: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Synthetic stroma and mucosa tiles (TILE_SIDE² px) to fill tissue areas with."""
    rng = np.random.default_rng(seed)
    pool = []
    for number in range(count):
        tissue = ("stroma", "mucosa")[number % 2]
        pool.append(np.asarray(render_tissue(tissue, (TILE_SIDE, TILE_SIDE), rng)))
    return pool


def sparse_tile_source(side: int, pool: list[np.ndarray]) -> TileAt:
    """Mostly glass, with a few squares of tissue (about 2% of the slide)."""
    squares = [(0.1, 0.15, 0.06), (0.45, 0.4, 0.08), (0.75, 0.7, 0.05), (0.2, 0.8, 0.04)]
    squares = [(int(x * side), int(y * side), int(s * side)) for x, y, s in squares]
    glass = np.full((TILE_SIDE, TILE_SIDE, 3), GLASS, np.uint8)

    def tile_at(downsample: int, left: int, top: int) -> np.ndarray:
        x0, y0 = left * downsample, top * downsample
        x1, y1 = x0 + TILE_SIDE * downsample, y0 + TILE_SIDE * downsample
        for x, y, size in squares:
            if x < x1 and x0 < x + size and y < y1 and y0 < y + size:
                return pool[(left // TILE_SIDE * 7 + top // TILE_SIDE) % len(pool)]
        return glass

    return tile_at


def full_tile_source(pool: list[np.ndarray]) -> TileAt:
    """Tissue everywhere."""

    def tile_at(downsample: int, left: int, top: int) -> np.ndarray:
        return pool[(left // TILE_SIDE * 7 + top // TILE_SIDE * 3 + downsample) % len(pool)]

    return tile_at


def measure_throughput(scratch: Path, side: int) -> dict:
    """Tiles/s from a slide and from the same tiles as PNG files: read alone, and embedded."""
    from histoseek.embedder import load_image_embedder
    from histoseek.slide.sources import SlideTile

    path = scratch / "throughput.tif"
    write_tiled_slide(path, side, full_tile_source(tissue_pool()))
    with open_slide(path) as slide:
        tiles = tissue_tiles(slide, mpp=MPP)
    folder = scratch / "throughput_png"
    folder.mkdir()
    pngs = []
    with open_slide(path) as slide:
        for tile in tiles:
            pngs.append(folder / f"tile_{tile.x}_{tile.y}.png")
            read_tile(slide, tile).save(pngs[-1])
    sources = [SlideTile(path, tile) for tile in tiles]
    row: dict = {"slide_px": side, "tiles": len(tiles)}

    started = time.perf_counter()
    for source in sources:
        source.load()
    row["read_slide_tiles_per_s"] = round(len(tiles) / (time.perf_counter() - started), 1)
    started = time.perf_counter()
    for png in pngs:
        with Image.open(png) as image:
            image.convert("RGB")
    row["read_png_tiles_per_s"] = round(len(tiles) / (time.perf_counter() - started), 1)

    embedder = load_image_embedder(None, backend="onnx")  # histoseek's own plan of the cores
    embedder.embed_files(pngs[: embedder.batch_size])  # warm-up
    for name, items in (("png", pngs), ("slide", sources)):
        started = time.perf_counter()
        embedded = embedder.embed_files(items)
        seconds = time.perf_counter() - started
        assert not embedded.failed, f"{name}: {len(embedded.failed)} tile(s) unreadable"
        row[f"embed_{name}_tiles_per_s"] = round(len(items) / seconds, 1)
    row["backend"] = embedder.name
    row["workers"] = embedder.workers
    row["batch_threads"] = embedder.backend.batch_threads
    return row


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants now (shared pages counted twice)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0) for pid in tree)


def run_index(slide_folder: Path, index_dir: Path, *options: str) -> dict:
    """Seconds and peak memory of `histoseek index` in a process of its own: the largest single
    process (the kernel's maxrss) and the sum over it and its decoding workers (sampled)."""
    command = [sys.executable, "-m", "histoseek", "index", str(slide_folder), "-o", str(index_dir)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    peak_tree = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak_tree[0] = max(peak_tree[0], _tree_rss_bytes(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"histoseek index failed:\n{output}")
    items = (index_dir / "items.jsonl").read_text(encoding="utf-8").splitlines()
    return {
        "tiles": len(items),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
        "peak_tree_rss_gb": round(peak_tree[0] / 2**30, 3),
    }


def measure_memory(scratch: Path, side: int) -> dict:
    """Peak RSS of indexing one sparse side × side slide."""
    folder = scratch / "sparse"
    folder.mkdir()
    write_tiled_slide(folder / "sparse.tif", side, sparse_tile_source(side, tissue_pool()))
    run = run_index(folder, scratch / "sparse-index", "--backend", "onnx")
    return {"slide_px": side, **run, "under_limit": run["peak_tree_rss_gb"] < RSS_LIMIT_GB}


def measure_slide_seconds(scratch: Path, side: int) -> dict:
    """Seconds to index one all-tissue side × side slide at 0.5 µm/px, and per cm² of tissue."""
    folder = scratch / "tissue"
    folder.mkdir()
    write_tiled_slide(folder / "tissue.tif", side, full_tile_source(tissue_pool()))
    run = run_index(folder, scratch / "tissue-index", "--backend", "onnx")
    area_cm2 = (side * MPP * 1e-4) ** 2
    return {
        "slide_px": side,
        "tissue_cm2": round(area_cm2, 4),
        "tiles": run["tiles"],
        "seconds": run["seconds"],
        "seconds_per_cm2": round(run["seconds"] / area_cm2, 1),
    }


def assemble_slides(folder: Path, per_slide: int) -> list[Path]:
    """One pseudo-slide per kather2016 class and source image with at least 2 tiles: its
    first `per_slide` tiles side by side on glass, aligned with the tile grid (150 px at
    0.495 µm/px, so each index tile is one real tile). Written to folder/<class>/<source>.tif."""
    if not KATHER.is_dir():
        raise SystemExit(f"{KATHER} is absent: the slide-level retrieval needs kather2016")
    paths = []
    for class_folder in sorted(KATHER.iterdir()):
        if not class_folder.is_dir() or class_folder.name == "08_EMPTY":
            continue
        sources: dict[str, list[Path]] = defaultdict(list)
        for tile in sorted(class_folder.glob("*.tif")):
            match = SOURCE_TOKEN.search(tile.name)
            if match:
                sources[match.group()].append(tile)
        for source, tiles in sorted(sources.items()):
            tiles = tiles[:per_slide]
            if len(tiles) < 2:
                continue
            columns = math.ceil(math.sqrt(len(tiles)))
            rows = math.ceil(len(tiles) / columns)
            shape = ((rows + 2) * KATHER_TILE, (columns + 2) * KATHER_TILE, 3)
            rgb = np.full(shape, GLASS, np.uint8)
            for index, tile in enumerate(tiles):
                row, column = divmod(index, columns)
                y, x = (row + 1) * KATHER_TILE, (column + 1) * KATHER_TILE
                rgb[y : y + KATHER_TILE, x : x + KATHER_TILE] = np.asarray(
                    Image.open(tile).convert("RGB")
                )
            path = folder / class_folder.name / f"{source}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            description = f"pseudo-slide assembled from kather2016 {class_folder.name} {source}"
            write_pyramidal_tiff(path, rgb, description + ", not scanned", mpp=KATHER_MPP)
            paths.append(path)
    return paths


def measure_slide_retrieval(scratch: Path, per_slide: int) -> list[dict]:
    """Slide R@1 and mMV@5 on assembled kather2016 slides, for both rules and exclusions:
    one index of the slides (built-in model, ONNX Runtime), scored as `evaluate` scores it."""
    from histoseek.embedder import load_image_embedder
    from histoseek.index.build import build_index
    from histoseek.index.slides import TilingOptions
    from histoseek.index.store import load_index
    from histoseek.slide_evaluation import score_slide_tiles, slide_tiles_of_index

    folder = scratch / "assembled"
    slides = assemble_slides(folder, per_slide)
    embedder = load_image_embedder(None, backend="onnx")
    report = build_index(
        folder,
        scratch / "assembled-index",
        embedder,
        trees=1,
        tiling=TilingOptions(mpp=KATHER_MPP, patch_size=KATHER_TILE),
        group_regex=SOURCE_TOKEN.pattern,
    )
    tiles = slide_tiles_of_index(load_index(report.index_dir, in_memory=True))
    rows = []
    for exclude in EXCLUDE_CHOICES:
        for tile_k in TILE_KS:
            for rule in AGGREGATION_RULES:
                tile_scores, slide_scores, _ = score_slide_tiles(tiles, exclude, tile_k, rule)
                rows.append(
                    {
                        "exclude": exclude,
                        "tile_k": tile_k,
                        "rule": rule,
                        "slides": len(slides),
                        "scored": slide_scores.scored,
                        "tiles": len(tiles.slide_ids),
                        **{
                            f"slide_{name}": round(value, 4)
                            for name, value in slide_scores.metrics.items()
                        },
                        "tile_recall@1": round(tile_scores.metrics["recall@1"], 4),
                        "tile_mmv@5": round(tile_scores.metrics["mmv@5"], 4),
                    }
                )
    return rows


def print_tables(console: Console, results: dict) -> None:
    """Each measurement as a table."""
    for title, rows in results["measurements"].items():
        rows = rows if isinstance(rows, list) else [rows]
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(value) for value in row.values()))
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes: a few minutes.")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write.")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="histoseek-wsi-") as scratch_name:
        scratch = Path(scratch_name)
        measurements = {
            "throughput": measure_throughput(scratch, sizes["throughput_side"]),
            "slide retrieval (assembled kather2016)": measure_slide_retrieval(
                scratch, sizes["per_slide"]
            ),
            "indexing one slide of tissue": measure_slide_seconds(scratch, sizes["tissue_side"]),
            "indexing memory": measure_memory(scratch, sizes["sparse_side"]),
        }
    results = {
        "quick": args.quick,
        "machine": machine_record(),
        "sizes": sizes,
        "measurements": measurements,
    }
    console = Console(width=max(160, Console().width))
    print_tables(console, results)
    out = args.out or RESULTS / f"wsi{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
