"""Generality: cross-validation on kather2016, grouped by source image (CRC-Prim-HE-NN).

The 264 tiles come from 10 source images. Those are dealt into --folds folds (group-aware,
stratified by class as far as the groups allow). For each fold a model is trained with a
recipe of benchmarks/quality_recipes.py on the other folds (no validation split: its last
epoch is kept, since a group-aware split of 8 source images would hold out whole classes),
and the held-out fold queries the other folds as the gallery, so neither the gallery nor the
training ever saw a query's source image. The built-in model is scored on the same splits.
Metrics are averaged over all queries of all folds.

    python benchmarks/kather_cv.py [--recipe NAME] [--folds 5] [--quick] [--out FILE.json]

--quick checks the machinery: 1 epoch, 3 folds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from quality_recipes import link_images, pick_recipes, recipe_embedder, train_recipe
from rich.console import Console
from rich.table import Table

from histoseek.data.folder import scan_labelled_folder
from histoseek.data.split import group_ids_from_regex, stratified_group_split
from histoseek.embedder import load_image_embedder
from histoseek.evaluate import check_evaluation_set, evaluate

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kather2016"
RESULTS = Path(__file__).resolve().parent / "results"
SOURCE_IMAGE = r"CRC-Prim-HE-\d+"
METRICS = ("recall@1", "recall@4", "map@5", "mmv@5", "precision@10")


def assign_folds(labels: Sequence[int], groups: Sequence[str], folds: int) -> list[int]:
    """A fold per image: whole source images per fold, class shares as even as groups allow."""
    if len(set(groups)) < folds:
        raise SystemExit(f"{len(set(groups))} source images cannot fill {folds} folds")
    return stratified_group_split(labels, groups, [1 / folds] * folds, seed=0)


def pooled(per_fold: list[dict]) -> dict[str, float]:
    """Metrics over all queries of all folds: the fold means weighted by their query counts."""
    total = sum(fold["queries"] for fold in per_fold)
    return {
        metric: sum(fold[metric] * fold["queries"] for fold in per_fold) / total
        for metric in METRICS
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the cross-validation, print the table and write its JSON; returns the document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="lite0", help="a recipe of quality_recipes.py")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 3 folds")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=RESULTS / "kather-cv")
    parser.add_argument("--out", type=Path, default=RESULTS / "kather_cv.json")
    args = parser.parse_args(argv)
    recipe = pick_recipes(args.recipe)[0]
    folds = min(args.folds, 3) if args.quick else args.folds
    if not args.data.is_dir():
        raise SystemExit(f"kather2016 not found at {args.data}: the benchmark needs it")
    console = Console(width=150)
    work = args.work_dir / ("quick" if args.quick else "full")
    if work.exists():
        shutil.rmtree(work)
    os.environ.setdefault("HISTOSEEK_CACHE", str(work / "onnx-cache"))

    images = scan_labelled_folder(args.data)
    groups = group_ids_from_regex([path.name for path in images.paths], SOURCE_IMAGE)
    assignment = assign_folds(images.labels, groups, folds)
    builtin = load_image_embedder(
        None, workers=args.workers, notify=lambda line: None, tta=recipe.tta
    )
    started = time.perf_counter()
    per_fold: dict[str, list[dict]] = {"trained": [], "built-in": []}
    for fold in range(folds):
        held_out = [i for i, f in enumerate(assignment) if f == fold]
        rest = [i for i, f in enumerate(assignment) if f != fold]
        fold_dir = work / f"fold{fold}"
        query_dir = link_images(images, held_out, fold_dir / "query")
        gallery_dir = link_images(images, rest, fold_dir / "gallery")
        sources = sorted({groups[i] for i in held_out})
        console.print(f"fold {fold + 1}/{folds}: queries from {', '.join(sources)}; training …")
        checkpoint, minutes = train_recipe(
            recipe, gallery_dir, None, fold_dir / "run", args.quick, args.workers
        )
        trained = recipe_embedder(checkpoint, recipe, args.workers)
        evaluation_set = check_evaluation_set(gallery_dir, query_dir)
        for name, embedder in (("trained", trained), ("built-in", builtin)):
            result = evaluate(embedder, evaluation_set)
            per_fold[name].append(
                {
                    "fold": fold,
                    "sources": sources,
                    # Queries of a class the gallery lacks cannot be scored; evaluate leaves
                    # them out of every metric.
                    "queries": result.query_size - result.left_out,
                    "left_out": result.left_out,
                    "gallery": result.gallery_size,
                    "query_classes": dict(
                        Counter(images.class_names[images.labels[i]] for i in held_out)
                    ),
                    "train_minutes": minutes if name == "trained" else 0.0,
                    **{metric: result.metrics[metric] for metric in METRICS},
                }
            )
            console.print(
                f"  {name}: R@1 {result.metrics['recall@1']:.3f}, "
                f"mMV@5 {result.metrics['mmv@5']:.3f} ({result.query_size} queries, "
                f"{result.left_out} of a class the gallery lacks left out)"
            )
    seconds = time.perf_counter() - started
    summary = {name: pooled(rows) for name, rows in per_fold.items()}

    table = Table(
        title=f"kather2016 {folds}-fold cross-validation by source image (recipe {recipe.name})"
    )
    table.add_column("model")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    for name, metrics in summary.items():
        table.add_row(name, *(f"{metrics[m]:.3f}" for m in METRICS))
    console.print(table)
    better = all(summary["trained"][m] > summary["built-in"][m] for m in ("recall@1", "mmv@5"))
    console.print(
        f"trained {'beats' if better else 'does NOT beat'} built-in on R@1 and mMV@5; "
        f"{'with' if recipe.tta else 'without'} --tta; total {seconds / 60:.1f} min"
    )
    document = {
        "benchmark": "kather_cv",
        "quick": args.quick,
        "recipe": recipe.name,
        "folds": folds,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "summary": summary,
        "trained_beats_builtin": better,
        "per_fold": per_fold,
        "seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
