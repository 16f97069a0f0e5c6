"""Levers that need no new training, scored on validation over the recipe search's kept runs.

For each kept run of `quality_recipes.py` (trained on its fit split), every setting below is
scored as the search scores recipes: R@1 and mMV@5 of the validation images querying the fit
images. The settings:

- query expansion: each query averaged with its k nearest gallery images (each weighted by
  its cosine similarity to the power α) and searched again;
- trunk interpolation towards ImageNet (as WiSE-FT does): every trunk weight
  (1 − t)·ImageNet + t·trained, the head as trained;
- the built-in model's embedding, weighted β, concatenated to the trained one (two trunks:
  counted as twice the built-in model's work, an upper bound);
- test-time views: the mean embedding over some of the image's 8 flips and rotations (the
  image and its mirror image; its four rotations; all eight, as `--tta` embeds), each view
  costing one embedding.

A setting is chosen only if its mean over the runs beats the runs' own mean by more than
--margin and it embeds within --max-embed-cost times the built-in model's work (the highest
such wins). --read-test then scores the choice once on crc-polyps5 test → train (all 2,000
train images as the gallery) with the first run's model.

    python benchmarks/quality_posthoc.py --recipes NAME,... [--work-dir DIR] [--read-test]

Embeddings are kept under WORK/posthoc, one file per model weights and folder, so a second
invocation (another run added, say) embeds only what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import machine_record
from quality_recipes import DATA, MAX_EMBED_COST, RESULTS, pick_recipes
from rich.console import Console
from rich.table import Table

from histoseek.data.folder import scan_labelled_folder
from histoseek.embedder import ImageEmbedder, embedder_for_model
from histoseek.inference.base import Embedder
from histoseek.inference.embed_files import dihedral_views
from histoseek.metrics import exact_neighbours, retrieval_metrics, selection_score
from histoseek.model.backbones import build_trunk
from histoseek.model.cgd import CGD, builtin_model
from histoseek.model.checkpoint import BUILTIN_MODEL, load_model, model_fingerprint

# Settings within this much of the runs' own mean are noise (about four of 422 queries).
MARGIN = 0.01
QUERY_EXPANSION = [(k, alpha) for k in (1, 2, 3, 5) for alpha in (0.0, 3.0)]
INTERPOLATION = (0.9, 0.8, 0.7, 0.6, 0.5)
CONCATENATION = (0.25, 0.5, 0.75, 1.0)
# Views by their place in dihedral_views: the rotations by 0-3 quarter turns, then the same of
# the mirror image.
VIEW_SETS = {"mirror": (0, 4), "rotations": (0, 1, 2, 3), "all eight": tuple(range(8))}


@dataclass(frozen=True)
class Embedded:
    """One folder's embeddings, labels and file names, in the folder's order."""

    vectors: np.ndarray
    labels: list[str]
    names: list[str]


@dataclass(frozen=True)
class Setting:
    """A lever at one value: its name in the table, its lever, and its cost to embed with."""

    name: str
    lever: str
    embed_cost: float


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def expand_queries(queries: np.ndarray, gallery: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Each query plus its k nearest gallery rows weighted by similarity^α, re-normalised."""
    neighbours = exact_neighbours(queries, gallery, k)
    weights = np.clip(neighbours.similarities, 0.0, None) ** alpha
    expanded = queries + (weights[..., None] * gallery[neighbours.indices]).sum(axis=1)
    return normalise(expanded.astype(np.float32))


def trunk_weights(network: CGD) -> tuple[dict, dict]:
    """(the ImageNet weights of the network's trunk, a copy of its own)."""
    imagenet = build_trunk(network.config.backbone, "imagenet").state_dict()
    return imagenet, {key: value.clone() for key, value in network.trunk.state_dict().items()}


def interpolated_trunk(network: CGD, imagenet: dict, trained: dict, t: float) -> CGD:
    """`network` with every floating-point trunk weight (1 − t)·ImageNet + t·trained."""
    network.trunk.load_state_dict(
        {
            key: t * value + (1 - t) * imagenet[key] if value.is_floating_point() else value
            for key, value in trained.items()
        }
    )
    return network


