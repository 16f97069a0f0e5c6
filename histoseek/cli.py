"""The `histoseek` command line: thin Click commands over the library.

Heavy imports (torch, onnxruntime, annoy) happen inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from histoseek import __version__
from histoseek.errors import HistoseekError
from histoseek.index.defaults import DEFAULT_INDEX_DIR, DEFAULT_SEED, DEFAULT_TREES
from histoseek.inference import BACKENDS
from histoseek.train_config import TrainConfig

_TRAIN = TrainConfig(data_dir="", run_dir="")  # the defaults, stated once in TrainConfig


class _Group(click.Group):
    """A group whose every error is one clear line on stderr and a non-zero exit.

    HistoseekError from a command and Click's own usage errors alike: Click would otherwise
    print the usage text and a hint around a usage error.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HistoseekError as error:
            raise click.ClickException(str(error)) from None

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message())  # a bare `histoseek` shows its help
            sys.exit(0)
        except click.ClickException as error:
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)


# Shared options, so every command spells them the same way.
def overwrite_option(func):
    """`--overwrite`: replace existing output instead of refusing."""
    return click.option(
        "--overwrite", is_flag=True, help="Replace existing output instead of refusing."
    )(func)


def device_option(func):
    """`--device auto|cpu|cuda`."""
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where to run the model; auto picks CUDA when available.",
    )(func)


