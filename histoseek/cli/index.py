"""`histoseek index`: embed a folder of images and build an Annoy index of them."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import embedding_options, model_option, output_option
from histoseek.index.defaults import DEFAULT_INDEX_DIR, DEFAULT_SEED, DEFAULT_TREES


@click.command("index")
@click.argument("directory", type=click.Path(path_type=Path))
@model_option()
@output_option(
    "index_dir",
    default=DEFAULT_INDEX_DIR,
    help="Index folder (query looks for ./histoseek-index by default).",
)
@click.option(
    "--trees",
    type=click.IntRange(min=1),
    default=DEFAULT_TREES,
    show_default=True,
    help="Annoy trees: more give better recall, bigger files and slower builds.",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Annoy build seed.")
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable file instead of skipping."
)
@embedding_options()
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an index of another folder or model at -o (and re-embed every image).",
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
    trees,
    seed,
    strict,
    backend,
    exported,
    device,
    batch_size,
    workers,
    overwrite,
    wait,
):
    """Embed every image under DIRECTORY and build an Annoy index of them.

    Re-running it on the same folder embeds only new or changed files.
    """
    from rich.console import Console

    from histoseek.data.folder import display_path
    from histoseek.embedder import load_image_embedder
    from histoseek.index.build import build_index
    from histoseek.report.progress import progress_bar

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    notify = console.print
    embedder = load_image_embedder(
        model_path, backend, device, exported, batch_size, workers, notify=notify
    )
    with progress_bar("embedding") as progress:
        report = build_index(
            directory,
            index_dir,
            embedder,
            trees=trees,
            seed=seed,
            strict=strict,
            overwrite=overwrite,
            wait=wait,
            progress=progress,
            notify=notify,
        )
    shown = display_path(report.index_dir)
    console.print(
        f"indexed {report.items} image(s) into {shown} in {report.seconds:.1f} s: "
        f"{report.embedded} embedded, {report.reused} reused, {report.dropped} dropped; "
        f"{trees} trees; backend {report.backend}"
    )
    if report.skipped:
        console.print(
            f"skipped {len(report.skipped)} unreadable file(s); the list is in {shown}/skipped.txt"
        )