def score(queries: Embedded, gallery: Embedded, query_vectors: np.ndarray | None = None) -> dict:
    """R@K, mAP@5, mMV@5 and P@10 of the queries against the gallery (exact search)."""
    vectors = queries.vectors if query_vectors is None else query_vectors
    codes = {name: i for i, name in enumerate(sorted(set(gallery.labels) | set(queries.labels)))}
    gallery_codes = np.array([codes[label] for label in gallery.labels])
    query_codes = np.array([codes[label] for label in queries.labels])
    neighbours = exact_neighbours(vectors, gallery.vectors, 10)
    return retrieval_metrics(neighbours, query_codes, gallery_codes)


@dataclass
class OneView:
    """A backend that embeds one dihedral view of each image instead of the image."""

    backend: Embedder
    view: int

    def __post_init__(self) -> None:
        self.name, self.dim = self.backend.name, self.backend.dim
        self.precision, self.batch_threads = self.backend.precision, self.backend.batch_threads

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """The backend's embeddings of view `view` of every image."""
        return self.backend.embed_batch(dihedral_views(images)[self.view])


def mean_of_views(views: Sequence[Embedded]) -> np.ndarray:
    """The views' embeddings summed and re-normalised, as --tta embeds."""
    return normalise(np.sum([np.asarray(v.vectors, np.float64) for v in views], axis=0))


class EmbeddingStore:
    """Embeddings of a folder by a model, kept on disk by the model's weight fingerprint."""

    def __init__(self, root: Path, workers: int, backend: str = "auto"):
        self.root = root
        self.workers = workers
        self.backend = backend
        root.mkdir(parents=True, exist_ok=True)

    def embed(self, network: CGD, reference: str, folder: Path, view: int = 0) -> Embedded:
        """The folder's embeddings by `network` of dihedral view `view` (0: the images as
        they are), read back if made before (names checked)."""
        images = scan_labelled_folder(folder)
        names = [path.name for path in images.paths]
        tag = "" if view == 0 else f"-view{view}"
        path = self.root / f"{model_fingerprint(network)[:16]}-{folder.name}{tag}.npz"
        if path.is_file():
            kept = np.load(path)
            if list(kept["names"]) == names:
                return Embedded(kept["vectors"], list(kept["labels"]), names)
        embedder = self._embedder(network, reference)
        if view:
            embedder.backend = OneView(embedder.backend, view)
        result = embedder.embed_files(images.paths)
        if result.failed or len(result.indices) != len(names):
            raise SystemExit(f"could not read every image of {folder}")
        labels = [images.class_names[label] for label in images.labels]
        np.savez(path, vectors=result.embeddings, labels=np.array(labels), names=np.array(names))
        return Embedded(result.embeddings, labels, names)

    def _embedder(self, network: CGD, reference: str) -> ImageEmbedder:
        return embedder_for_model(
            network, reference, backend=self.backend, workers=self.workers, notify=lambda line: None
        )


def run_settings(
    run: Path, store: EmbeddingStore, fit_dir: Path, val_dir: Path, builtin: tuple[Embedded, ...]
) -> dict[str, dict]:
    """Every setting's validation metrics for one kept run (name → metrics)."""
    network, _, reference = load_model(run / "model.pt")
    fit, val = (store.embed(network, reference, folder) for folder in (fit_dir, val_dir))
    builtin_fit, builtin_val = builtin
    if builtin_fit.names != fit.names or builtin_val.names != val.names:
        raise SystemExit("the built-in model's embeddings are of other files than the run's")
    results = {"defaults": score(val, fit)}
    for k, alpha in QUERY_EXPANSION:
        results[f"query expansion k={k} α={alpha:g}"] = score(
            val, fit, expand_queries(val.vectors, fit.vectors, k, alpha)
        )
    for beta in CONCATENATION:
        joined_fit = Embedded(
            normalise(np.hstack([fit.vectors, beta * builtin_fit.vectors])), fit.labels, fit.names
        )
        joined_val = normalise(np.hstack([val.vectors, beta * builtin_val.vectors]))
        results[f"built-in concatenated β={beta:g}"] = score(val, joined_fit, joined_val)
    imagenet, trained = trunk_weights(network)
    for t in INTERPOLATION:
        mixed = interpolated_trunk(network, imagenet, trained, t)
        mixed_fit, mixed_val = (store.embed(mixed, reference, f) for f in (fit_dir, val_dir))
        results[f"trunk interpolated t={t:g}"] = score(mixed_val, mixed_fit)
    network.trunk.load_state_dict(trained)
    views = {
        v: [store.embed(network, reference, folder, v) for folder in (fit_dir, val_dir)]
        for v in sorted(set().union(*VIEW_SETS.values()))
    }
    for name, chosen in VIEW_SETS.items():
        view_fit = Embedded(mean_of_views([views[v][0] for v in chosen]), fit.labels, fit.names)
        view_val = mean_of_views([views[v][1] for v in chosen])
        results[f"views: {name}"] = score(val, view_fit, view_val)
    return results


