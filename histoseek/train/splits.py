"""Which images train and which validate: `--val-dir`, or a group-aware held-out fraction
(groups from --group-regex or --colour-groups)."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from functools import cached_property

from histoseek.data.colour_groups import clusters_per_class, colour_groups
from histoseek.data.folder import (
    LabelledImages,
    display_path,
    refuse_shared_images,
    scan_labelled_folder,
)
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.data.split import group_ids_from_regex, stratified_group_split
from histoseek.errors import HistoseekError
from histoseek.metrics_defaults import DEFAULT_VOTE_K
from histoseek.train_config import TrainConfig

#: Fewer validation images than this would make the best epoch a coin toss.
MIN_VALIDATION_IMAGES = 2
#: Validation queries search at most this many training images, sampled per class, so that a
#: large training set does not make every epoch's validation embed all of it.
MAX_VALIDATION_GALLERY = 2000


@dataclass
class Splits:
    """The training images and the validation images (None: no validation), and notes on
    how they were split."""

    train: LabelledImages
    val: LabelledImages | None
    notes: list[str] = field(default_factory=list)

    @cached_property
    def fingerprint(self) -> str:
        """Which files train and which validate (paths relative to their folders, so data that
        moved keeps it): a resumed run compares it to tell that its data changed under it.
        Hashed once: a run's split does not change while it trains."""
        digest = hashlib.sha256()
        for role, images in ((b"train", self.train), (b"val", self.val)):
            for path in images.paths if images is not None else ():
                digest.update(role + b"\0" + os.fsencode(path.relative_to(images.root)) + b"\n")
        return digest.hexdigest()

    @cached_property
    def val_gallery(self) -> LabelledImages:
        """The training images validation queries search, as a user's queries search the
        archive a model was trained on: all of them up to MAX_VALIDATION_GALLERY, else a fixed
        sample with each class in proportion (and at least mMV's k of it, where it has them)."""
        images = self.train
        if len(images) <= MAX_VALIDATION_GALLERY:
            return images
        rng = random.Random(0)
        keep: list[int] = []
        for label in sorted(set(images.labels)):
            members = [i for i, own in enumerate(images.labels) if own == label]
            share = round(MAX_VALIDATION_GALLERY * len(members) / len(images))
            keep += rng.sample(members, min(len(members), max(share, DEFAULT_VOTE_K)))
        return _select(images, sorted(keep))


def _select(images: LabelledImages, keep: list[int]) -> LabelledImages:
    return LabelledImages(
        images.root,
        [images.paths[i] for i in keep],
        [images.labels[i] for i in keep],
        images.class_names,
    )


def prepare_splits(config: TrainConfig) -> Splits:
    """Scan the data and hold out validation images: `--val-dir`, or a group-aware fraction."""
    images = scan_labelled_folder(config.data_dir, min_classes=2)
    if config.val_dir:
        if config.colour_groups:
            raise HistoseekError("--colour-groups splits DATA_DIR; it has no use with --val-dir")
        if config.group_regex is not None:
            raise HistoseekError("--group-regex splits DATA_DIR; it has no use with --val-dir")
        val = scan_labelled_folder(config.val_dir, class_names=images.class_names)
        refuse_shared_images(
            val, images, "--val-dir", "validation must be images that training never sees"
        )
        known = [i for i, label in enumerate(val.labels) if label >= 0]
        if len(known) < MIN_VALIDATION_IMAGES:
            raise HistoseekError(
                f"--val-dir {display_path(config.val_dir)} holds {len(known)} image(s) of the "
                f"training classes; validation needs at least {MIN_VALIDATION_IMAGES}"
            )
        return Splits(images, _select(val, known))
    if config.val_fraction <= 0:
        if config.colour_groups:
            raise HistoseekError("--colour-groups chooses validation images; give --val-fraction")
        if config.group_regex is not None:
            raise HistoseekError("--group-regex chooses validation images; give --val-fraction")
        return Splits(images, None)
    notes: list[str] = []
    if config.colour_groups:
        if config.group_regex:
            raise HistoseekError("give --group-regex or --colour-groups, not both")
        per_class = clusters_per_class(config.val_fraction)
        groups = colour_groups(images.paths, images.labels, per_class, config.seed)
    else:
        names = [path.name for path in images.paths]
        # Relative paths, so the split does not depend on where the data lives.
        ids = [str(path.relative_to(images.root)) for path in images.paths]
        groups = group_ids_from_regex(
            names, config.group_regex, "training file names", notes.append, ids
        )
    fractions = [1.0 - config.val_fraction, config.val_fraction]
    assignment = stratified_group_split(images.labels, groups, fractions, config.seed)
    train = _select(images, [i for i, s in enumerate(assignment) if s == 0])
    val = _select(images, [i for i, s in enumerate(assignment) if s == 1])
    if len(val) < MIN_VALIDATION_IMAGES:
        raise HistoseekError(
            f"--val-fraction {config.val_fraction} holds out {len(val)} image(s); validation "
            f"needs at least {MIN_VALIDATION_IMAGES}: raise it, give --val-dir, or pass 0"
        )
    if len(set(train.labels)) < 2:
        raise HistoseekError("too few images to hold out validation; lower --val-fraction")
    return Splits(train, val, notes)


def _readable(path) -> bool:
    try:
        load_rgb(path)
    except UnreadableImageError:
        return False
    return True


def require_readable_classes(images: LabelledImages) -> None:
    """Refuse training images with a class none of whose files decode.

    Training replaces an unreadable image by another of its class, so each class needs one;
    this usually decodes a single file per class.
    """
    for label, name in enumerate(images.class_names):
        members = [
            path for path, own in zip(images.paths, images.labels, strict=True) if own == label
        ]
        if members and not any(_readable(path) for path in members):
            raise HistoseekError(
                f"none of the {len(members)} training image(s) of class {name} can be read"
            )
