"""`histoseek query`: the most similar indexed patches to each query image."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from histoseek.cli.options import (
    embedding_options,
    exclude_option,
    given_options,
    group_regex_option,
    index_model_option,
    index_option,
    max_pixels_option,
    max_tiles_option,
    overwrite_option,
    slide_mpp_option,
    tile_k_option,
    tta_option,
)
from histoseek.errors import HistoseekError
from histoseek.index.defaults import MAX_SEARCH_K
from histoseek.slide.defaults import ANSWER_LEVELS


def _check_outputs(outputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, output files that cannot or may not be written."""
    import os

    from histoseek.data.folder import display_path

    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise HistoseekError(f"--html and --sheet both name {display_path(outputs[0])}")
    for path in outputs:
        shown = display_path(path)
        if path.is_dir():
            raise HistoseekError(f"{shown} is a folder; name a file to write")
        if path.exists() and not overwrite:
            raise HistoseekError(f"{shown} already exists; pass --overwrite to replace it")
        folder = path.absolute().parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise HistoseekError(
                f"cannot write {shown}: {display_path(folder)} is not a writable folder"
            )


def _refuse_unused_options(paths: list[Path], region: str | None, by: str | None) -> None:
    """Refuse, before the model loads, slide options that none of these queries would use."""
    from histoseek.slide.reader import is_slide_file

    given = given_options(("max_tiles", "slide_mpp", "tile_k"))
    whole_slides = region is None and any(map(is_slide_file, paths))
    if "--max-tiles" in given and not whole_slides:
        read = "--region reads its region whole" if region else "no query here is a slide"
        raise HistoseekError(f"--max-tiles samples the tiles of a whole query slide; {read}")
    if "--slide-mpp" in given and region is None and not whole_slides:
        raise HistoseekError("--slide-mpp applies to query slides and --region; none was given")
    ranked = by in ("slide", "group") or (by is None and whole_slides)
    if "--tile-k" in given and not ranked:
        raise HistoseekError(
            "--tile-k sets the tiles that rank slides or groups (--by slide or group, the "
            "default for a whole slide); these queries are answered by tile"
        )


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--region",
    default=None,
    help="Query with this region of the one slide given: X,Y,W,H in level-0 pixels, read at "
    "the index's mpp and resized to the model's input.",
)
@click.option(
    "--by",
    type=click.Choice(ANSWER_LEVELS),
    default=None,
    help="Answer with tiles (and images), or with slides or groups (patients) ranked by "
    "their tiles' similarity to the query's [default: slide for a whole slide, else tile].",
)
@exclude_option(
    None,
    help="Leave out the indexed tiles of the query's own slide or group (patient): its entry "
    "in the index says which, else its file name and --group-regex.",
)
@max_tiles_option()
@tile_k_option()
@slide_mpp_option(
    help="Microns per pixel of a query slide whose file records none; a recorded value wins."
)
@group_regex_option(
    help="The group (patient) of a query that is not in the index: this regex's first group "
    "(else its whole match) on the query's path; for --exclude same-group."
)
@index_option()
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Results per query image; above the index size, every indexed image (with a note).",
)
@click.option(
    "--search-k",
    type=click.IntRange(1, MAX_SEARCH_K),
    default=None,
    help="Annoy candidates to inspect per query: more is slower and finds more of the true "
    "nearest [default: 10000, or k × trees if more].",
)
@click.option("--exact", is_flag=True, help="Exact search over the stored embeddings.")
@click.option(
    "--include-self",
    is_flag=True,
    help="Keep a query image that is itself in the index (same path or same bytes) among its "
    "own results [default: leave it out, with a note].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a gallery page.")
@click.option(
    "--sheet", "sheet_path", type=click.Path(path_type=Path), help="Write a contact sheet PNG."
)
@overwrite_option(help="Replace existing --html/--sheet files instead of refusing.")
@index_model_option()
@embedding_options()
@max_pixels_option(
    help="Largest image (width × height) to decode: a larger query image is refused, a larger "
    "result is shown as a grey thumbnail."
)
@tta_option(
    help="Embed the queries with test-time augmentation. Queries always follow the index: one "
    "built with --tta gets it without asking, one built without it refuses --tta."
)
def query(
    images,
    region,
    by,
    exclude,
    max_tiles,
    tile_k,
    slide_mpp,
    group_regex,
    index_dir,
    k,
    search_k,
    exact,
    include_self,
    as_json,
    html_path,
    sheet_path,
    overwrite,
    model_path,
    backend,
    exported,
    device,
    batch_size,
    workers,
    max_pixels,
    tta,
):
    """Find the K most similar indexed patches or tiles to each IMAGE, slide region or
    slide (a folder: every slide and image in it).

    A slide queries with a spread-out sample of its tissue tiles and is answered with the
    slides most like it; with --region, with that region. A query image that is itself in
    the index is left out of its own results.
    """
    import json

    from rich.console import Console

    from histoseek.data.folder import display_path
    from histoseek.data.images import pixel_limit
    from histoseek.index.search import (
        collect_query_images,
        open_index,
        prepare_queries,
        query_embedder,
        search_images,
    )
    from histoseek.index.slide_query import parse_region
    from histoseek.report.progress import progress_bar
    from histoseek.report.results import (
        print_results,
        results_document,
        search_header,
        search_notes,
    )

    # Paths print as they are: markup off, so names with [brackets] are shown, not styled.
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    with pixel_limit(max_pixels):
        box = None if region is None else parse_region(region)
        _check_outputs([path for path in (html_path, sheet_path) if path is not None], overwrite)
        opened = open_index(index_dir, notify=notes.print)
        paths = collect_query_images(images, notify=notes.print)
        _refuse_unused_options(paths, region, by)
        embedder = query_embedder(
            opened,
            model_path,
            tta,
            backend,
            device,
            exported,
            batch_size,
            workers,
            notes.print,
        )
        with progress_bar("reading query slides", enabled=sys.stderr.isatty()) as progress:
            queries = prepare_queries(
                opened, paths, box, max_tiles, slide_mpp, progress, notes.print
            )
        with progress_bar("embedding queries", enabled=sys.stderr.isatty()) as progress:
            report = search_images(
                opened,
                embedder,
                queries,
                k,
                search_k=search_k,
                exact=exact,
                include_self=include_self,
                by=by,
                exclude=exclude,
                group_regex=group_regex,
                tile_k=tile_k,
                progress=progress,
            )
        if html_path is not None:
            from histoseek.report.gallery import write_gallery

            write_gallery(html_path, report)
        if sheet_path is not None:
            from histoseek.report.sheet import write_sheet

            write_sheet(sheet_path, report.results)
    if not as_json:
        notes.print(search_header(report))
    for note in search_notes(report):
        notes.print(note)
    if as_json:
        click.echo(json.dumps(results_document(report), indent=2, allow_nan=False))
    else:
        print_results(Console(highlight=False), report.results)
    if html_path is not None:
        url = html_path.resolve().as_uri()
        notes.print(f"wrote the gallery to {display_path(html_path)}: {url}")
    if sheet_path is not None:
        notes.print(f"wrote the contact sheet to {display_path(sheet_path)}")
