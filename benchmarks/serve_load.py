"""Service load benchmark: `histoseek serve` answering 1, 4 and 16 concurrent clients.

    python benchmarks/serve_load.py [--items 100000] [--clients 1,4,16] [--requests 700]
        [--backend auto] [--batch-window-ms 5] [--batch-size 32] [--quick] [--out FILE.json]

Index: the real crc-polyps5 tiles' embeddings by the built-in model (cached by, and imported
from, benchmarks/index_search.py) plus vectors sampled from their density (its DensitySampler)
up to --items, written as a histoseek index with histoseek's own Annoy build and manifest
(cached in benchmarks/results/). The real items point at their tiles; the sampled ones have no
files (label "sampled").

Server: `python -m histoseek serve` in its own process on 127.0.0.1 (a free port), the model
loaded once. Clients: threads on this machine, each with its own keep-alive connection, all
released at once; each sends its share of --requests uploads of 224 px crc-polyps5 tiles
(k = 10) at each concurrency level; the clients share the CPU with the server. Reported per
level: p50 and p99 latency, requests/s, errors (anything but 200; must be 0), and where the
server's time went (mean decode, embed including the wait for a batch, and search). The
server's resident memory (RSS, from /proc) is read after a warm-up at the highest concurrency
and again after every
level, over at least 2,000 requests in the full run. `--quick` (a 5,000-item index from 300
real tiles, 48 requests per level) checks that it all runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
from index_search import DATA, RESULTS, DensitySampler, benchmark_images, model_embeddings
from machine import machine_record
from rich.console import Console
from rich.table import Table

from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_dir
from histoseek.index.annoy_index import build_annoy
from histoseek.index.defaults import DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.items import IndexItem
from histoseek.index.manifest import (
    ANNOY_NAME,
    EMBEDDINGS_NAME,
    ITEMS_NAME,
    Manifest,
    write_manifest,
)
from histoseek.index.search import open_index
from histoseek.model.cgd import builtin_model
from histoseek.model.checkpoint import BUILTIN_MODEL, model_fingerprint

K = 10
STARTUP_TIMEOUT_S = 600
SERVING = re.compile(r"at (http://127\.0\.0\.1:\d+/)")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def benchmark_index(paths: list[Path], size: int, trees: int, batch_size: int) -> Path:
    """A histoseek index of the real tiles' embeddings plus density samples, `size` items."""
    model = builtin_model()
    fingerprint = model_fingerprint(model)
    real = model_embeddings(paths, model, "builtin", batch_size, RESULTS)
    if len(real) != len(paths):
        raise HistoseekError(f"only {len(real)} of the {len(paths)} benchmark tiles could be read")
    real = real[:size]
    index_dir = RESULTS / f"serve-index-{size}-real{len(real)}-trees{trees}"
    if index_dir.is_dir():
        try:
            if open_index(index_dir).manifest.model_fingerprint == fingerprint:
                return index_dir
        except HistoseekError:
            pass
        shutil.rmtree(index_dir)  # another model's, or damaged: built again
    sampler = DensitySampler(real, bandwidth=0.5, rank=256)
    sampled = size - len(real)
    vectors = np.concatenate([real, sampler.sample(sampled, seed=1000)]).astype(np.float32)
    source = (DATA if DATA.is_dir() else RESULTS / "synthetic").resolve()
    items = []
    for path in paths[: len(real)]:
        info = path.stat()
        key = path.resolve().relative_to(source).as_posix()
        items.append(IndexItem(key, path.parent.name, 224, 224, info.st_size, info.st_mtime_ns))
    items += [IndexItem(f"sampled/{i:06d}.png", "sampled", 0, 0, 0, 0) for i in range(sampled)]
    manifest = Manifest(
        source_dir=str(source),
        model_reference=BUILTIN_MODEL,
        model_fingerprint=fingerprint,
        model_config=model.config.to_dict(),
        backend="benchmarks/serve_load.py: real embeddings plus density samples",
        dim=model.config.dim,
        trees=trees,
        seed=DEFAULT_SEED,
        items=size,
        skipped=0,
    )
    with atomic_dir(index_dir) as tmp:
        np.save(tmp / EMBEDDINGS_NAME, vectors)
        with open(tmp / ITEMS_NAME, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(asdict(item)) + "\n" for item in items)
        build_annoy(vectors, trees, DEFAULT_SEED, tmp / ANNOY_NAME)
        write_manifest(tmp, manifest)
    return index_dir


