"""`histoseek synth`: draw a labelled synthetic H&E-like patch set (not real tissue)."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import overwrite_option


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--per-class",
    type=int,
    default=20,
    show_default=True,
    help="Images per class.",
)
@click.option(
    "--size",
    type=int,
    default=224,
    show_default=True,
    help="Image width in pixels (and height, unless --height is given).",
)
@click.option(
    "--height",
    type=int,
    default=None,
    help="Image height in pixels [default: --size].",
)
@click.option(
    "--classes",
    default=None,
    help="Comma-separated classes [default: adipose,background,lymphocytes,mucosa,stroma].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; same seed, same files.")
@overwrite_option()
def synth(
    out: Path,
    per_class: int,
    size: int,
    height: int | None,
    classes: str | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Generate synthetic H&E-like patches (not real tissue) as OUT/<class>/synthetic_*.png.

    The folder feeds train, evaluate and index directly; OUT/SYNTHETIC.md records the options.
    """
    from histoseek.data.folder import display_path
    from histoseek.data.synth import write_synthetic_set

    names = None if classes is None else [name.strip() for name in classes.split(",")]
    written = write_synthetic_set(
        out, per_class, size, seed=seed, classes=names, height=height, overwrite=overwrite
    )
    class_count = len(written) // per_class
    click.echo(
        f"Wrote {len(written)} synthetic images ({class_count} classes x {per_class}, "
        f"{size}x{height or size} px, seed {seed}) to {display_path(out)}"
    )