def settings() -> list[Setting]:
    """Every setting scored, in table order (the defaults first)."""
    return [
        Setting("defaults", "none", 1.0),
        *(
            Setting(f"query expansion k={k} α={alpha:g}", "query expansion", 1.0)
            for k, alpha in QUERY_EXPANSION
        ),
        *(
            Setting(f"trunk interpolated t={t:g}", "trunk interpolation", 1.0)
            for t in INTERPOLATION
        ),
        *(
            Setting(f"built-in concatenated β={beta:g}", "concatenation", 2.0)
            for beta in CONCATENATION
        ),
        *(
            Setting(f"views: {name}", "test-time views", float(len(chosen)))
            for name, chosen in VIEW_SETS.items()
        ),
    ]


def choose(rows: list[dict], margin: float, max_cost: float) -> dict | None:
    """The best setting whose mean beats the defaults' by more than `margin` within the cost
    cap, or None (the defaults stay)."""
    baseline = next(row for row in rows if row["setting"] == "defaults")["mean_score"]
    winners = [
        row
        for row in rows
        if row["setting"] != "defaults"
        and row["mean_score"] > baseline + margin
        and row["embed_cost"] <= max_cost
    ]
    return max(winners, key=lambda row: row["mean_score"]) if winners else None


def read_test(
    choice: dict, run: Path, store: EmbeddingStore, gallery_dir: Path, test_dir: Path
) -> dict:
    """The chosen setting's test metrics: crc-polyps5 test → train with the run's model."""
    network, _, reference = load_model(run / "model.pt")
    name = choice["setting"]
    if name.startswith("trunk interpolated"):
        network = interpolated_trunk(network, *trunk_weights(network), choice["value"])
    gallery, test = (store.embed(network, reference, f) for f in (gallery_dir, test_dir))
    if name.startswith("query expansion"):
        k, alpha = choice["value"]
        return score(test, gallery, expand_queries(test.vectors, gallery.vectors, k, alpha))
    if name.startswith("views: "):
        chosen = VIEW_SETS[name.removeprefix("views: ")]
        gallery_views = [store.embed(network, reference, gallery_dir, v) for v in chosen]
        test_views = [store.embed(network, reference, test_dir, v) for v in chosen]
        joined = Embedded(mean_of_views(gallery_views), gallery.labels, gallery.names)
        return score(test, joined, mean_of_views(test_views))
    if name.startswith("built-in concatenated"):
        builtin = builtin_model()
        extra_gallery, extra_test = (
            store.embed(builtin, BUILTIN_MODEL, f) for f in (gallery_dir, test_dir)
        )
        beta = choice["value"]
        joined = Embedded(
            normalise(np.hstack([gallery.vectors, beta * extra_gallery.vectors])),
            gallery.labels,
            gallery.names,
        )
        return score(test, joined, normalise(np.hstack([test.vectors, beta * extra_test.vectors])))
    return score(test, gallery)


def setting_value(name: str) -> float | tuple[int, float] | None:
    """The lever's value a setting's name carries (k and α for query expansion)."""
    if name == "defaults":
        return None
    if name.startswith("views: "):
        return list(VIEW_SETS[name.removeprefix("views: ")])
    parts = dict(part.split("=") for part in name.split() if "=" in part)
    if "k" in parts:
        return int(parts["k"]), float(parts["α"])
    return float(next(iter(parts.values())))