def batch_size_option(default: int):
    """`--batch-size N` with a command-specific default."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=default, show_default=True
    )


def workers_option(func):
    """`--workers N`: image-decoding processes."""
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="Image-decoding worker processes (default: one per CPU core, at most 8; 0 = none).",
    )(func)


def backend_option(func):
    """`--backend auto|torch|onnx|tensorrt`."""
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="Inference backend; auto picks the fastest usable one and says which.",
    )(func)


def exported_option(func):
    """`--exported PATH`: an ONNX model or TensorRT engine to run instead of the checkpoint."""
    return click.option(
        "--exported",
        type=click.Path(path_type=Path),
        default=None,
        help="ONNX model or TensorRT engine exported from the model "
        "[default: model.onnx / model.engine beside the checkpoint].",
    )(func)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="histoseek")
def cli() -> None:
    """Content-based retrieval of histopathology image patches (CGD embeddings + Annoy)."""


@cli.command()
@click.argument("layout", type=click.Choice(["bach", "bracs", "crc", "folder"]))
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder to create."
)
@click.option("--patch-size", type=click.IntRange(min=1), default=224, show_default=True)
@click.option(
    "--stride", type=click.IntRange(min=1), default=None, help="[default: the patch size]"
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Resample each image by this factor before tiling (0.5 halves 40x to 20x).",
)
@click.option(
    "--min-tissue",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Smallest fraction of tissue pixels a patch needs to be kept.",
)
@click.option(
    "--split",
    default=None,
    help="train,val,test fractions [default: 0.7,0.15,0.15; BRACS keeps its official split].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option(
    "--group-regex",
    default=None,
    help="Group images by this regex on their path below SRC (e.g. a slide id).",
)
@click.option(
    "--normalize",
    type=click.Choice(["macenko", "reinhard"]),
    default=None,
    help="Stain-normalise every image to --reference before tiling.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Image whose staining --normalize matches.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Largest image (width x height) to decode [default: Pillow's limit, 89,478,485].",
)
@overwrite_option
@workers_option
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
    max_pixels: int | None,
    overwrite: bool,
    workers: int | None,
) -> None:
    """Cut BACH, BRACS, extended-CRC or any class-folder images into labelled patches.

    Writes OUTPUT/<split>/<class>/<source>_<x>_<y>.png, manifest.csv, skipped.txt and
    prepare.json; OUTPUT/train, OUTPUT/val and OUTPUT/test feed train, evaluate and index.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from histoseek.prepare.pipeline import DEFAULT_MAX_PIXELS, PrepareOptions, prepare_dataset
    from histoseek.report.tables import prepare_table

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
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        group_regex=group_regex,
    )
    console = Console()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("tiling source images", total=None)
        summary = prepare_dataset(
            src,
            output,
            options,
            workers=workers,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    console.print(prepare_table(summary))
    console.print(
        f"{summary.sources} source image(s) → {summary.patches} patch(es); "
        f"{summary.sources_without_patches} image(s) gave no patch with enough tissue.",
        highlight=False,
    )
    if summary.skipped:
        console.print(
            f"[yellow]skipped {len(summary.skipped)} unreadable image(s)[/yellow], listed in "
            f"{summary.output / 'skipped.txt'}",
            highlight=False,
        )


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-class", type=int, default=20, show_default=True, help="Images per class.")
@click.option(
    "--size",
    type=int,
    default=224,
    show_default=True,
    help="Image width in pixels (and height, unless --height is given).",
)
@click.option("--height", type=int, default=None, help="Image height in pixels [default: --size].")
@click.option(
    "--classes",
    default=None,
    help="Comma-separated classes [default: adipose,background,lymphocytes,mucosa,stroma].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; same seed, same files.")
@overwrite_option
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


@cli.command()
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "run_dir", type=click.Path(path_type=Path), help="Run folder.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet_lite0", "resnet50", "resnext50"]),
    default=_TRAIN.backbone,
    show_default=True,
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
@click.option("--dim", type=click.IntRange(min=1), default=_TRAIN.dim, show_default=True)
@click.option(
    "--image-size", type=click.IntRange(min=32), default=_TRAIN.image_size, show_default=True
)
@click.option("--epochs", type=click.IntRange(min=1), default=_TRAIN.epochs, show_default=True)
@batch_size_option(_TRAIN.batch_size)
@click.option(
    "--m-per-class",
    type=click.IntRange(min=2),
    default=_TRAIN.m_per_class,
    show_default=True,
    help="Images per class in each batch.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=_TRAIN.lr,
    show_default=True,
    help="Learning rate of the CGD layers.",
)
@click.option(
    "--backbone-lr-scale",
    type=click.FloatRange(min=0),
    default=_TRAIN.backbone_lr_scale,
    show_default=True,
    help="Backbone learning rate as a fraction of --lr.",
)
@click.option(
    "--weight-decay", type=click.FloatRange(min=0), default=_TRAIN.weight_decay, show_default=True
)
@click.option(
    "--warmup-epochs", type=click.FloatRange(min=0), default=_TRAIN.warmup_epochs, show_default=True
)
@click.option(
    "--freeze-stages",
    type=click.IntRange(min=0),
    default=_TRAIN.freeze_stages,
    help="Freeze this many backbone stages from the input side [default: 5 of "
    "efficientnet_lite0's 9, 2 of a ResNet's 5 (stem and layer1)].",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=_TRAIN.label_smoothing,
    show_default=True,
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=_TRAIN.temperature,
    show_default=True,
)
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    default=_TRAIN.margin,
    show_default=True,
    help="Triplet margin.",
)
@click.option(
    "--crop-scale",
    type=click.FloatRange(0, 1, min_open=True),
    default=_TRAIN.crop_scale,
    show_default=True,
    help="Smallest area share of a random resized crop.",
)
@click.option(
    "--stain-jitter",
    type=click.FloatRange(min=0),
    default=_TRAIN.stain_jitter,
    show_default=True,
    help="Strength of haematoxylin/eosin jitter (0 = off).",
)
@click.option("--val-dir", type=click.Path(path_type=Path), help="Validation folder.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=_TRAIN.val_fraction,
    show_default=True,
    help="Held-out share of DATA_DIR when there is no --val-dir.",
)
@click.option(
    "--group-regex",
    help="Regex whose match (or first group) in a file name is its "
    "group, e.g. a slide id; groups never straddle train and validation.",
)
@click.option("--seed", type=int, default=_TRAIN.seed, show_default=True)
@device_option
@click.option(
    "--amp/--no-amp", default=False, show_default=True, help="Mixed precision (CUDA only)."
)
@workers_option
@overwrite_option
def train(data_dir, run_dir, resume, overwrite, **options):
    """Train a CGD model on DATA_DIR (one sub-folder per class) into RUN_DIR."""
    from histoseek.train import load_train_config
    from histoseek.train import train as run_training

    if resume is not None:
        config = load_train_config(resume)
        if data_dir is not None:
            config.data_dir = str(data_dir)
        source = click.get_current_context().get_parameter_source("epochs")
        if source is click.core.ParameterSource.COMMANDLINE:
            config.epochs = options["epochs"]  # resuming may extend a finished run
        if run_dir is not None and Path(run_dir) != Path(resume):
            raise HistoseekError("--resume continues a run in its own folder; drop -o")
        config.run_dir = str(resume)
    else:
        if data_dir is None or run_dir is None:
            raise HistoseekError("give DATA_DIR and -o RUN_DIR (or --resume RUN_DIR)")
        options["val_dir"] = str(options["val_dir"]) if options["val_dir"] else None
        config = TrainConfig(data_dir=str(data_dir), run_dir=str(run_dir), **options)
    run_training(config, resume=resume is not None, overwrite=overwrite)


