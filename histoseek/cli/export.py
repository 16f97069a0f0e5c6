"""`histoseek export`: ONNX (FP32, INT8) and TensorRT exports, each checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import model_option, overwrite_option
from histoseek.errors import HistoseekError
from histoseek_export.defaults import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MAX_BATCH,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
)


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
    "This is the default when none of --onnx, --int8 and --trt is given.",
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
    "--int8",
    "int8_path",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[OUT.int8.onnx]",
    help="Write a static INT8 ONNX model for fast CPU inference, calibrated on your patches "
    "(default path: beside the checkpoint, model.int8.onnx; for the built-in model the cache).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of patches to calibrate --int8 on [default: the training folder the "
    "checkpoint records, if it still exists, else synthetic H&E-like patches].",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=None,
    help=f"Calibration images, spread over the classes [default: {DEFAULT_CALIBRATION_IMAGES}].",
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
    int8_path,
    calibration,
    calibration_images,
    parity_images,
    overwrite,
):
    """Export a model to ONNX (FP32 and/or INT8) and/or a TensorRT engine, each checked
    against PyTorch."""
    if engine_path is None and (fp16 is not None or max_batch is not None):
        raise HistoseekError("--fp16/--fp32 and --max-batch only apply with --trt")
    if int8_path is None and (calibration is not None or calibration_images is not None):
        raise HistoseekError("--calibration and --calibration-images only apply with --int8")
    from histoseek_export.checked_export import run_export

    run_export(
        model_path,
        onnx=onnx_path,
        trt=engine_path,
        int8=int8_path,
        calibration_dir=calibration,
        calibration_count=(
            DEFAULT_CALIBRATION_IMAGES if calibration_images is None else calibration_images
        ),
        opset=opset,
        dynamic_size=dynamic_size,
        fp16=fp16 is not False,
        max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        overwrite=overwrite,
        parity_dir=parity_images,
        notify=click.echo,
    )
