"""The built-in model against plain pooling of the same ImageNet EfficientNet-Lite0 trunk.

Rows: the built-in model (square-rooted average pooling; histoseek.model.cgd.builtin_model),
the CGD head through fixed random projections (SPoC, MAC and GeM each projected 1280 → 512 by
the seed-0 initialisation: the built-in model before this benchmark), plain average pooling
(1280-d) and plain GeM (p = 3, 1280-d), each L2-normalised, each with and without test-time
augmentation (--tta).

Sets: kather2016 leave-one-out with neighbours from the query's own source image excluded
(`CRC-Prim-HE-\\d+`), a synthetic set drawn by `histoseek synth` (5 classes × 40,
leave-one-out) and, with --polyps-train, crc-polyps5/train leave-one-out (never its test
split). Every row is scored by `histoseek.evaluate.evaluate`, the code behind `histoseek
evaluate`; all rows of one set and TTA setting share one pass through the trunk.

    python benchmarks/builtin_pooling.py [--polyps-train] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import machine_record
from rich.console import Console
from rich.table import Table

from histoseek.data.synth import write_synthetic_set
from histoseek.evaluate import check_evaluation_set, evaluate
from histoseek.inference.embed_files import EmbeddedFiles, embed_files
from histoseek.model.cgd import CGD, ModelConfig, build_model, builtin_model
from histoseek.model.descriptors import GeM

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
KATHER_GROUPS = r"CRC-Prim-HE-\d+"


class AllDescriptors:
    """An Embedder giving every compared descriptor of an image from one trunk pass, each part
    L2-normalised, side by side (TTA's mean over views then stays a per-part mean)."""

    def __init__(self, builtin: CGD, random_head: CGD):
        self.builtin, self.random_head = builtin.eval(), random_head.eval()
        self.gem = GeM()
        trunk_channels = 1280
        self.parts = {
            "built-in model": builtin.config.dim,
            "former built-in (random projections)": random_head.config.dim,
            "plain average pooling": trunk_channels,
            "plain GeM": trunk_channels,
        }
        self.dim = sum(self.parts.values())
        self.name = "torch (cpu), all descriptors"
        self.batch_threads = 1

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Every descriptor of an NCHW batch, concatenated in `parts` order."""
        batch = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        feature_map = self.builtin.trunk(batch)
        parts = [
            self.builtin.describe(feature_map)[0],
            self.random_head.describe(feature_map)[0],
            F.normalize(feature_map.mean(dim=(-2, -1)), dim=-1),
            F.normalize(self.gem(feature_map), dim=-1),
        ]
        return torch.cat(parts, dim=-1).float().numpy()


class SharedPass:
    """Embeds a folder's files once with AllDescriptors (with or without TTA) and caches it."""

    def __init__(self, embedder: AllDescriptors, config: ModelConfig, tta: bool, workers: int):
        self.embedder, self.config, self.tta, self.workers = embedder, config, tta, workers
        self.cache: dict[tuple[Path, ...], EmbeddedFiles] = {}

    def embed(self, paths: Sequence[Path]) -> EmbeddedFiles:
        key = tuple(paths)
        if key not in self.cache:
            self.cache[key] = embed_files(
                self.embedder, self.config, paths, 32, self.workers, tta=self.tta
            )
        return self.cache[key]


class DescriptorView:
    """One descriptor's columns of a SharedPass, shaped like an ImageEmbedder for evaluate()."""

    def __init__(self, shared: SharedPass, start: int, stop: int):
        self.shared, self.start, self.stop = shared, start, stop

    def embed_files(self, paths: Sequence[Path], progress=None) -> EmbeddedFiles:
        embedded = self.shared.embed(paths)
        part = embedded.embeddings[:, self.start : self.stop]
        part = part / np.linalg.norm(part, axis=1, keepdims=True)
        return EmbeddedFiles(
            part.astype(np.float32), embedded.indices, embedded.failed, embedded.stored_sizes
        )


def compare(
    sets: dict[str, tuple[Path, str | None]], image_size: int, workers: int, console: Console
) -> list[dict]:
    """Score every descriptor on every set, with and without TTA."""
    builtin = builtin_model()
    random_head = build_model(ModelConfig(), weights="none", seed=0)
    embedder = AllDescriptors(builtin, random_head)
    # The trunk is fully convolutional; only the preprocessing depends on the size.
    preprocessing = ModelConfig(image_size=image_size)
    rows = []
    for set_name, (folder, group_regex) in sets.items():
        for tta in (False, True):
            started = time.perf_counter()
            shared = SharedPass(embedder, preprocessing, tta, workers)
            evaluation_set = check_evaluation_set(folder, None, group_regex)
            start = 0
            for descriptor, width in embedder.parts.items():
                view = DescriptorView(shared, start, start + width)
                result = evaluate(view, evaluation_set)
                start += width
                rows.append(
                    {
                        "set": set_name,
                        "descriptor": descriptor,
                        "dim": width,
                        "tta": tta,
                        "images": result.gallery_size,
                        "protocol": result.protocol,
                        **result.metrics,
                    }
                )
            console.print(
                f"{set_name}, tta {tta}: {time.perf_counter() - started:.0f} s "
                f"(one trunk pass shared by {len(embedder.parts)} descriptors)"
            )
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the comparison, print the table and write its JSON; returns the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kather", type=Path, default=DATA / "kather2016")
    parser.add_argument(
        "--polyps-train",
        action="store_true",
        help="also crc-polyps5/train leave-one-out (2,000 images; where the built-in "
        "descriptor was chosen; about 10× the time of the default sets)",
    )
    parser.add_argument("--synthetic-per-class", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "builtin_pooling.json")
    args = parser.parse_args(argv)
    console = Console(width=150)

    with tempfile.TemporaryDirectory(prefix="histoseek-synth-") as scratch:
        synthetic = Path(scratch) / "synthetic"
        write_synthetic_set(synthetic, per_class=args.synthetic_per_class, size=224, seed=0)
        sets: dict[str, tuple[Path, str | None]] = {}
        if args.kather.is_dir():
            sets["kather2016"] = (args.kather, KATHER_GROUPS)
        else:
            console.print(f"kather2016 not found at {args.kather}; synthetic set only")
        sets["synthetic"] = (synthetic, None)
        if args.polyps_train:
            sets["crc-polyps5/train"] = (DATA / "crc-polyps5" / "train", None)
        started = time.perf_counter()
        rows = compare(sets, args.image_size, args.workers, console)
        seconds = time.perf_counter() - started

    metric_names = ["recall@1", "recall@4", "map@5", "mmv@5", "precision@10"]
    table = Table(title="built-in model vs plain pooling (ImageNet EfficientNet-Lite0 trunk)")
    for column in ("set", "descriptor", "dim", "tta", *metric_names):
        table.add_column(column, justify="left" if column in ("set", "descriptor") else "right")
    for row in rows:
        table.add_row(
            row["set"],
            row["descriptor"],
            str(row["dim"]),
            "yes" if row["tta"] else "no",
            *(f"{row[m]:.3f}" for m in metric_names),
        )
    console.print(table)
    for name in sets:
        protocol = next(row["protocol"] for row in rows if row["set"] == name)
        console.print(f"{name}: {protocol}")
    console.print(f"total {seconds / 60:.1f} min")
    document = {
        "benchmark": "builtin_pooling",
        "machine": machine_record(),
        "image_size": args.image_size,
        "seconds": seconds,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
