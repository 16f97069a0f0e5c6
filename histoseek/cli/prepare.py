"""`histoseek prepare`: cut dataset downloads into labelled, split patch folders."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import (
    FiniteFloatRange,
    group_regex_option,
    max_pixels_option,
    min_tissue_option,
    output_option,
    overwrite_option,
    patch_size_option,
    seed_option,
    workers_option,
)
from histoseek.prepare.defaults import DEFAULT_SPLIT, LAYOUTS, STAIN_METHODS


@click.command()
@click.argument("layout", type=click.Choice(LAYOUTS))
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_option(required=True, help="Folder to create.")
@patch_size_option()
@click.option(
    "--stride", type=click.IntRange(min=1), default=None, help="[default: the patch size]"
)
@click.option(
    "--scale",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Resample each image by this factor before tiling (0.5 halves 40x to 20x).",
)
@min_tissue_option()
@click.option(
    "--split",
    default=None,
    help=f"train,val,test fractions [default: {DEFAULT_SPLIT}; BRACS keeps its official split].",
)
@seed_option(0, "Seed of the split.")
@group_regex_option(help="Group images by this regex on their path below SRC (e.g. a slide id).")
@click.option(
    "--normalize",
    type=click.Choice(STAIN_METHODS),
    default=None,
    help="Stain-normalise every image to --reference before tiling.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Image whose staining --normalize matches.",
)
@max_pixels_option(
    help="Largest image (width × height) to decode; a larger one stops the run before any "
    "work, naming the value that reads it."
)
@overwrite_option()
@workers_option()
def prepare(
    layout: str,
    src: Path,
    output: Path,
    patch_size: int,
    stride: int | None,
    scale: float,
    min_tissue: float,
    split: str | None,
    seed: int,
    group_regex: str | None,
    normalize: str | None,
    reference: Path | None,
    max_pixels: int,
    overwrite: bool,
    workers: int | None,
) -> None:
    """Cut BACH, BRACS, extended-CRC or any class-folder images into labelled patches.

    Writes OUTPUT/<split>/<class>/<source>_<x>_<y>.png, manifest.csv, skipped.txt and
    prepare.json; OUTPUT/train, OUTPUT/val and OUTPUT/test feed train, evaluate and index.
    """
    from rich.console import Console
    from rich.text import Text

    from histoseek.data.folder import display_path
    from histoseek.prepare.prepare_dataset import PrepareOptions, prepare_dataset
    from histoseek.report.progress import progress_bar
    from histoseek.report.tables import patch_count_table

    options = PrepareOptions(
        layout=layout,
        patch_size=patch_size,
        stride=stride,
        scale=scale,
        min_tissue=min_tissue,
        split=split,
        seed=seed,
        normalize=normalize,
        reference=reference,
        max_pixels=max_pixels,
        group_regex=group_regex,
    )
    # Markup off: paths and class names may hold square brackets.
    console = Console(markup=False)
    # Notes on stderr as every command's, each one line however long (logs are grepped).
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    def note(line: str) -> None:
        notes.print(Text.assemble(("note:", "yellow"), f" {line}"))

    with progress_bar("tiling source images", unit="image", transient=True) as progress:
        summary = prepare_dataset(
            src,
            output,
            options,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            notify=note,
        )
    for line in summary.notes:
        note(line)
    console.print(
        patch_count_table(summary.output, summary.splits, summary.classes, summary.counts)
    )
    console.print(
        f"{summary.sources} source image(s) → {summary.patches} patch(es); "
        f"{summary.sources_without_patches} image(s) gave no patch with enough tissue.",
        highlight=False,
    )
    if summary.skipped:
        console.print(
            Text.assemble(
                (f"skipped {len(summary.skipped)} unreadable image(s)", "yellow"),
                f", listed in {display_path(summary.output / 'skipped.txt')}",
            ),
            highlight=False,
        )
