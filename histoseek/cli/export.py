"""`histoseek export`: ONNX and TensorRT exports, each checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import model_option, overwrite_option
from histoseek.errors import HistoseekError
from histoseek_export.defaults import DEFAULT_MAX_BATCH, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET


@click.command()
@model_option()
@click.option(
    "--onnx",
    "onnx_path",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[OUT.onnx]",
    help="Write an ONNX model (default path: beside the checkpoint, model.onnx). "
    "This is the default when neither --onnx nor --trt is given.",
)
@click.option(
    "--opset",
    type=click.IntRange(MIN_OPSET, MAX_OPSET),
    default=DEFAULT_OPSET,
    show_default=True,
    help="ONNX opset version.",
)
@click.option("--dynamic-size", is_flag=True, help="Let the ONNX model take any height and width.")
@click.option(
    "--trt",
    "engine_path",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[OUT.engine]",
    help="Also build a TensorRT engine (default path: the ONNX or checkpoint path with .engine).",
)
@click.option(
    "--fp16/--fp32",
    default=None,
    help="TensorRT precision; fp16 keeps pooling and normalisation in fp32 [default: fp16].",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help=f"Largest batch the TensorRT engine accepts [default: {DEFAULT_MAX_BATCH}].",
)
@click.option(
    "--parity-images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of image tiles for the parity check (default: synthetic H&E-like patches).",
)
@overwrite_option()
def export(
    model_path,
    onnx_path,
    opset,
    dynamic_size,
    engine_path,
    fp16,
    max_batch,
    parity_images,
    overwrite,
):
    """Export a model to ONNX and/or a TensorRT engine, each checked against PyTorch."""
    if engine_path is None and (fp16 is not None or max_batch is not None):
        raise HistoseekError("--fp16/--fp32 and --max-batch only apply with --trt")
    from histoseek_export.checked_export import run_export

    run_export(
        model_path,
        onnx=onnx_path,
        trt=engine_path,
        opset=opset,
        dynamic_size=dynamic_size,
        fp16=fp16 is not False,
        max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        overwrite=overwrite,
        parity_dir=parity_images,
        notify=click.echo,
    )
