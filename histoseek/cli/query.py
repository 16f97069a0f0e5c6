"""`histoseek query`: the most similar indexed patches to each query image."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from histoseek.cli.options import embedding_options


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--index",
    "index_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Index folder [default: ./histoseek-index].",
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Results per query image.",
)
@click.option(
    "--search-k",
    type=click.IntRange(min=1),
    default=None,
    help="Annoy candidates to inspect per query: more is slower and finds more of the true "
    "nearest [default: 10000, or k × trees if more].",
)
@click.option("--exact", is_flag=True, help="Exact search over the stored embeddings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a gallery page.")
@click.option(
    "--sheet", "sheet_path", type=click.Path(path_type=Path), help="Write a contact sheet PNG."
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The index's model checkpoint, if it has moved [default: the one the index records].",
)
@embedding_options()
def query(
    images,
    index_dir,
    k,
    search_k,
    exact,
    as_json,
    html_path,
    sheet_path,
    model_path,
    backend,
    exported,
    device,
    batch_size,
    workers,
):
    """Find the K most similar indexed patches to each IMAGE (a folder: every image in it)."""
    import json

    from rich.console import Console

    from histoseek.embedder import embedder_for_model
    from histoseek.index.search import (
        collect_query_images,
        load_index_model,
        open_index,
        search_images,
    )
    from histoseek.report.progress import progress_bar
    from histoseek.report.results import print_results, results_document

    opened = open_index(index_dir)
    paths = collect_query_images(images)
    notes = Console(stderr=True, highlight=False, soft_wrap=True)
    network, class_names, reference = load_index_model(opened, model_path)
    embedder = embedder_for_model(
        network, reference, class_names, backend, device, exported, batch_size, workers, notes.print
    )
    if k > len(opened.items):
        notes.print(f"note: the index holds only {len(opened.items)} images; showing all of them")
    with progress_bar("embedding queries", enabled=sys.stderr.isatty()) as progress:
        results = search_images(
            opened, embedder, paths, k, search_k=search_k, exact=exact, progress=progress
        )
    if html_path is not None:
        from histoseek.report.gallery import write_gallery

        write_gallery(html_path, results)
    if sheet_path is not None:
        from histoseek.report.sheet import write_sheet

        write_sheet(sheet_path, results)
    if as_json:
        click.echo(json.dumps(results_document(opened, results), indent=2))
    else:
        print_results(Console(highlight=False), results)
    for path, what in ((html_path, "gallery"), (sheet_path, "contact sheet")):
        if path is not None:
            notes.print(f"wrote the {what} to {path}")
