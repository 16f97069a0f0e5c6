"""`histoseek info`: a model's architecture, parameters and FLOPs."""

from __future__ import annotations

import click

from histoseek.cli.options import image_size_option, model_option
from histoseek.model.defaults import (
    BACKBONE_NAMES,
    DEFAULT_BACKBONE,
    DEFAULT_DIM,
    DEFAULT_GD_CONFIG,
)


@click.command()
@model_option()
@click.option(
    "--backbone", type=click.Choice(BACKBONE_NAMES), default=DEFAULT_BACKBONE, show_default=True
)
@click.option("--gd-config", default=DEFAULT_GD_CONFIG, show_default=True)
@click.option("--dim", type=click.IntRange(min=1), default=DEFAULT_DIM, show_default=True)
@click.option(
    "--classes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Classes of the auxiliary classifier (0: none).",
)
@image_size_option(help="Input size for the FLOP count.")
def info(model_path, backbone, gd_config, dim, classes, image_size):
    """Show a model's architecture, parameters and FLOPs (a checkpoint, or one described)."""
    from rich.console import Console

    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import load_model, model_fingerprint
    from histoseek.model.summary import summarize
    from histoseek.report.tables import model_table

    if model_path is not None:
        model, class_names, reference = load_model(model_path)
    else:
        config = ModelConfig(backbone=backbone, gd_config=gd_config, dim=dim, num_classes=classes)
        model, class_names, reference = build_model(config), [], "(described, untrained)"
    summary = summarize(model, image_size)
    Console().print(
        model_table(model.config, summary, reference, class_names, model_fingerprint(model))
    )