def main(argv: Sequence[str] | None = None, console_width: int = 160) -> dict:
    """Score every setting over the named runs, print the table and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", required=True, help="comma-separated kept runs to score")
    parser.add_argument("--work-dir", type=Path, default=RESULTS / "quality-recipes")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--margin", type=float, default=MARGIN)
    parser.add_argument("--max-embed-cost", type=float, default=MAX_EMBED_COST)
    parser.add_argument(
        "--read-test",
        action="store_true",
        help="score the chosen setting once on crc-polyps5 test (first run's model)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="auto", help="as histoseek's --backend")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_posthoc.json")
    args = parser.parse_args(argv)
    names = [recipe.name for recipe in pick_recipes(args.recipes)]
    full = args.work_dir / "full"
    split = full / "split"
    runs = [full / "runs" / name for name in names]
    missing = [str(run) for run in runs if not (run / "model.pt").is_file()]
    if missing or not (split / "fit").is_dir():
        raise SystemExit(
            f"no kept run at {', '.join(missing) or split}: train them first with "
            "quality_recipes.py --skip-test --work-dir (the same folder)"
        )
    os.environ.setdefault("HISTOSEEK_CACHE", str(full / "onnx-cache"))
    console = Console(width=console_width)
    started = time.perf_counter()
    store = EmbeddingStore(args.work_dir / "posthoc", args.workers, args.backend)
    builtin = builtin_model()
    builtin_embedded = tuple(
        store.embed(builtin, BUILTIN_MODEL, split / part) for part in ("fit", "val")
    )
    per_run: dict[str, dict[str, dict]] = {}
    for name, run in zip(names, runs, strict=True):
        console.print(f"scoring {name} …")
        per_run[name] = run_settings(run, store, split / "fit", split / "val", builtin_embedded)

    rows = []
    for setting in settings():
        metrics = [per_run[name][setting.name] for name in names]
        rows.append(
            {
                "setting": setting.name,
                "lever": setting.lever,
                "value": setting_value(setting.name),
                "embed_cost": setting.embed_cost,
                "val": dict(zip(names, metrics, strict=True)),
                "mean_score": float(np.mean([selection_score(m) for m in metrics])),
            }
        )
    chosen = choose(rows, args.margin, args.max_embed_cost)
    if chosen is not None and args.read_test:
        chosen["test"] = read_test(chosen, runs[0], store, split / "gallery", args.data / "test")

    table = Table(title="levers after training, on validation (colour split; fit → val)")
    table.add_column("setting")
    for name in names:
        table.add_column(name.rsplit("-", 1)[-1] if "seed" in name else "seed 0", justify="right")
    for column in ("mean score", "vs defaults", "embed cost"):
        table.add_column(column, justify="right")
    baseline = rows[0]["mean_score"]
    for row in rows:
        cells = [f"{m['recall@1']:.3f} / {m['mmv@5']:.3f}" for m in (row["val"][n] for n in names)]
        label = f"[bold]{row['setting']}[/bold] (chosen)" if row is chosen else row["setting"]
        table.add_row(
            label,
            *cells,
            f"{row['mean_score']:.4f}",
            f"{row['mean_score'] - baseline:+.4f}",
            f"{row['embed_cost']:.2f}×",
        )
    console.print(table)
    verdict = (
        f"chosen: {chosen['setting']} (beats the defaults by more than {args.margin:g})"
        if chosen
        else f"no setting beats the defaults by more than {args.margin:g}: they stay"
    )
    if chosen and "test" in chosen:
        test = chosen["test"]
        verdict += f"; test R@1 {test['recall@1']:.3f}, mMV@5 {test['mmv@5']:.3f}"
    seconds = time.perf_counter() - started
    console.print(f"{verdict}; {seconds / 60:.1f} min")
    document = {
        "benchmark": "quality_posthoc",
        "machine": machine_record(),
        "runs": names,
        "margin": args.margin,
        "max_embed_cost": args.max_embed_cost,
        "rows": rows,
        "chosen": chosen["setting"] if chosen else None,
        "seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    console.print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
