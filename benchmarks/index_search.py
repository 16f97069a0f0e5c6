"""Index benchmark: Annoy build, top-10 search time and recall at scale.

    python benchmarks/index_search.py [--sizes 10000,100000,1000000] [--dims 1536,384]
        [--trees 50] [--search-k 0,1000,3000,10000,30000] [--cache DIR] [--out FILE.json]

Embedding throughput per backend is measured by benchmarks/cpu_int8.py (CPU: torch, ONNX
Runtime FP32 and INT8, end to end through `histoseek index`) and inference_speed.py (GPU).

Vectors: real embeddings of the crc-polyps5 tiles (train + test, about 3,000) at each dimension
by the default CGD head on the ImageNet trunk, untrained (`build_model(ModelConfig(dim=d),
weights="imagenet", seed=0)`; at d = 1536 this was the former built-in model), on the fastest
backend, cached in `--cache` (benchmarks/results/). Larger sets add samples from a Gaussian
kernel density estimate of them: a random real embedding plus `--bandwidth` × Gaussian noise
shaped like the real embeddings' covariance (its top `--rank` principal components),
L2-normalised again. They are generated in chunks and streamed into Annoy, so the raw vectors
are never all held in memory; the exact top-10 (the recall reference) is kept up to date chunk
by chunk. Queries are fresh samples from the same density, not in the index.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from machine import machine_record
from rich.console import Console
from rich.table import Table

from histoseek.data.dataset import default_workers
from histoseek.data.folder import list_images
from histoseek.index.defaults import DEFAULT_SEED
from histoseek.inference.embed_files import embed_files
from histoseek.inference.select import create_embedder
from histoseek.model.cgd import CGD, ModelConfig, build_model
from histoseek.report.progress import progress_bar

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "crc-polyps5"
RESULTS = Path(__file__).resolve().parent / "results"
K = 10
CHUNK = 50_000


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def benchmark_images(count: int | None, scratch: Path) -> list[Path]:
    """The crc-polyps5 tiles, or synthetic patches where that set is absent."""
    if DATA.is_dir():
        paths = list_images(DATA)
    else:
        from histoseek.data.synth import write_synthetic_set

        out = scratch / "synthetic"
        if not out.is_dir():
            write_synthetic_set(out, per_class=400, size=224)
        paths = list_images(out)
    return paths[:count] if count else paths


def model_embeddings(
    paths: list[Path], model: CGD, name: str, batch_size: int, cache: Path
) -> np.ndarray:
    """Embeddings of `paths` by `model` (fastest backend), cached in `cache` under `name`."""
    cached = cache / f"crc-polyps5-{name}-{len(paths)}.npy"
    if not cached.is_file():
        embedder = create_embedder(model, "auto", "auto", notify=lambda message: None)
        with progress_bar(f"real tiles, {name}") as progress:
            result = embed_files(
                embedder, model.config, paths, batch_size, default_workers(), progress
            )
        np.save(cached, result.embeddings)
    return np.load(cached)


def real_embeddings(
    paths: list[Path], dims: list[int], batch_size: int, cache: Path
) -> dict[int, np.ndarray]:
    """Embeddings of `paths` at each dim by the default CGD head on the ImageNet trunk, untrained
    (its projections drawn with seed 0): how real embeddings of that size are spread."""
    return {
        dim: model_embeddings(
            paths,
            build_model(ModelConfig(dim=dim), weights="imagenet", seed=0).eval(),
            f"cgd-seed0-dim{dim}",
            batch_size,
            cache,
        )
        for dim in dims
    }


class DensitySampler:
    """Samples near real embeddings: e_i + bandwidth × N(0, Σ_rank), renormalised."""

    def __init__(self, real: np.ndarray, bandwidth: float, rank: int):
        self.real = real
        centered = real - real.mean(axis=0)
        _, singular, components = np.linalg.svd(centered, full_matrices=False)
        rank = min(rank, len(singular))
        scale = singular[:rank] / np.sqrt(len(real) - 1)
        self.basis = (components[:rank] * scale[:, None]).astype(np.float32)
        self.bandwidth = bandwidth

    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` unit vectors; the same seed gives the same vectors."""
        rng = np.random.default_rng(seed)
        sources = rng.integers(0, len(self.real), count)
        noise = rng.standard_normal((count, self.basis.shape[0]), dtype=np.float32) @ self.basis
        vectors = self.real[sources] + self.bandwidth * noise
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vector_chunks(real: np.ndarray, sampler: DensitySampler, size: int):
    """The benchmark set of `size` vectors in chunks: the real ones first, then samples."""
    yield real[:size]
    made, chunk_index = min(size, len(real)), 0
    while made < size:
        count = min(CHUNK, size - made)
        yield sampler.sample(count, seed=1000 + chunk_index)
        made, chunk_index = made + count, chunk_index + 1


def _merge_top(best_sims, best_ids, sims, offset):
    """Merge a chunk's similarities into the running exact top-K per query."""
    ids = np.arange(offset, offset + sims.shape[1])[None, :].repeat(len(sims), axis=0)
    all_sims = np.concatenate([best_sims, sims], axis=1)
    all_ids = np.concatenate([best_ids, ids], axis=1)
    top = np.argpartition(-all_sims, K - 1, axis=1)[:, :K]
    return np.take_along_axis(all_sims, top, 1), np.take_along_axis(all_ids, top, 1)


