"""`histoseek evaluate`: retrieval quality of a model by exact search."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import (
    embedding_options,
    exclude_option,
    given_options,
    group_regex_option,
    labels_option,
    max_pixels_option,
    max_tiles_option,
    model_option,
    tile_k_option,
    tiling_options,
    tta_option,
)
from histoseek.errors import HistoseekError
from histoseek.metrics_defaults import (
    DEFAULT_MAP_K,
    DEFAULT_PRECISION_K,
    DEFAULT_RECALL_KS,
    DEFAULT_VOTE_K,
)


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise HistoseekError(f"--recall-k takes whole numbers such as 1,2,4,8: {text!r}") from None
    if not ks or min(ks) < 1:
        raise HistoseekError(f"--recall-k values must be 1 or more: {text!r}")
    return ks


#: Options that only a gallery of slides takes.
SLIDE_OPTIONS = (
    "mpp",
    "slide_mpp",
    "patch_size",
    "min_tissue",
    "labels_csv",
    "exclude",
    "max_tiles",
    "tile_k",
)


@click.command()
@model_option()
@click.option(
    "--gallery",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Gallery folder.",
)
@click.option(
    "--query",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Query folder (default: leave-one-out within the gallery).",
)
@click.option(
    "--recall-k",
    default=",".join(map(str, DEFAULT_RECALL_KS)),
    show_default=True,
    help="Ks for Recall@K.",
)
@click.option("--map-k", type=click.IntRange(min=1), default=DEFAULT_MAP_K, show_default=True)
@click.option(
    "--vote-k",
    type=click.IntRange(min=1),
    default=DEFAULT_VOTE_K,
    show_default=True,
    help="Neighbours in the majority vote (mMV@K).",
)
@click.option(
    "--precision-k", type=click.IntRange(min=1), default=DEFAULT_PRECISION_K, show_default=True
)
@group_regex_option(
    help="Exclude neighbours whose file name shares this regex's "
    "match with the query's (e.g. the same slide or source image); for slides, the group "
    "(patient) is this regex on the slide's path, as in `index`.",
)
@tiling_options()
@labels_option()
@exclude_option(
    "same-slide",
    help="Slides: leave out the query's own slide, or its whole group (patient), when it "
    "queries the others.",
)
@max_tiles_option()
@tile_k_option()
@embedding_options()
@max_pixels_option()
@tta_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def evaluate(
    model_path,
    gallery,
    query,
    recall_k,
    map_k,
    vote_k,
    precision_k,
    group_regex,
    mpp,
    slide_mpp,
    patch_size,
    min_tissue,
    labels_csv,
    exclude,
    max_tiles,
    tile_k,
    backend,
    exported,
    device,
    batch_size,
    workers,
    max_pixels,
    tta,
    as_json,
):
    """Measure retrieval quality: Recall@K, mAP@k, mMV@k and precision@k by exact search.

    Queries with no gallery image of their own class to find are left out of every metric,
    with a note; a one-class gallery, or one in which no query can be scored, is refused.
    A gallery of slides is tiled as `index` tiles it; each slide queries the others (its own
    slide or patient left out), scored by tile and by the slides ranked for it.
    """
    from rich.console import Console

    from histoseek.data.folder import display_path
    from histoseek.data.images import pixel_limit
    from histoseek.embedder import load_image_embedder
    from histoseek.evaluate import check_evaluation_set
    from histoseek.evaluate import evaluate as run_evaluation
    from histoseek.report.progress import progress_bar
    from histoseek.report.tables import evaluation_table
    from histoseek.slide.folder import find_slides_and_images

    recall_ks = _parse_ks(recall_k)
    if find_slides_and_images(gallery).slides:
        if query is not None:
            raise HistoseekError(
                "a gallery of slides is evaluated one slide out at a time; --query is for "
                "folders of patches"
            )
        _evaluate_slides(
            gallery,
            model_path,
            (backend, device, exported, batch_size, workers, tta),
            (mpp, slide_mpp, patch_size, min_tissue, group_regex, labels_csv),
            (exclude, max_tiles, tile_k, recall_ks, map_k, vote_k, precision_k),
            max_pixels,
            as_json,
        )
        return
    given = given_options(SLIDE_OPTIONS)
    if given:
        raise HistoseekError(
            f"{given[0]} applies to a gallery of slides; {display_path(gallery)} holds none"
        )
    # Paths print as they are: markup off, so names with [brackets] are shown, not styled.
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    evaluation_set = check_evaluation_set(
        gallery, query, group_regex, notify=lambda line: notes.print(f"note: {line}")
    )
    with pixel_limit(max_pixels):
        embedder = load_image_embedder(
            model_path, backend, device, exported, batch_size, workers, tta=tta
        )
        with progress_bar("embedding", enabled=not as_json) as progress:
            result = run_evaluation(
                embedder, evaluation_set, recall_ks, map_k, vote_k, precision_k, progress
            )
    if result.left_out:
        notes.print(
            f"note: {result.left_out} of {result.query_size} queries have no gallery image of "
            "their own class to find and are left out of every metric"
        )
    _print_evaluation(embedder, result.to_dict(), as_json, evaluation_table)


def _evaluate_slides(gallery, model_path, embedding, tiling, scoring, max_pixels, as_json):
    """`evaluate` on a folder of slides: tile-level and slide-level metrics."""
    from rich.console import Console

    from histoseek.data.images import pixel_limit
    from histoseek.embedder import load_image_embedder
    from histoseek.index.slides import TilingOptions
    from histoseek.report.progress import progress_bars
    from histoseek.report.tables import slide_evaluation_table
    from histoseek.slide_evaluation import evaluate_slides

    backend, device, exported, batch_size, workers, tta = embedding
    mpp, slide_mpp, patch_size, min_tissue, group_regex, labels_csv = tiling
    exclude, max_tiles, tile_k, recall_ks, map_k, vote_k, precision_k = scoring
    options = TilingOptions(mpp, patch_size, min_tissue, slide_mpp)
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    with pixel_limit(max_pixels):
        embedder = load_image_embedder(
            model_path, backend, device, exported, batch_size, workers, notes.print, tta
        )
        bars = [("finding tissue", "slide"), ("embedding", "tile")]
        with progress_bars(bars, enabled=not as_json) as (tissue_progress, progress):
            result = evaluate_slides(
                embedder,
                gallery,
                options,
                group_regex,
                labels_csv,
                exclude,
                max_tiles,
                tile_k,
                recall_ks,
                map_k,
                vote_k,
                precision_k,
                progress=progress,
                tissue_progress=tissue_progress,
                notify=notes.print,
            )
    _print_evaluation(embedder, result.to_dict(), as_json, slide_evaluation_table)


def _print_evaluation(embedder, metrics: dict, as_json: bool, table) -> None:
    """The evaluation with the model and backend that produced it: JSON, or a `table`."""
    import json

    from rich.console import Console

    document = {"model": embedder.reference, "backend": embedder.name, "tta": embedder.tta}
    document.update(metrics)
    if as_json:
        click.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        Console().print(table(document))
