"""Generality: cross-validation on kather2016, grouped by source image (CRC-Prim-HE-NN).

The 264 tiles come from 10 source images. Those are dealt into --folds folds (group-aware,
stratified by class as far as the groups allow). For each fold a model is trained with each
recipe of benchmarks/quality_recipes.py asked for on the other folds (no validation split:
its last epoch is kept, since a group-aware split of 8 source images would hold out whole
classes; recipes that differ only in evaluation share a training run), and the held-out fold
queries the other folds as the gallery, so neither the gallery nor the training ever saw a
query's source image. The built-in model is scored on the same splits, with and without
--tta as the recipes are. Metrics are averaged over all queries of all folds.

    python benchmarks/kather_cv.py [--recipes A,B] [--folds 5] [--quick] [--out FILE.json]

--quick checks the machinery: 1 epoch, 3 folds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from machine import machine_record
from quality_recipes import link_images, pick_recipes, recipe_embedder, train_recipe
from rich.console import Console
from rich.table import Table

from histoseek.data.folder import scan_labelled_folder
from histoseek.data.split import group_ids_from_regex, stratified_group_split
from histoseek.embedder import ImageEmbedder, load_image_embedder
from histoseek.evaluate import EvaluationSet, check_evaluation_set, evaluate

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
    parser.add_argument(
        "--recipes", default="lite0", help="comma-separated recipes of quality_recipes.py"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 3 folds")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=RESULTS / "kather-cv")
    parser.add_argument("--out", type=Path, default=RESULTS / "kather_cv.json")
    args = parser.parse_args(argv)
    recipes = pick_recipes(args.recipes)
    folds = min(args.folds, 3) if args.quick else args.folds
    if not args.data.is_dir():
        raise SystemExit(f"kather2016 not found at {args.data}: the benchmark needs it")
    console = Console(width=150)
    work = args.work_dir / ("quick" if args.quick else "full")
    if work.exists():
        shutil.rmtree(work)
    os.environ.setdefault("HISTOSEEK_CACHE", str(work / "onnx-cache"))

    images = scan_labelled_folder(args.data)
    groups = group_ids_from_regex(
        [path.name for path in images.paths],
        SOURCE_IMAGE,
        ids=[str(path.relative_to(images.root)) for path in images.paths],
    )
    assignment = assign_folds(images.labels, groups, folds)
    # The built-in model, embedded with or without --tta as each recipe is.
    builtins = {
        tta: load_image_embedder(None, workers=args.workers, notify=lambda line: None, tta=tta)
        for tta in sorted({recipe.tta for recipe in recipes})
    }
    started = time.perf_counter()
    per_fold: dict[str, list[dict]] = {}
    for fold in range(folds):
        held_out = [i for i, f in enumerate(assignment) if f == fold]
        rest = [i for i, f in enumerate(assignment) if f != fold]
        fold_dir = work / f"fold{fold}"
        query_dir = link_images(images, held_out, fold_dir / "query")
        gallery_dir = link_images(images, rest, fold_dir / "gallery")
        evaluation_set = check_evaluation_set(gallery_dir, query_dir)
        sources = sorted({groups[i] for i in held_out})
        console.print(f"fold {fold + 1}/{folds}: queries from {', '.join(sources)}")
        fold_facts = {
            "fold": fold,
            "sources": sources,
            "query_classes": dict(Counter(images.class_names[images.labels[i]] for i in held_out)),
        }

        models = [(builtin_name(tta), builtin, 0.0) for tta, builtin in builtins.items()]
        runs: dict[str, tuple[Path, float]] = {}
        for recipe in recipes:
            key = recipe.training_key()
            if key not in runs:
                console.print(f"  training {recipe.name} …")
                run_dir = fold_dir / f"run{len(runs)}"
                runs[key] = train_recipe(
                    recipe, gallery_dir, None, run_dir, args.quick, args.workers
                )
            checkpoint, minutes = runs[key]
            models.append((recipe.name, recipe_embedder(checkpoint, recipe, args.workers), minutes))
        for name, embedder, minutes in models:
            row = fold_row(embedder, evaluation_set, fold_facts, minutes)
            per_fold.setdefault(name, []).append(row)
            console.print(
                f"  {name}: R@1 {row['recall@1']:.3f}, mMV@5 {row['mmv@5']:.3f} "
                f"({row['queries']} queries, {row['left_out']} of a class the gallery lacks "
                "left out)"
            )
    seconds = time.perf_counter() - started
    summary = {name: pooled(rows) for name, rows in per_fold.items()}
    verdicts = {
        recipe.name: beats(summary[recipe.name], summary[builtin_name(recipe.tta)])
        for recipe in recipes
    }

    table = Table(title=f"kather2016 {folds}-fold cross-validation by source image")
    table.add_column("model")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    table.add_column("train min", justify="right")
    table.add_column("beats built-in", justify="center")
    for name, metrics in summary.items():
        minutes = sum(row["train_minutes"] for row in per_fold[name])
        table.add_row(
            name,
            *(f"{metrics[m]:.3f}" for m in METRICS),
            f"{minutes:.1f}" if minutes else "",
            {True: "yes", False: "no"}.get(verdicts.get(name), ""),
        )
    console.print(table)
    console.print(
        f"beats: R@1 and mMV@5 above the built-in model's, embedded with or without --tta as "
        f"the recipe is; total {seconds / 60:.1f} min"
    )
    document = {
        "benchmark": "kather_cv",
        "quick": args.quick,
        "recipes": [asdict(recipe) for recipe in recipes],
        "folds": folds,
        "machine": machine_record(),
        "summary": summary,
        "beats_builtin": verdicts,
        "per_fold": per_fold,
        "seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")
    return document


def fold_row(
    embedder: ImageEmbedder, evaluation_set: EvaluationSet, facts: dict, minutes: float
) -> dict:
    """One model's metrics on one fold, with the fold's facts."""
    result = evaluate(embedder, evaluation_set)
    return {
        **facts,
        # Queries of a class the gallery lacks cannot be scored; evaluate leaves them out of
        # every metric.
        "queries": result.query_size - result.left_out,
        "left_out": result.left_out,
        "gallery": result.gallery_size,
        "train_minutes": minutes,
        **{metric: result.metrics[metric] for metric in METRICS},
    }


def builtin_name(tta: bool) -> str:
    """The built-in model's row, with or without --tta."""
    return "built-in --tta" if tta else "built-in"


def beats(trained: dict[str, float], builtin: dict[str, float]) -> bool:
    """Whether a trained model's pooled R@1 and mMV@5 are both above the built-in model's."""
    return all(trained[metric] > builtin[metric] for metric in ("recall@1", "mmv@5"))


if __name__ == "__main__":
    main()