def model_option(func):
    """`--model CKPT`: a trained checkpoint (default: the built-in ImageNet model)."""
    return click.option(
        "--model",
        "model_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Trained checkpoint (model.pt); default: the built-in ImageNet EfficientNet-Lite0.",
    )(func)


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise HistoseekError(f"--recall-k takes whole numbers such as 1,2,4,8: {text!r}") from None
    if not ks or min(ks) < 1:
        raise HistoseekError(f"--recall-k values must be 1 or more: {text!r}")
    return ks


@cli.command()
@model_option
@click.option("--gallery", type=click.Path(path_type=Path), required=True, help="Gallery folder.")
@click.option(
    "--query",
    type=click.Path(path_type=Path),
    help="Query folder (default: leave-one-out within the gallery).",
)
@click.option("--recall-k", default="1,2,4,8", show_default=True, help="Ks for Recall@K.")
@click.option("--map-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--vote-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Neighbours in the majority vote (mMV@K).",
)
@click.option("--precision-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--group-regex",
    help="Exclude neighbours whose file name shares this regex's "
    "match with the query's (e.g. the same slide or source image).",
)
@backend_option
@exported_option
@device_option
@batch_size_option(32)
@workers_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def evaluate(
    model_path,
    gallery,
    query,
    recall_k,
    map_k,
    vote_k,
    precision_k,
    group_regex,
    backend,
    exported,
    device,
    batch_size,
    workers,
    as_json,
):
    """Measure retrieval quality: Recall@K, mAP@k, mMV@k and precision@k by exact search."""
    import json

    from histoseek.data.dataset import default_workers
    from histoseek.evaluate import evaluate as run_evaluation
    from histoseek.inference.select import create_embedder
    from histoseek.model.checkpoint import load_model
    from histoseek.report.tables import evaluation_table

    model, _, reference = load_model(model_path)
    checkpoint = Path(model_path) if model_path else None
    embedder = create_embedder(model, backend, device, checkpoint, exported=exported)
    result = run_evaluation(
        embedder,
        model.config,
        gallery,
        query,
        _parse_ks(recall_k),
        map_k,
        vote_k,
        precision_k,
        group_regex,
        batch_size,
        default_workers() if workers is None else workers,
        progress=not as_json,
    )
    document = {"model": reference, "backend": embedder.name, **result.to_dict()}
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        from rich.console import Console

        Console().print(evaluation_table(document))


@cli.command()
@model_option
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet_lite0", "resnet50", "resnext50"]),
    default=_TRAIN.backbone,
    show_default=True,
)
@click.option("--gd-config", default=_TRAIN.gd_config, show_default=True)
@click.option("--dim", type=click.IntRange(min=1), default=_TRAIN.dim, show_default=True)
@click.option(
    "--classes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Classes of the auxiliary classifier (0: none).",
)
@click.option(
    "--input-size",
    type=click.IntRange(min=32),
    default=224,
    show_default=True,
    help="Input size for the FLOP count.",
)
def info(model_path, backbone, gd_config, dim, classes, input_size):
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
    summary = summarize(model, input_size)
    Console().print(
        model_table(model.config, summary, reference, class_names, model_fingerprint(model))
    )


