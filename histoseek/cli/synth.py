"""`histoseek synth`: draw labelled synthetic H&E-like patches or slides (not real tissue)."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import overwrite_option, seed_option
from histoseek.slide.defaults import DEFAULT_SLIDE_SIZE, DEFAULT_SLIDES_PER_CLASS, SLIDE_CLASSES

DEFAULT_PER_CLASS = 20
DEFAULT_SIZE = 224


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--slides",
    is_flag=True,
    help="Write pyramidal whole-slide TIFFs (tissue pieces on glass, 0.5 µm/px) as "
    "OUT/<class>/synthetic_<class>_slide_*.tif instead of patches.",
)
@click.option(
    "--per-class",
    type=int,
    default=None,
    help=f"Images per class [default: {DEFAULT_PER_CLASS}; "
    f"{DEFAULT_SLIDES_PER_CLASS} with --slides].",
)
@click.option(
    "--size",
    type=int,
    default=None,
    help="Image width in pixels, and height unless --height is given "
    f"[default: {DEFAULT_SIZE}; {DEFAULT_SLIDE_SIZE[0]} with --slides].",
)
@click.option(
    "--height",
    type=int,
    default=None,
    help=f"Image height in pixels [default: --size; {DEFAULT_SLIDE_SIZE[1]} with --slides].",
)
@click.option(
    "--classes",
    default=None,
    help="Comma-separated classes [default: adipose,background,lymphocytes,mucosa,stroma; "
    f"{','.join(SLIDE_CLASSES)} with --slides].",
)
@seed_option(0, "Seed; same seed, same files.")
@overwrite_option()
def synth(
    out: Path,
    slides: bool,
    per_class: int | None,
    size: int | None,
    height: int | None,
    classes: str | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Generate synthetic H&E-like patches (not real tissue) as OUT/<class>/synthetic_*.png,
    or with --slides small pyramidal whole-slide TIFFs.

    The folder feeds train, evaluate and index directly; OUT/SYNTHETIC.md records the options.
    """
    from histoseek.data.folder import display_path

    names = None if classes is None else [name.strip() for name in classes.split(",")]

    def note(line: str) -> None:
        click.echo(f"note: {line}", err=True)

    if slides:
        from histoseek.report.progress import progress_bar
        from histoseek.slide.synth import SLIDE_MPP, write_synthetic_slides

        per_class = DEFAULT_SLIDES_PER_CLASS if per_class is None else per_class
        width = DEFAULT_SLIDE_SIZE[0] if size is None else size
        if height is None:
            height = DEFAULT_SLIDE_SIZE[1] if size is None else size
        with progress_bar("drawing slides", unit="slide", transient=True) as progress:
            written = write_synthetic_slides(
                out, per_class, seed, names, (width, height), overwrite, progress, notify=note
            )
        what, scale = "slides", f", {SLIDE_MPP} µm/px"
    else:
        from histoseek.data.synth import write_synthetic_set

        per_class = DEFAULT_PER_CLASS if per_class is None else per_class
        width = DEFAULT_SIZE if size is None else size
        height = width if height is None else height
        written = write_synthetic_set(
            out,
            per_class,
            width,
            seed=seed,
            classes=names,
            height=height,
            overwrite=overwrite,
            notify=note,
        )
        what, scale = "images", ""
    click.echo(
        f"Wrote {len(written)} synthetic {what} ({len(written) // per_class} classes x "
        f"{per_class}, {width}x{height} px{scale}, seed {seed}) to {display_path(out)}"
    )
