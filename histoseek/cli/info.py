"""`histoseek info`: a model's architecture, parameters and FLOPs, and what this machine runs."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from histoseek.cli.options import image_size_option, model_option
from histoseek.errors import HistoseekError
from histoseek.model.defaults import (
    BACKBONE_NAMES,
    DEFAULT_BACKBONE,
    DEFAULT_DIM,
    DEFAULT_GD_CONFIG,
)

#: The options that describe an untrained architecture instead of naming a model.
ARCHITECTURE_OPTIONS = ("backbone", "gd_config", "dim", "classes")
BUILTIN_LABEL = (
    "builtin (ImageNet EfficientNet-Lite0, square-rooted average pooling; used without --model)"
)
DESCRIBED_LABEL = "described architecture, untrained (random weights)"


@click.command()
@model_option()
@click.option(
    "--backbone",
    type=click.Choice(BACKBONE_NAMES),
    default=DEFAULT_BACKBONE,
    show_default=True,
    help="Describe an untrained architecture with this backbone instead.",
)
@click.option(
    "--gd-config",
    default=DEFAULT_GD_CONFIG,
    show_default=True,
    help="Global descriptors of the described architecture (S=SPoC, M=MAC, G=GeM).",
)
@click.option(
    "--dim",
    type=click.IntRange(min=1),
    default=DEFAULT_DIM,
    show_default=True,
    help="Embedding size of the described architecture.",
)
@click.option(
    "--classes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Classes of the described architecture's auxiliary classifier (0: none).",
)
@image_size_option(help="Input size for the FLOP count.")
@click.pass_context
def info(
    ctx: click.Context,
    model_path: Path | None,
    backbone: str,
    gd_config: str,
    dim: int,
    classes: int,
    image_size: int,
) -> None:
    """Show a model's parameters and FLOPs, the backends available here, device and cache.

    The model is --model, else the built-in model; --backbone, --gd-config, --dim or
    --classes describe an untrained architecture instead.
    """
    described = [
        name
        for name in ARCHITECTURE_OPTIONS
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    ]
    if model_path is not None and described:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in described)
        raise HistoseekError(
            f"{flags} describe an untrained architecture; they do not apply with --model"
        )

    from rich.console import Console
    from rich.text import Text

    from histoseek.inference.availability import auto_device, backend_statuses
    from histoseek.inference.exported import cache_dir, cached_files
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import BUILTIN_MODEL, load_model, model_fingerprint
    from histoseek.model.summary import summarize
    from histoseek.report.environment import cache_summary, environment_table
    from histoseek.report.tables import model_table

    if described:
        config = ModelConfig(backbone=backbone, gd_config=gd_config, dim=dim, num_classes=classes)
        model, class_names, label, fingerprint = build_model(config), [], DESCRIBED_LABEL, None
    else:
        model, class_names, reference = load_model(model_path)
        label = BUILTIN_LABEL if reference == BUILTIN_MODEL else reference
        fingerprint = model_fingerprint(model)
    console = Console()
    console.print(
        model_table(model.config, summarize(model, image_size), label, class_names, fingerprint)
    )
    try:
        cache = cache_summary(cache_dir(), cached_files()) + " — see `histoseek cache`"
    except HistoseekError as error:
        # The cache only saves exporting again: what it holds is the least of what info shows.
        cache = Text("✗ ", style="red") + Text(str(error))
    console.print(environment_table(backend_statuses(), auto_device(), cache))
