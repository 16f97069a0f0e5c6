"""`histoseek evaluate`: retrieval quality of a model by exact search."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import embedding_options, max_pixels_option, model_option, tta_option
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
@click.option(
    "--group-regex",
    help="Exclude neighbours whose file name shares this regex's "
    "match with the query's (e.g. the same slide or source image).",
)
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
    """
    import json

    from rich.console import Console

    from histoseek.data.images import pixel_limit
    from histoseek.embedder import load_image_embedder
    from histoseek.evaluate import check_evaluation_set
    from histoseek.evaluate import evaluate as run_evaluation
    from histoseek.report.progress import progress_bar
    from histoseek.report.tables import evaluation_table

    recall_ks = _parse_ks(recall_k)
    evaluation_set = check_evaluation_set(gallery, query, group_regex)
    # Paths print as they are: markup off, so names with [brackets] are shown, not styled.
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
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
    document = {
        "model": embedder.reference,
        "backend": embedder.name,
        "tta": embedder.tta,
        **result.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        Console().print(evaluation_table(document))
