"""Shared option builders, so every command spells an option the same way.

Each builder takes the command's own `default=` and `help=` where commands differ (in the
manner of TIAToolbox's cli/common.py), and returns a Click decorator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histoseek.inference import BACKENDS, DEFAULT_BATCH_SIZE, DEVICES
from histoseek.model.defaults import DEFAULT_IMAGE_SIZE
from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_TISSUE, DEFAULT_PATCH_SIZE
from histoseek.slide.defaults import (
    DEFAULT_MAX_TILES,
    DEFAULT_MPP,
    DEFAULT_TILE_K,
    EXCLUDE_CHOICES,
    MPP_RANGE,
)
from histoseek.train_config import (
    BATCH_SIZE_BOUNDS,
    IMAGE_SIZE_BOUNDS,
    SEED_BOUNDS,
    WORKERS_BOUNDS,
    Bounds,
)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and infinity, which its bounds let through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def bounded_type(bounds: Bounds, kind: type[int] | type[float] = float) -> click.ParamType:
    """The Click type of a whole (`kind` int) or finite real number within `bounds`."""
    limits = (bounds.low, bounds.high, bounds.low_open, bounds.high_open)
    return click.IntRange(*limits) if kind is int else FiniteFloatRange(*limits)


def given_options(names: tuple[str, ...]) -> list[str]:
    """The options among `names` given on the command line, as spelled there."""
    context = click.get_current_context()
    return [
        "--" + name.replace("_csv", "").replace("_", "-")
        for name in names
        if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]


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
    default: int = DEFAULT_BATCH_SIZE,
    help: str = "Images per inference batch.",
) -> Decorator:
    """`--batch-size N` (BATCH_SIZE_BOUNDS)."""
    return click.option(
        "--batch-size",
        type=bounded_type(BATCH_SIZE_BOUNDS, int),
        default=default,
        show_default=True,
        help=help,
    )


def workers_option(
    help: str = "Image-decoding worker processes, feeding a model that runs one batch at a time "
    "[default: none for ONNX Runtime on the CPU, which runs a batch per core, each thread "
    "decoding its own; else one per 4 CPU cores when the model runs on the CPU, one per core "
    "(at most 8) on a GPU; 0 = decode in the main process].",
) -> Decorator:
    """`--workers N` (WORKERS_BOUNDS)."""
    return click.option(
        "--workers", type=bounded_type(WORKERS_BOUNDS, int), default=None, help=help
    )


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


def seed_option(default: int, help: str) -> Decorator:
    """`--seed`, in the one range every command takes (SEED_BOUNDS)."""
    return click.option(
        "--seed", type=bounded_type(SEED_BOUNDS, int), default=default, show_default=True, help=help
    )


def image_size_option(
    default: int | None = DEFAULT_IMAGE_SIZE,
    help: str = "Model input size in pixels (square).",
) -> Decorator:
    """`--image-size N`, in the sizes a model may have (IMAGE_SIZE_BOUNDS); a None default is
    stated in `help`."""
    return click.option(
        "--image-size",
        type=bounded_type(IMAGE_SIZE_BOUNDS, int),
        default=default,
        show_default=default is not None,
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


def patch_size_option(
    default: int = DEFAULT_PATCH_SIZE, help: str = "Side of a patch in pixels."
) -> Decorator:
    """`--patch-size N`."""
    return click.option(
        "--patch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def min_tissue_option(
    help: str = "Smallest fraction of tissue pixels a patch needs to be kept.",
) -> Decorator:
    """`--min-tissue F`: prepare's tissue mask, the same for patches and slide tiles."""
    return click.option(
        "--min-tissue",
        type=FiniteFloatRange(0, 1),
        default=DEFAULT_MIN_TISSUE,
        show_default=True,
        help=help,
    )


def group_regex_option(
    help: str = "Group images by this regex on their relative path (its first group, else the "
    "whole match), e.g. a patient id.",
) -> Decorator:
    """`--group-regex REGEX`; an empty one is refused (it finds no group in any path)."""

    def refuse_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value == "":
            raise click.BadParameter("an empty regex finds no group in any path")
        return value

    return click.option("--group-regex", default=None, help=help, callback=refuse_empty)


def _mpp_type() -> FiniteFloatRange:
    return FiniteFloatRange(*MPP_RANGE)


def mpp_option(
    help: str = "Microns per pixel that slide tiles are read at (0.5 is about a 20x objective).",
) -> Decorator:
    """`--mpp F`: the target resolution of slide tiles."""
    return click.option(
        "--mpp", type=_mpp_type(), default=DEFAULT_MPP, show_default=True, help=help
    )


def slide_mpp_option(
    help: str = "Microns per pixel of the slides whose files record none (they are skipped "
    "without it); a recorded value always wins.",
) -> Decorator:
    """`--slide-mpp F`."""
    return click.option("--slide-mpp", type=_mpp_type(), default=None, help=help)


def labels_option(
    help: str = "CSV with columns slide,label,group giving slides their label and patient "
    "(group) [default: label = parent folder, group = --group-regex or the slide].",
) -> Decorator:
    """`--labels CSV`."""
    return click.option(
        "--labels",
        "labels_csv",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def tiling_options(
    patch_help: str = "Side in pixels of a slide tile as read (and of a patch's grid cell).",
) -> Decorator:
    """The options of every command that cuts slides into tiles: mpp, slide mpp, patch size
    and minimum tissue."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            [
                mpp_option(),
                slide_mpp_option(),
                patch_size_option(help=patch_help),
                min_tissue_option(
                    help="Smallest fraction of tissue a slide tile needs to be kept."
                ),
            ]
        ):
            func = option(func)
        return func

    return apply


def tta_option(
    help: str = "Test-time augmentation: embed each image as the mean over its 8 flips and "
    "90° rotations (about 8× slower to embed).",
) -> Decorator:
    """`--tta`."""
    return click.option("--tta", is_flag=True, help=help)


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


def max_tiles_option() -> Decorator:
    """`--max-tiles N`: how many tissue tiles a whole slide queries with."""
    return click.option(
        "--max-tiles",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_TILES,
        show_default=True,
        help="Tissue tiles a whole-slide query embeds, spread evenly over its tissue.",
    )


def tile_k_option() -> Decorator:
    """`--tile-k N`: the nearest tiles of each query tile that rank slides and groups."""
    return click.option(
        "--tile-k",
        type=click.IntRange(min=1),
        default=DEFAULT_TILE_K,
        show_default=True,
        help="Nearest tiles of each query tile that count as evidence when slides or groups "
        "are ranked.",
    )


def exclude_option(default: str | None, help: str) -> Decorator:
    """`--exclude same-slide|same-group`."""
    return click.option(
        "--exclude",
        type=click.Choice(EXCLUDE_CHOICES),
        default=default,
        show_default=default is not None,
        help=help,
    )


def index_option() -> Decorator:
    """`--index DIR`: the index to search (default ./histoseek-index)."""
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Index folder [default: ./histoseek-index].",
    )


def index_model_option() -> Decorator:
    """`--model CKPT` for commands that search an index: the model it records, if moved."""
    return model_option(
        help="The index's model checkpoint, if it has moved [default: the one the index records]."
    )
