"""Training a CGD model: one loop for a laptop, a workstation GPU or `torchrun` (DDP)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from histoseek.data.dataset import ImageDataset, default_workers, make_loader
from histoseek.data.folder import LabelledImages, display_path, scan_labelled_folder
from histoseek.data.sampler import ClassBalancedBatchSampler
from histoseek.data.split import group_ids_from_regex, stratified_group_split
from histoseek.data.transforms import TrainTransform
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.inference.embed_files import embed_files
from histoseek.inference.torch_backend import TorchEmbedder, resolve_device
from histoseek.losses import BatchHardTripletLoss, LabelSmoothingCrossEntropy
from histoseek.metrics import exact_neighbours, retrieval_metrics
from histoseek.model.backbones import get_backbone_spec
from histoseek.model.cgd import CGD, ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint
from histoseek.model.safe_load import load_tensors
from histoseek.report.progress import progress_bar
from histoseek.train_config import TrainConfig

TRAIN_STATE = "last.pt"
BEST_MODEL = "model.pt"


@dataclass
class _Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_type: str) -> _Distributed:
    """Join the process group that `torchrun` describes through environment variables."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return _Distributed(world_size, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class _Splits:
    train: LabelledImages
    val: LabelledImages | None


def _select(images: LabelledImages, keep: list[int]) -> LabelledImages:
    return LabelledImages(
        images.root,
        [images.paths[i] for i in keep],
        [images.labels[i] for i in keep],
        images.class_names,
    )


def prepare_splits(config: TrainConfig) -> _Splits:
    """Scan the data and hold out validation images: `--val-dir`, or a group-aware fraction."""
    images = scan_labelled_folder(config.data_dir, min_classes=2)
    if config.val_dir:
        val = scan_labelled_folder(config.val_dir, class_names=images.class_names)
        known = [i for i, label in enumerate(val.labels) if label >= 0]
        if not known:
            raise HistoseekError(f"--val-dir {config.val_dir} holds none of the training classes")
        return _Splits(images, _select(val, known))
    if config.val_fraction <= 0:
        return _Splits(images, None)
    names = [path.name for path in images.paths]
    groups = group_ids_from_regex(names, config.group_regex)
    fractions = [1.0 - config.val_fraction, config.val_fraction]
    assignment = stratified_group_split(images.labels, groups, fractions, config.seed)
    train = _select(images, [i for i, s in enumerate(assignment) if s == 0])
    val = _select(images, [i for i, s in enumerate(assignment) if s == 1])
    if len(set(train.labels)) < 2:
        raise HistoseekError("too few images to hold out validation; lower --val-fraction")
    return _Splits(train, val)


def freeze_stages(model: CGD, count: int | None) -> list[nn.Module]:
    """Freeze the first `count` backbone stages (None: the backbone's default); returns them.

    Frozen stages are kept in eval mode while training, so their BatchNorm statistics stay.
    """
    spec = get_backbone_spec(model.config.backbone)
    count = spec.default_frozen_stages if count is None else count
    stages = spec.stages(model.trunk)
    if count > len(stages):
        raise HistoseekError(
            f"--freeze-stages {count}: {model.config.backbone} has only {len(stages)} stages"
        )
    for stage in stages[:count]:
        for parameter in stage.parameters():
            parameter.requires_grad_(False)
    return stages[:count]


