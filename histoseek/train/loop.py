"""The training loop in parts: set up a run, train one epoch, validate and checkpoint, finish.

`train` composes them. Each part works on a TrainingRun, which `setup_run` builds only after
everything (data, classes, splits, options, resume state) has been checked.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from histoseek.callbacks import Notify, Progress
from histoseek.data.dataset import ImageDataset, default_workers, make_loader
from histoseek.data.folder import display_path
from histoseek.data.sampler import ClassBalancedBatchSampler
from histoseek.data.transforms import MultiScaleResize, TrainTransform
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.inference.torch_backend import resolve_device
from histoseek.losses import BatchHardTripletLoss, LabelSmoothingCrossEntropy
from histoseek.metrics_defaults import DEFAULT_VOTE_K
from histoseek.model.backbones import get_backbone_spec
from histoseek.model.cgd import CGD, ModelConfig, build_model, set_identity_projections
from histoseek.model.checkpoint import first_non_finite, save_checkpoint
from histoseek.train.distributed import (
    Distributed,
    agree_on,
    gather_strings,
    leave_distributed,
    raise_main_error,
    setup_distributed,
)
from histoseek.train.optim import freeze_stages, make_optimizer, make_scheduler
from histoseek.train.resume_state import ResumeState, read_resume_state, write_resume_state
from histoseek.train.run_folder import (
    BEST_MODEL,
    METRICS,
    TRAIN_LOG,
    TRAIN_STATE,
    PreviousRun,
    RunLog,
    check_run_folder,
    write_train_config,
)
from histoseek.train.splits import (
    Splits,
    prepare_splits,
    require_readable_classes,
)
from histoseek.train.validation import EpochValidation
from histoseek.train.weight_average import WeightAverage
from histoseek.train_config import TrainConfig


@dataclass
class TrainingRun:
    """Everything a run holds between its steps; built by `setup_run`."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    ddp: Distributed
    splits: Splits
    model: CGD
    # The model as the steps call it: wrapped in DistributedDataParallel under torchrun.
    trained: nn.Module
    frozen: list[nn.Module]
    sampler: ClassBalancedBatchSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    triplet: BatchHardTripletLoss
    classification: LabelSmoothingCrossEntropy
    workers: int
    log: Notify
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "val_score": -1.0})
    # Training images that could not be read (display paths); each was replaced in its batch.
    unreadable: set[str] = field(default_factory=set)
    # With --overwrite: the replaced run's files, kept until this run's first checkpoint.
    previous: PreviousRun | None = None
    # Multi-scale training (TrainConfig.train_sizes): resizes each batch to a random side.
    multiscale: MultiScaleResize | None = None
    # Scores each epoch (None: no validation images).
    validation: EpochValidation | None = None
    # The moving average of the weights (None: TrainConfig.ema_epochs is 0).
    average: WeightAverage | None = None

    @property
    def kept_model(self) -> CGD:
        """The model validation scores and model.pt holds: the weight average, if any."""
        return self.model if self.average is None else self.average.model