def measure_annoy(
    real: np.ndarray,
    size: int,
    trees: int,
    search_ks: list[int],
    queries: np.ndarray,
    sampler: DensitySampler,
) -> dict:
    """Build an index of `size` vectors (as `histoseek index` does) and time searches."""
    dim = real.shape[1]
    index = AnnoyIndex(dim, "angular")
    index.set_seed(DEFAULT_SEED)
    best_sims = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    add_seconds, offset = 0.0, 0
    held = [] if size <= 100_000 else None
    for chunk in vector_chunks(real, sampler, size):
        started = time.perf_counter()
        for row, vector in enumerate(chunk):
            index.add_item(offset + row, vector)
        add_seconds += time.perf_counter() - started
        best_sims, best_ids = _merge_top(best_sims, best_ids, queries @ chunk.T, offset)
        if held is not None:
            held.append(chunk)
        offset += len(chunk)
    started = time.perf_counter()
    index.build(trees, n_jobs=1)
    build_seconds = time.perf_counter() - started
    truth = [set(row) for row in best_ids.tolist()]
    top1 = float(np.mean(np.max(best_sims, axis=1)))

    searches = []
    for search_k in search_ks:
        latencies, hits = [], 0
        for query, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            found = index.get_nns_by_vector(query, K, search_k=search_k or -1)
            latencies.append(time.perf_counter() - started)
            hits += len(expected.intersection(found))
        searches.append(
            {
                "search_k": search_k or K * trees,
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
                f"recall@{K}": round(hits / (K * len(queries)), 4),
            }
        )
    result = {
        "dim": dim,
        "size": size,
        "trees": trees,
        "add_s": round(add_seconds, 2),
        "build_s": round(build_seconds, 2),
        "index_s": round(add_seconds + build_seconds, 2),
        "mean_top1_cosine_of_queries": round(top1, 4),
        "searches": searches,
    }
    if held is not None:
        data = np.concatenate(held)
        latencies = []
        for query in queries[:50]:
            started = time.perf_counter()
            similarities = data @ query
            np.argpartition(-similarities, K - 1)[:K]
            latencies.append(time.perf_counter() - started)
        result["exact_p50_ms"] = round(float(np.percentile(latencies, 50)) * 1e3, 3)
    del index
    return result


def _annoy_table(rows: list[dict]) -> Table:
    table = Table(title=f"Annoy: build and top-{K} search (single-threaded, like histoseek index)")
    for column in (
        "dim",
        "vectors",
        "trees",
        "index s",
        "search_k",
        "p50 ms",
        "p99 ms",
        f"recall@{K}",
        "exact p50 ms",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        for i, search in enumerate(row["searches"]):
            first = i == 0
            table.add_row(
                str(row["dim"]) if first else "",
                f"{row['size']:,}" if first else "",
                str(row["trees"]) if first else "",
                f"{row['index_s']:.1f}" if first else "",
                str(search["search_k"]),
                f"{search['p50_ms']:.2f}",
                f"{search['p99_ms']:.2f}",
                f"{search[f'recall@{K}']:.3f}",
                f"{row['exact_p50_ms']:.2f}" if first and "exact_p50_ms" in row else "",
            )
    return table


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print its table and write its JSON; returns what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=_ints, default=[1536, 384])
    parser.add_argument("--trees", type=_ints, default=[50])
    parser.add_argument(
        "--search-k",
        type=_ints,
        default=[0, 1_000, 3_000, 10_000, 30_000],
        help="Candidates per query (0: Annoy's default, k × trees).",
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bandwidth", type=float, default=0.5)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--images", type=int, default=None, help="Real tiles to embed (all).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--cache",
        type=Path,
        default=RESULTS,
        help="Folder for the real tiles' embeddings (and synthetic tiles where crc-polyps5 is "
        "absent), reused by later runs.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "index_search.json")
    args = parser.parse_args(argv)

    console = Console(width=150)
    for folder in (args.cache, args.out.parent):
        folder.mkdir(parents=True, exist_ok=True)
    paths = benchmark_images(args.images, args.cache)
    document = {
        "machine": machine_record(),
        "vectors": {
            "real": f"{len(paths)} tiles of {DATA.name if DATA.is_dir() else 'synthetic'}",
            "bandwidth": args.bandwidth,
            "rank": args.rank,
            "queries": args.queries,
        },
    }
    embeddings = real_embeddings(paths, args.dims, args.batch_size, args.cache)
    rows = []
    for dim in args.dims:
        real = embeddings[dim]
        sampler = DensitySampler(real, args.bandwidth, args.rank)
        queries = sampler.sample(args.queries, seed=7)
        for size in args.sizes:
            for trees in args.trees:
                started = time.perf_counter()
                row = measure_annoy(real, size, trees, args.search_k, queries, sampler)
                row["wall_s"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                best = max(row["searches"], key=lambda search: search[f"recall@{K}"])
                console.print(
                    f"dim {dim}, {size:,} vectors, {trees} trees: index {row['index_s']} s; "
                    f"best recall@{K} {best[f'recall@{K}']} at p50 {best['p50_ms']} ms",
                    highlight=False,
                )
                document["annoy"] = rows
                args.out.write_text(json.dumps(document, indent=2) + "\n")
    console.print(_annoy_table(rows))
    console.print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