def make_optimizer(model: CGD, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: the new CGD layers at `lr`, the pretrained backbone at lr × backbone_lr_scale."""
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    trunk_ids = {id(p) for p in model.trunk.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in trunk_ids]
    groups = [{"params": head, "lr": config.lr}]
    if trunk:
        groups.append({"params": trunk, "lr": config.lr * config.backbone_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def validation_recall(model: CGD, val: LabelledImages, device, batch_size, workers) -> float:
    """Leave-one-out Recall@1 within the validation images.

    It leaves the model in eval mode: each epoch sets the training modes again at its start.
    """
    embedded = embed_files(
        TorchEmbedder(model, str(device)), model.config, val.paths, batch_size, workers
    )
    if len(embedded.embeddings) < 2:
        return float("nan")
    labels = np.asarray(val.labels)[embedded.indices]
    neighbours = exact_neighbours(embedded.embeddings, embedded.embeddings, k=1, exclude_self=True)
    return retrieval_metrics(neighbours, labels, labels, recall_ks=(1,))["recall@1"]


class _RunLog:
    """Appends human-readable lines to RUN_DIR/train.log and mirrors them to the console."""

    def __init__(self, path: Path, console):
        self.path, self.console = path, console

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")
        self.console.print(f"[dim]{stamp}[/dim] {message}", highlight=False)


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / TRAIN_STATE).is_file():
            raise HistoseekError(f"nothing to resume: {run_dir / TRAIN_STATE} does not exist")
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise HistoseekError(
            f"{run_dir} already holds a run; pass --overwrite to replace it or --resume to continue"
        )


def load_train_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run was started with (for --resume)."""
    if not (Path(run_dir) / TRAIN_STATE).is_file():
        raise HistoseekError(f"nothing to resume: {Path(run_dir) / TRAIN_STATE} does not exist")
    path = Path(run_dir) / "train_config.json"
    try:
        return TrainConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise HistoseekError(f"cannot read the run's configuration {path}: {error}") from None


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, console=None) -> dict:
    """Train a CGD model as `config` says; returns the metrics written to metrics.json."""
    from rich.console import Console

    console = console or Console(stderr=True)
    device = resolve_device(config.device)
    ddp = _setup_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(config.run_dir)
    # Every rank checks, so that a refusal stops all of them instead of leaving some waiting.
    _check_run_dir(run_dir, resume, overwrite)
    if ddp.world_size > 1:
        dist.barrier()
    if ddp.is_main:
        if overwrite and not resume:
            for name in (TRAIN_STATE, BEST_MODEL, "metrics.json", "train.log"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _RunLog(run_dir / "train.log", console) if ddp.is_main else (lambda message: None)

    torch.manual_seed(config.seed + ddp.rank)
    splits = prepare_splits(config)
    class_names = splits.train.class_names
    model_config = ModelConfig(
        backbone=config.backbone,
        gd_config=config.gd_config,
        dim=config.dim,
        num_classes=len(class_names),
        image_size=config.image_size,
    )
    model = build_model(model_config, weights=config.weights, seed=config.seed)
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
    train_transform = TrainTransform(
        config.image_size,
        model_config.mean,
        model_config.std,
        crop_scale=(config.crop_scale, 1.0),
        stain_strength=config.stain_jitter,
        seed=config.seed + ddp.rank,
    )
    dataset = ImageDataset(splits.train.paths, splits.train.labels, train_transform)
    workers = default_workers() if config.workers is None else config.workers
    loader = make_loader(dataset, workers, batch_sampler=sampler)

    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(sampler)
    scheduler = make_scheduler(
        optimizer, int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch
    )
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    triplet = BatchHardTripletLoss(config.margin)
    classification = LabelSmoothingCrossEntropy(config.label_smoothing, config.temperature)

    start_epoch, history, best = 0, [], {"epoch": None, "val_recall@1": -1.0}
    if resume:
        state = load_tensors(run_dir / TRAIN_STATE, "training state")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
    elif ddp.is_main:
        with atomic_file(run_dir / "train_config.json") as tmp:
            tmp.write_text(json.dumps(asdict(config), indent=2))

    trained = nn.parallel.DistributedDataParallel(model) if ddp.world_size > 1 else model
    val_size = len(splits.val) if splits.val else 0
    log(
        f"training {config.backbone} CGD ({config.gd_config}, dim {config.dim}) on "
        f"{len(splits.train)} images of {len(class_names)} classes, validating on {val_size}; "
        f"device {device}, {ddp.world_size} process(es)"
    )
    skipped: set[int] = set()
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        trained.train()
        for stage in frozen:
            stage.eval()  # frozen BatchNorm keeps its ImageNet statistics
        started, seen, loss_sum = time.time(), 0, 0.0
        description = f"epoch {epoch + 1}/{config.epochs}"
        total = steps_per_epoch * sampler.batch_size
        with progress_bar(description, ddp.is_main, transient=True) as progress:
            for batch in loader:
                skipped.update(splits.train.paths[i] for i in batch.failed)
                if len(batch.labels) < 2:
                    continue
                images = batch.images.to(device, non_blocking=True)
                images = images.contiguous(memory_format=torch.channels_last)
                labels = batch.labels.to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    embeddings, logits = trained(images)
                loss = triplet(embeddings.float(), labels) + classification(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(labels)
                loss_value = loss.item()
                loss_sum += loss_value * len(labels)
                progress(seen, total)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "images_per_s": seen * ddp.world_size / (time.time() - started),
        }
        if ddp.is_main:
            if splits.val is not None:
                record["val_recall@1"] = validation_recall(
                    model, splits.val, device, config.batch_size, workers
                )
            history.append(record)
            improved = splits.val is None or record["val_recall@1"] > best["val_recall@1"]
            if improved:
                best = {"epoch": epoch + 1, "val_recall@1": record.get("val_recall@1")}
                save_checkpoint(
                    run_dir / BEST_MODEL,
                    model,
                    class_names,
                    extra={"epoch": epoch + 1, "train_config": asdict(config)},
                )
            val_text = f", val R@1 {record['val_recall@1']:.4f}" if "val_recall@1" in record else ""
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, "
                f"{record['images_per_s']:.1f} img/s{val_text}{' (best)' if improved else ''}"
            )
            state = {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "best": best,
            }
            with atomic_file(run_dir / TRAIN_STATE) as tmp:
                torch.save(state, tmp)
        if ddp.world_size > 1:
            dist.barrier()

    metrics = {
        "history": history,
        "best": best,
        "train_images": len(splits.train),
        "val_images": val_size,
        "class_names": class_names,
        "skipped_unreadable": sorted(display_path(p) for p in skipped),
    }
    if ddp.is_main:
        if skipped:
            log(f"skipped {len(skipped)} unreadable image(s); listed in metrics.json")
        with atomic_file(run_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
        log(f"best epoch {best['epoch']}; model written to {run_dir / BEST_MODEL}")
    if ddp.world_size > 1:
        dist.destroy_process_group()
    return metrics