def make_grad_scaler(
    device: torch.device, use_amp: bool, amp_dtype: torch.dtype
) -> torch.amp.GradScaler:
    """Loss scaling, which float16 autocast needs and bfloat16 does not (disabled otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)


def _restore(run: TrainingRun, state: ResumeState, path: Path) -> None:
    if state.class_names is not None and state.class_names != run.splits.train.class_names:
        raise HistoseekError(
            f"the data's classes ({', '.join(run.splits.train.class_names)}) differ from the "
            f"run's ({', '.join(state.class_names)})"
        )
    if state.split_fingerprint is not None and state.split_fingerprint != run.splits.fingerprint:
        raise HistoseekError(
            "the data's images, or which of them validate, differ from the run's (images "
            "added, removed or renamed since it started); --resume continues a run on the "
            "same split, so that its validation images stay out of training: restore the "
            "data, or start a new run"
        )
    if run.splits.val is not None and state.best.get("epoch") and "val_score" not in state.best:
        raise HistoseekError(
            "this run chose its best epoch by Recall@1 within the validation images (histoseek "
            "before validation searched the training images); the two do not compare: start a "
            "new run"
        )
    if run.average is not None and not state.averaged_model:
        raise HistoseekError(
            f"{path} holds no weight average, which this run keeps (--ema-epochs "
            f"{run.config.ema_epochs:g}): the file is damaged; start a new run"
        )
    if run.config.epochs < state.epoch:
        raise HistoseekError(
            f"--epochs {run.config.epochs} is fewer than the {state.epoch} this run has done"
        )
    try:
        run.model.load_state_dict(state.model)
        run.optimizer.load_state_dict(state.optimizer)
        run.scheduler.load_state_dict(state.scheduler)
        if state.scaler:  # a disabled scaler (no float16 AMP) ignores it
            run.scaler.load_state_dict(state.scaler)
        if run.average is not None:
            run.average.model.load_state_dict(state.averaged_model)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HistoseekError(f"cannot resume from {path}: {detail}") from None
    run.start_epoch, run.history, run.best = state.epoch, state.history, state.best
    run.unreadable.update(state.unreadable)


def _prepare_folder(run: TrainingRun, resume: bool, overwrite: bool) -> None:
    """Set the replaced run aside (with --overwrite), then create the folder and its config."""
    if not resume and overwrite:
        run.previous = PreviousRun.set_aside(run.run_dir)
    try:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_train_config(run.run_dir, run.config)
    except OSError as error:
        if run.previous is not None:
            run.previous.restore()
        raise HistoseekError(f"cannot write the run folder {run.run_dir}: {error}") from None


def setup_run(
    config: TrainConfig, resume: bool = False, overwrite: bool = False, notify: Notify | None = None
) -> TrainingRun:
    """Check the data, classes, splits, options and resume state, then build the run.

    The run folder is touched only after every check has passed; `notify` receives each line
    written to train.log.
    """
    device = resolve_device(config.device)
    ddp = setup_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(config.run_dir)
    # Every rank checks, so that a refusal stops all of them instead of leaving some waiting.
    check_run_folder(run_dir, resume, overwrite)
    if config.batch_size // ddp.world_size < 2 * config.m_per_class:
        processes = f" over {ddp.world_size} processes" if ddp.world_size > 1 else ""
        raise HistoseekError(
            f"--batch-size {config.batch_size}{processes} holds fewer than 2 classes of "
            f"--m-per-class {config.m_per_class} images per process: give --batch-size "
            f"{2 * config.m_per_class * ddp.world_size} or more, or a smaller --m-per-class"
        )
    state = read_resume_state(run_dir / TRAIN_STATE) if resume else None
    splits = prepare_splits(config)
    # Each rank scans and splits the data itself; ranks that disagree (data folders that
    # differ between machines, colour clusters that came out otherwise) would train on each
    # other's validation images.
    if not agree_on(ddp, splits.fingerprint):
        raise HistoseekError(
            "the training processes found different images, or split them differently, in "
            f"{display_path(config.data_dir)}; give every process the same data (or --val-dir)"
        )
    require_readable_classes(splits.train)

    torch.manual_seed(config.seed + ddp.rank)
    class_names = splits.train.class_names
    model_config = ModelConfig(
        backbone=config.backbone,
        gd_config=config.gd_config,
        dim=config.dim,
        num_classes=len(class_names),
        image_size=config.image_size or get_backbone_spec(config.backbone).native_size,
        power=config.power,
    )
    model = build_model(model_config, weights=config.weights, seed=config.seed)
    if config.identity_init:
        set_identity_projections(model)
    frozen = freeze_stages(model, config.freeze_stages)
    model.to(device, memory_format=torch.channels_last)

    sampler = ClassBalancedBatchSampler(
        splits.train.labels,
        config.batch_size // ddp.world_size,
        config.m_per_class,
        seed=config.seed,
        num_replicas=ddp.world_size,
        rank=ddp.rank,
    )
    transform = TrainTransform(
        model_config.image_size,
        model_config.mean,
        model_config.std,
        crop_scale=(config.crop_scale, 1.0),
        stain_strength=config.stain_jitter,
        blur=config.blur,
        hsv_strength=config.hsv_jitter,
        seed=config.seed + ddp.rank,
    )
    # Unreadable images are replaced, not dropped: every rank's batches keep their size, so
    # all ranks take the same steps.
    dataset = ImageDataset(
        splits.train.paths, splits.train.labels, transform, replace_unreadable=True
    )
    workers = default_workers() if config.workers is None else config.workers
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(sampler)
    scheduler = make_scheduler(
        optimizer, int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch
    )
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    run = TrainingRun(
        config=config,
        run_dir=run_dir,
        device=device,
        ddp=ddp,
        splits=splits,
        model=model,
        trained=model,
        frozen=frozen,
        sampler=sampler,
        loader=make_loader(dataset, workers, batch_sampler=sampler),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=make_grad_scaler(device, use_amp, amp_dtype),
        use_amp=use_amp,
        amp_dtype=amp_dtype,
        triplet=BatchHardTripletLoss(config.margin),
        classification=LabelSmoothingCrossEntropy(config.label_smoothing, config.temperature),
        workers=workers,
        log=lambda message: None,
        multiscale=(
            MultiScaleResize(config.train_sizes, config.seed) if config.train_sizes else None
        ),
        validation=(
            EpochValidation(splits.val, splits.val_gallery, len(frozen), config.batch_size, workers)
            if splits.val is not None
            else None
        ),
        average=(
            WeightAverage(model, config.ema_epochs * steps_per_epoch)
            if config.ema_epochs > 0
            else None
        ),
    )
    if state is not None:
        _restore(run, state, run_dir / TRAIN_STATE)
    if ddp.world_size > 1:
        run.trained = nn.parallel.DistributedDataParallel(model)

    error = None
    if ddp.is_main:
        try:
            _prepare_folder(run, resume, overwrite)
        except HistoseekError as refusal:
            error = str(refusal)
    raise_main_error(ddp, error)
    if ddp.is_main:
        run.log = RunLog(run_dir / TRAIN_LOG, notify)
    val_size = len(splits.val) if splits.val else 0
    try:
        run.log(
            f"training {config.backbone} CGD ({config.gd_config}, dim {config.dim}) on "
            f"{len(splits.train)} images of {len(class_names)} classes, validating on "
            f"{val_size}; batches of {sampler.classes_per_batch} classes × {sampler.m} images "
            f"per process; device {device}, {ddp.world_size} process(es)"
        )
        for note in splits.notes:
            run.log(note)
        if run.previous is not None:
            run.log(f"the previous run waits in {run.previous.aside} until the first epoch ends")
    except BaseException:
        if run.previous is not None:
            run.previous.restore()
        raise
    return run


def train_one_epoch(run: TrainingRun, epoch: int, progress: Progress | None = None) -> dict:
    """Train on one epoch of class-balanced batches; returns {epoch, loss, images_per_s}.

    `progress(done, total)` counts this process's images of the epoch.
    """
    run.sampler.set_epoch(epoch)
    run.trained.train()
    for stage in run.frozen:
        stage.eval()  # frozen BatchNorm keeps its ImageNet statistics
    started, seen, loss_sum = time.time(), 0, 0.0
    total = len(run.sampler) * run.sampler.batch_size
    for batch in run.loader:
        run.unreadable.update(display_path(run.splits.train.paths[i]) for i in batch.failed)
        images = batch.images.to(run.device, non_blocking=True)
        if run.multiscale is not None:
            images = run.multiscale(images)
        images = images.contiguous(memory_format=torch.channels_last)
        labels = batch.labels.to(run.device)
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            embeddings, logits = run.trained(images)
        loss = run.triplet(embeddings.float(), labels) + run.classification(logits, labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        if run.average is not None:
            run.average.update(run.model, run.scheduler.last_epoch)
        seen += len(labels)
        loss_sum += loss.item() * len(labels)
        if progress is not None:
            progress(seen, total)
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / max(seen, 1),
        "images_per_s": seen * run.ddp.world_size / (time.time() - started),
    }


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu() for name, value in model.state_dict().items()}


def _refuse_diverged(model: nn.Module, epoch: int) -> None:
    """Stop a run whose weights are no longer finite, before they are scored or saved."""
    broken = first_non_finite(model.state_dict())
    if broken is not None:
        raise HistoseekError(
            f"training diverged in epoch {epoch}: {broken} is no longer finite (NaN or "
            "infinite); try a lower --lr"
        )


def _validate_and_save(run: TrainingRun, record: dict) -> None:
    _refuse_diverged(run.model, record["epoch"])
    if run.validation is not None:
        record.update(run.validation(run.kept_model, run.device))
    run.history.append(record)
    improved = run.validation is None or record["val_score"] > run.best["val_score"]
    if improved:
        run.best = {"epoch": record["epoch"], "val_score": record.get("val_score")}
        save_checkpoint(
            run.run_dir / BEST_MODEL,
            run.kept_model,
            run.splits.train.class_names,
            extra={"epoch": record["epoch"], "train_config": asdict(run.config)},
        )
    val_text = (
        f", val R@1 {record['val_recall@1']:.4f}, "
        f"mMV@{DEFAULT_VOTE_K} {record[f'val_mmv@{DEFAULT_VOTE_K}']:.4f}"
        if "val_score" in record
        else ""
    )
    run.log(
        f"epoch {record['epoch']}/{run.config.epochs}: loss {record['loss']:.4f}, "
        f"{record['images_per_s']:.1f} img/s{val_text}{' (best)' if improved else ''}"
    )
    state = ResumeState(
        epoch=record["epoch"],
        history=run.history,
        best=run.best,
        model=_cpu_state(run.model),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        class_names=run.splits.train.class_names,
        unreadable=sorted(run.unreadable),
        split_fingerprint=run.splits.fingerprint,
        averaged_model={} if run.average is None else _cpu_state(run.average.model),
    )
    write_resume_state(run.run_dir / TRAIN_STATE, state)
    if run.previous is not None:
        run.previous.discard()
        run.previous = None


def validate_and_checkpoint(run: TrainingRun, record: dict) -> dict:
    """After an epoch: validate, keep the best model.pt, write last.pt; returns the record.

    The main process does the work; every process raises its refusal, if any.
    """
    error = None
    if run.ddp.is_main:
        try:
            _validate_and_save(run, record)
        except HistoseekError as refusal:
            error = str(refusal)
    raise_main_error(run.ddp, error)
    return record


def finish_run(run: TrainingRun) -> dict:
    """Write metrics.json and leave the process group; returns the metrics."""
    unreadable = gather_strings(run.ddp, run.unreadable)
    metrics = {
        "history": run.history,
        "best": run.best,
        "train_images": len(run.splits.train),
        "val_images": len(run.splits.val) if run.splits.val else 0,
        "class_names": run.splits.train.class_names,
        "skipped_unreadable": sorted(unreadable),
    }
    if run.ddp.is_main:
        if unreadable:
            run.log(
                f"replaced {len(unreadable)} unreadable image(s) by others of their class; "
                f"listed in {METRICS}"
            )
        with atomic_file(run.run_dir / METRICS) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
        model_path = run.run_dir / BEST_MODEL
        if run.best["epoch"] is not None and model_path.is_file():
            run.log(f"best epoch {run.best['epoch']}; model written to {model_path}")
        else:
            run.log(f"no model was written to {model_path}")
    leave_distributed(run.ddp)
    return metrics


def train(
    config: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    notify: Notify | None = None,
) -> dict:
    """Train a CGD model as `config` says; returns the metrics written to metrics.json.

    `progress(done, total)` follows each epoch's images (main process only); `notify` gets
    each line written to train.log.
    """
    run = setup_run(config, resume=resume, overwrite=overwrite, notify=notify)
    try:
        for epoch in range(run.start_epoch, config.epochs):
            record = train_one_epoch(run, epoch, progress if run.ddp.is_main else None)
            validate_and_checkpoint(run, record)
        return finish_run(run)
    except BaseException:
        if run.previous is not None:  # the new run failed before its first checkpoint
            run.previous.restore()
        raise
