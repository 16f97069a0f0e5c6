"""Shared option builders, so every command spells an option the same way.

Each builder takes the command's own `default=` and `help=` where commands differ (in the
manner of TIAToolbox's cli/common.py), and returns a Click decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histoseek.inference import BACKENDS, DEFAULT_BATCH_SIZE, DEVICES
from histoseek.model.defaults import DEFAULT_IMAGE_SIZE
from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def model_option(
    help: str = "Trained checkpoint (model.pt) [default: the built-in ImageNet "
    "EfficientNet-Lite0].",
) -> Decorator:
    """`--model CKPT`."""
    return click.option(
        "--model", "model_path", type=click.Path(path_type=Path), default=None, help=help
    )


def backend_option() -> Decorator:
    """`--backend auto|torch|onnx|onnx-int8|tensorrt`."""
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="Inference backend; auto picks the fastest usable one and says which.",
    )


def exported_option() -> Decorator:
    """`--exported PATH`: an ONNX model or TensorRT engine to run instead of the checkpoint."""
    return click.option(
        "--exported",
        type=click.Path(path_type=Path),
        default=None,
        help="ONNX model (*.int8.onnx: INT8) or TensorRT engine exported from the model "
        "[default: model.int8.onnx / model.onnx / model.engine beside the checkpoint].",
    )


def device_option(
    help: str = "Where to run the model; auto picks CUDA when available.",
) -> Decorator:
    """`--device auto|cpu|cuda`."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=help
    )


def batch_size_option(
    default: int = DEFAULT_BATCH_SIZE, help: str = "Images per inference batch."
) -> Decorator:
    """`--batch-size N`."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def workers_option(
    help: str = "Image-decoding worker processes [default: one per 4 CPU cores when the model "
    "runs on the CPU, else one per core, at most 8; 0 = decode in the main process].",
) -> Decorator:
    """`--workers N`."""
    return click.option("--workers", type=click.IntRange(min=0), default=None, help=help)


def output_option(
    dest: str = "output",
    default: Path | None = None,
    required: bool = False,
    help: str = "Output folder.",
) -> Decorator:
    """`-o/--output PATH`."""
    return click.option(
        "-o",
        "--output",
        dest,
        type=click.Path(path_type=Path),
        default=default,
        required=required,
        show_default=default is not None,
        help=help,
    )


def overwrite_option(help: str = "Replace existing output instead of refusing.") -> Decorator:
    """`--overwrite`."""
    return click.option("--overwrite", is_flag=True, help=help)


def image_size_option(
    default: int = DEFAULT_IMAGE_SIZE, help: str = "Model input size in pixels (square)."
) -> Decorator:
    """`--image-size N`."""
    return click.option(
        "--image-size",
        type=click.IntRange(min=32),
        default=default,
        show_default=True,
        help=help,
    )


def max_pixels_option(
    help: str = "Largest image (width × height) to decode; larger ones are skipped as "
    "unreadable, with the reason.",
) -> Decorator:
    """`--max-pixels N`: the decompression-bomb limit, checked from the header before decoding."""
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help=help,
    )


def embedding_options(batch_size: int = DEFAULT_BATCH_SIZE) -> Decorator:
    """The options of every command that embeds images: backend, export, device, batching."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            [
                backend_option(),
                exported_option(),
                device_option(),
                batch_size_option(batch_size),
                workers_option(),
            ]
        ):
            func = option(func)
        return func

    return apply
