"""`histoseek train`: train a CGD model (single process, or under torchrun)."""

from __future__ import annotations

from pathlib import Path

import click

from histoseek.cli.options import (
    Decorator,
    batch_size_option,
    bounded_type,
    device_option,
    given_options,
    group_regex_option,
    image_size_option,
    max_pixels_option,
    output_option,
    overwrite_option,
    seed_option,
    workers_option,
)
from histoseek.errors import HistoseekError
from histoseek.model.defaults import BACKBONE_NAMES
from histoseek.train_config import TRAIN_BOUNDS, TrainConfig

_TRAIN = TrainConfig(data_dir="", run_dir="")  # the defaults, stated once in TrainConfig


def _field_option(
    name: str,
    kind: type[int] | type[float] = float,
    help: str | None = None,
) -> Decorator:
    """The option `--name` for a numeric TrainConfig field: its TRAIN_BOUNDS range, its
    default."""
    return click.option(
        "--" + name.replace("_", "-"),
        type=bounded_type(TRAIN_BOUNDS[name], kind),
        default=getattr(_TRAIN, name),
        show_default=True,
        help=help,
    )


@click.command()
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@output_option("run_dir", help="Run folder.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option(
    "--backbone", type=click.Choice(BACKBONE_NAMES), default=_TRAIN.backbone, show_default=True
)
@click.option(
    "--weights",
    default=_TRAIN.weights,
    show_default=True,
    help="imagenet, none, or a PATH to a backbone state dict.",
)
@click.option(
    "--gd-config",
    default=_TRAIN.gd_config,
    show_default=True,
    help="Global descriptors in order: S=SPoC, M=MAC, G=GeM (first feeds the classifier).",
)
@_field_option("dim", int)
@image_size_option(
    _TRAIN.image_size,
    help="Model input size in pixels (square) [default: the backbone's native size: 240 for "
    "EfficientNet-Lite1, 224 for Lite0 and the ResNets, 260 for Lite2].",
)
@_field_option("epochs", int)
@batch_size_option(_TRAIN.batch_size, help="Training images per step (all processes together).")
@_field_option("m_per_class", int, help="Images per class in each batch.")
@_field_option("lr", help="Learning rate of the CGD layers.")
@_field_option(
    "backbone_lr_scale", help="Learning rate of the unfrozen backbone stages as a fraction of --lr."
)
@_field_option("weight_decay")
@_field_option("warmup_epochs")
@_field_option(
    "freeze_stages",
    int,
    help="Freeze this many backbone stages from the input side [default: 4 of "
    "an EfficientNet-Lite's 9, 2 of a ResNet's 5 (stem and layer1)].",
)
@_field_option("label_smoothing")
@_field_option("temperature")
@_field_option("margin", help="Triplet margin.")
@_field_option("crop_scale", help="Smallest area share of a random resized crop.")
@_field_option("stain_jitter", help="Strength of haematoxylin/eosin jitter, 0 (off) to 1.")
@_field_option(
    "blur",
    help="Largest standard deviation, in pixels of the model's input, of a Gaussian blur "
    "drawn for each training image (0: off), as focus differs between scans.",
)
@_field_option(
    "hsv_jitter",
    help="Strength of hue/saturation jitter, 0 (off) to 1: hue shifted by up to ±a tenth "
    "of a turn times this, saturation scaled by 1 ± this.",
)
@_field_option(
    "ema_epochs",
    help="Validate and keep a moving average of the weights over about this many epochs "
    "(0: the weights themselves).",
)
@click.option("--val-dir", type=click.Path(path_type=Path), help="Validation folder.")
@_field_option("val_fraction", help="Held-out share of DATA_DIR when there is no --val-dir.")
@group_regex_option(
    help="Regex whose match (or first group) in a file name is its "
    "group, e.g. a slide id; groups never straddle train and validation.",
)
@click.option(
    "--colour-groups",
    is_flag=True,
    help="With no patient or slide in the file names: hold out whole clusters of similar "
    "colour within each class, as stand-ins for patients, instead of single images.",
)
@seed_option(_TRAIN.seed, "Seed of the split, sampler, augmentation and initialisation.")
@device_option()
@click.option(
    "--amp/--no-amp", default=False, show_default=True, help="Mixed precision (CUDA only)."
)
@workers_option()
@max_pixels_option()
@overwrite_option()
def train(data_dir, run_dir, resume, overwrite, max_pixels, **options):
    """Train a CGD model on DATA_DIR (one sub-folder per class) into RUN_DIR.

    --resume RUN_DIR continues a run as it was configured; only DATA_DIR (if the folder
    moved), --epochs, --device and --workers may change.
    """
    import os

    from rich.console import Console

    from histoseek.data.images import pixel_limit
    from histoseek.report.progress import progress_bar
    from histoseek.train import resume_config
    from histoseek.train import train as run_training
    from histoseek.train.run_folder import hold_run_folder

    if resume is None and (data_dir is None or run_dir is None):
        raise HistoseekError("give DATA_DIR and -o RUN_DIR (or --resume RUN_DIR)")
    # --val-fraction has a default, so only the command line tells whether it was given; the
    # options the config tells apart (--group-regex, --colour-groups) prepare_splits refuses.
    if options["val_dir"] is not None and given_options(("val_fraction",)):
        raise HistoseekError(
            "--val-fraction holds out part of DATA_DIR; it has no use with --val-dir"
        )
    # Markup off: log lines carry paths, which may hold square brackets.
    console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    folder = resume if resume is not None else run_dir
    # torchrun sets these; a plain run is one process of rank 0.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    with hold_run_folder(folder, processes, rank, notify=console.print):
        if resume is not None:
            context = click.get_current_context()
            given = {
                name: value
                for name, value in options.items()
                if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
            }
            if data_dir is not None:
                given["data_dir"] = data_dir.absolute()
            if run_dir is not None:
                given["run_dir"] = run_dir
            config = resume_config(resume, given)
        else:
            # Absolute, so the checkpoint names its training folder wherever it is used from
            # (export --int8 calibrates on it), and --resume finds both folders from anywhere.
            val_dir = options.pop("val_dir")
            config = TrainConfig(
                data_dir=str(data_dir.absolute()),
                run_dir=str(run_dir),
                val_dir=str(val_dir.absolute()) if val_dir else None,
                **options,
            )
        with pixel_limit(max_pixels), progress_bar("training", transient=True) as progress:
            run_training(
                config,
                resume=resume is not None,
                overwrite=overwrite,
                progress=progress,
                notify=console.print,
            )
