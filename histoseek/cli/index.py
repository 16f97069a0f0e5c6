"""`histoseek index`: embed a folder of images and build an Annoy index of them."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import (
    embedding_options,
    group_regex_option,
    labels_option,
    max_pixels_option,
    model_option,
    output_option,
    seed_option,
    tiling_options,
    tta_option,
)
from histoseek.index.defaults import DEFAULT_INDEX_DIR, DEFAULT_SEED, DEFAULT_TREES


@click.command("index")
@click.argument("directory", type=click.Path(path_type=Path))
@model_option()
@output_option(
    "index_dir",
    default=DEFAULT_INDEX_DIR,
    help="Index folder (query looks for ./histoseek-index by default).",
)
@tiling_options()
@group_regex_option(
    help="Group slides and images by this regex on their path below DIRECTORY (its first "
    "group, else the whole match), e.g. a patient id [default for a slide: the slide]."
)
@labels_option()
@click.option(
    "--trees",
    type=click.IntRange(1, 2**31 - 1),  # Annoy counts trees in a C int
    default=DEFAULT_TREES,
    show_default=True,
    help="Annoy trees: more give better recall, bigger files and slower builds.",
)
@seed_option(DEFAULT_SEED, "Annoy build seed.")
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable file instead of skipping."
)
@embedding_options()
@max_pixels_option()
@tta_option()
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an index of another folder or model at -o.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="If another index run is writing -o, wait for it to finish instead of refusing.",
)
def index(
    directory,
    model_path,
    index_dir,
    mpp,
    slide_mpp,
    patch_size,
    min_tissue,
    group_regex,
    labels_csv,
    trees,
    seed,
    strict,
    backend,
    exported,
    device,
    batch_size,
    workers,
    max_pixels,
    tta,
    overwrite,
    wait,
):
    """Embed every slide and image under DIRECTORY and build an Annoy index of them.

    Slides (.svs, .ndpi, .mrxs, tiled .tif, ...) become their tissue tiles; other images stay
    one item each. Re-running it on the same folder embeds only new or changed slides and
    images, and a killed run keeps the slides it finished.
    """
    from rich.console import Console

    from histoseek.data.folder import display_path
    from histoseek.data.images import pixel_limit
    from histoseek.embedder import load_image_embedder
    from histoseek.index.build import build_index, check_index_request
    from histoseek.index.slides import TilingOptions
    from histoseek.report.progress import progress_bars

    # Markup off: paths may hold square brackets, which rich would read as styles.
    console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    notify = console.print
    tiling = TilingOptions(mpp, patch_size, min_tissue, slide_mpp)
    # Before the model loads, which may export it first (seconds).
    check_index_request(directory, index_dir, group_regex, labels_csv)
    embedder = load_image_embedder(
        model_path, backend, device, exported, batch_size, workers, notify=notify, tta=tta
    )
    # Slide tiles and plain patches are counted together, as images.
    bars = [("finding tissue", "slide"), ("embedding", "img")]
    with pixel_limit(max_pixels), progress_bars(bars) as (tissue_progress, progress):
        report = build_index(
            directory,
            index_dir,
            embedder,
            trees=trees,
            seed=seed,
            strict=strict,
            overwrite=overwrite,
            wait=wait,
            tiling=tiling,
            group_regex=group_regex,
            labels_csv=labels_csv,
            progress=progress,
            tissue_progress=tissue_progress,
            notify=notify,
        )
    shown = display_path(report.index_dir)
    images = report.items - report.tiles
    what = [f"{report.tiles} tile(s) of {report.slides} slide(s)"] if report.slides else []
    if images or not report.slides:
        what.append(f"{images} image(s)")
    console.print(
        f"indexed {' and '.join(what)} into {shown} in {report.seconds:.1f} s: "
        f"{report.embedded} embedded, {report.reused} reused, {report.dropped} dropped; "
        f"{trees} trees; backend {report.backend}"
    )
    if report.slides:
        console.print(
            f"slides: {report.slides_embedded} embedded, {report.slides_reused} reused "
            f"(shards in {shown}/shards)"
        )
    if report.skipped:
        console.print(
            f"skipped {len(report.skipped)} unreadable file(s); the list is in {shown}/skipped.txt"
        )