@cli.command("index")
@click.argument("directory", type=click.Path(path_type=Path))
@model_option
@click.option(
    "-o",
    "--output",
    "index_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_INDEX_DIR,
    show_default=True,
    help="Index folder (query looks for ./histoseek-index by default).",
)
@click.option(
    "--trees",
    type=click.IntRange(min=1),
    default=DEFAULT_TREES,
    show_default=True,
    help="Annoy trees: more give better recall, bigger files and slower builds.",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Annoy build seed.")
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable file instead of skipping."
)
@backend_option
@exported_option
@device_option
@batch_size_option(32)
@workers_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an index of another folder or model at -o (and re-embed every image).",
)
def index(
    directory,
    model_path,
    index_dir,
    trees,
    seed,
    strict,
    backend,
    exported,
    device,
    batch_size,
    workers,
    overwrite,
):
    """Embed every image under DIRECTORY and build an Annoy index of them.

    Re-running it on the same folder embeds only new or changed files.
    """
    from rich.console import Console

    from histoseek.data.dataset import default_workers
    from histoseek.data.folder import display_path
    from histoseek.index.build import build_index

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    report = build_index(
        directory,
        index_dir,
        model=model_path,
        backend=backend,
        exported=exported,
        device=device,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        trees=trees,
        seed=seed,
        strict=strict,
        overwrite=overwrite,
        progress=True,
        announce=console.print,
    )
    shown = display_path(report.index_dir)
    console.print(
        f"indexed {report.items} image(s) into {shown} in {report.seconds:.1f} s: "
        f"{report.embedded} embedded, {report.reused} reused, {report.dropped} dropped; "
        f"{trees} trees; backend {report.backend}"
    )
    if report.skipped:
        console.print(
            f"skipped {len(report.skipped)} unreadable file(s); the list is in {shown}/skipped.txt"
        )


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--index",
    "index_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Index folder [default: ./histoseek-index].",
)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query image.")
@click.option(
    "--search-k",
    type=click.IntRange(min=1),
    default=None,
    help="Annoy candidates to inspect per query: more is slower and finds more of the true "
    "nearest [default: 10000, or k × trees if more].",
)
@click.option("--exact", is_flag=True, help="Exact search over the stored embeddings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a gallery page.")
@click.option(
    "--sheet", "sheet_path", type=click.Path(path_type=Path), help="Write a contact sheet PNG."
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The index's model checkpoint, if it has moved [default: the one the index records].",
)
@backend_option
@exported_option
@device_option
@batch_size_option(32)
@workers_option
def query(
    images,
    index_dir,
    k,
    search_k,
    exact,
    as_json,
    html_path,
    sheet_path,
    model_path,
    backend,
    exported,
    device,
    batch_size,
    workers,
):
    """Find the K most similar indexed patches to each IMAGE (a folder: every image in it)."""
    import json
    import sys

    from rich.console import Console

    from histoseek.data.dataset import default_workers
    from histoseek.index.search import (
        collect_query_images,
        load_index_model,
        open_index,
        search_images,
    )
    from histoseek.report.results import print_results, results_document

    if k < 1:
        raise HistoseekError(f"-k must be 1 or more, not {k}")
    opened = open_index(index_dir)
    paths = collect_query_images(images)
    network, checkpoint = load_index_model(opened, model_path)
    notes = Console(stderr=True, highlight=False, soft_wrap=True)
    if k > len(opened.items):
        notes.print(f"note: the index holds only {len(opened.items)} images; showing all of them")
    results = search_images(
        opened,
        network,
        checkpoint,
        paths,
        k,
        search_k=search_k,
        exact=exact,
        backend=backend,
        exported=exported,
        device=device,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        progress=sys.stderr.isatty(),
    )
    if html_path is not None:
        from histoseek.report.gallery import write_gallery

        write_gallery(html_path, results)
    if sheet_path is not None:
        from histoseek.report.sheet import write_sheet

        write_sheet(sheet_path, results)
    if as_json:
        click.echo(json.dumps(results_document(opened, results), indent=2))
    else:
        print_results(Console(highlight=False), results)
    for path, what in ((html_path, "gallery"), (sheet_path, "contact sheet")):
        if path is not None:
            notes.print(f"wrote the {what} to {path}")


@cli.command()
@model_option
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
    type=click.IntRange(13, 20),
    default=17,
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
    help="Largest batch the TensorRT engine accepts [default: 256].",
)
@click.option(
    "--parity-images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of image tiles for the parity check (default: synthetic H&E-like patches).",
)
@overwrite_option
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
    from histoseek_export.pipeline import run_export

    run_export(
        model_path,
        onnx=onnx_path,
        trt=engine_path,
        opset=opset,
        dynamic_size=dynamic_size,
        fp16=fp16 is not False,
        max_batch=256 if max_batch is None else max_batch,
        overwrite=overwrite,
        parity_dir=parity_images,
        report=click.echo,
    )


def main() -> None:
    """Console-script entry point."""
    cli()