class Server:
    """`histoseek serve` in a child process on 127.0.0.1, its notes kept for the report."""

    def __init__(self, index_dir: Path, backend: str, window_ms: float, batch_size: int):
        command = [
            sys.executable,
            "-m",
            "histoseek",
            "serve",
            "--index",
            str(index_dir),
            "--port",
            "0",
            "--backend",
            backend,
            "--batch-window-ms",
            str(window_ms),
            "--batch-size",
            str(batch_size),
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.notes: list[str] = []
        self.url = self._wait_for_url()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for line in self.process.stderr:
            self.notes.append(line.rstrip())
            found = SERVING.search(line)
            if found:
                return found.group(1)
            if time.monotonic() > deadline:
                break
        self.stop()
        raise HistoseekError("the server did not start:\n" + "\n".join(self.notes))

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.notes.append(line.rstrip())

    def rss_mb(self) -> float:
        """The server process's resident memory in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kilobytes = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        return round(kilobytes / 1024, 1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise HistoseekError(f"{url}healthz did not answer")


def run_level(url: str, uploads: list[bytes], clients: int, requests: int) -> dict:
    """`requests` uploads shared among `clients` threads released together; their latencies."""
    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    timings: list[dict] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as session:
            start.wait()
            for i in range(share[number]):
                data = uploads[(number * 7919 + i) % len(uploads)]
                sent = time.perf_counter()
                try:
                    response = session.post(
                        "/api/search",
                        files={"image": ("tile.jpg", data, "image/jpeg")},
                        data={"k": str(K)},
                    )
                    if response.status_code == 200:
                        timings.append(response.json()["timings"])
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")
                latencies[number].append(time.perf_counter() - sent)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    every = np.concatenate([np.asarray(times) for times in latencies]) * 1e3
    return {
        "clients": clients,
        "requests": int(len(every)),
        "p50_ms": round(float(np.percentile(every, 50)), 2),
        "p99_ms": round(float(np.percentile(every, 99)), 2),
        "mean_ms": round(float(every.mean()), 2),
        "requests_per_s": round(len(every) / wall, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "server_mean_ms": {
            part: round(float(np.mean([timing[f"{part}_ms"] for timing in timings])), 2)
            for part in ("decode", "embed", "search", "total")
        },
    }


def _table(document: dict) -> Table:
    server = document["server"]
    table = Table(
        title=f"histoseek serve: {document['index']['items']:,}-item index, {server['backend']}, "
        f"window {server['batch_window_ms']} ms, batch ≤ {server['batch_size']}, k = {K}"
    )
    columns = ("clients", "requests", "p50 ms", "p99 ms", "mean ms", "requests/s", "errors")
    for column in (*columns, "server ms: decode + embed + search"):
        table.add_column(column, justify="right")
    for level in document["levels"]:
        table.add_row(
            str(level["clients"]),
            str(level["requests"]),
            f"{level['p50_ms']:.1f}",
            f"{level['p99_ms']:.1f}",
            f"{level['mean_ms']:.1f}",
            f"{level['requests_per_s']:.1f}",
            str(level["errors"]),
            " + ".join(
                f"{level['server_mean_ms'][part]:.1f}" for part in ("decode", "embed", "search")
            ),
        )
    return table


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its table and write its JSON; returns the document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None, help="Index size [100000; quick 5000].")
    parser.add_argument("--clients", type=_ints, default=[1, 4, 16])
    parser.add_argument(
        "--requests", type=int, default=None, help="Requests per level [700; quick 48]."
    )
    parser.add_argument("--images", type=int, default=None, help="Real tiles [all; quick 300].")
    parser.add_argument("--trees", type=int, default=DEFAULT_TREES)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="A small index and few requests.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    items = args.items or (5_000 if args.quick else 100_000)
    requests = args.requests or (48 if args.quick else 700)
    images = args.images or (300 if args.quick else None)
    out = args.out or RESULTS / ("serve_load_quick.json" if args.quick else "serve_load.json")

    console = Console(width=150)
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = benchmark_images(images, RESULTS)
    started = time.perf_counter()
    index_dir = benchmark_index(paths, items, args.trees, args.batch_size)
    console.print(f"index {index_dir} ready in {time.perf_counter() - started:.0f} s")
    uploads = [path.read_bytes() for path in paths[:200]]

    server = Server(index_dir, args.backend, args.batch_window_ms, args.batch_size)
    try:
        wait_until_healthy(server.url)
        info = httpx.get(server.url + "api/info", timeout=30).json()
        # Warm-up, not reported, at the highest concurrency: the server's request threads (and
        # their memory) exist from here on, so growth after it would be a leak.
        busiest = max(args.clients)
        run_level(server.url, uploads, busiest, 8 * busiest)
        rss_before = server.rss_mb()
        levels, served = [], 0
        for clients in args.clients:
            level = run_level(server.url, uploads, clients, requests)
            served += level["requests"]
            level["rss_mb_after"] = server.rss_mb()
            levels.append(level)
            console.print(
                f"{clients} client(s): p50 {level['p50_ms']} ms, {level['requests_per_s']} req/s, "
                f"{level['errors']} error(s)",
                highlight=False,
            )
        rss_after = server.rss_mb()
    finally:
        server.stop()
    document = {
        "machine": machine_record(),
        "index": {
            "path": str(index_dir),
            "items": info["items"],
            "real_items": len(paths),
            "trees": args.trees,
        },
        "server": {
            "backend": info["backend"],
            "batch_window_ms": args.batch_window_ms,
            "batch_size": args.batch_size,
            "host": "127.0.0.1",
        },
        "query": {"upload": "224 px crc-polyps5 JPEG tiles", "k": K},
        "levels": levels,
        "rss_mb": {"before": rss_before, "after": rss_after, "requests_between": served},
    }
    console.print(_table(document))
    console.print(
        f"server RSS {rss_before} MiB after warm-up, {rss_after} MiB after {served:,} "
        f"more requests; errors: {sum(level['errors'] for level in levels)}",
        highlight=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {out}")
    return document


if __name__ == "__main__":
    main()
