"""Orchestrating a preparation: scan, split, tile in parallel, write patches and a manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from histoseek import __version__
from histoseek.callbacks import Notify
from histoseek.data.folder import display_path
from histoseek.data.images import pixel_limit
from histoseek.data.split import parse_fractions, stratified_group_split
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_dir, dir_lock, holds_own_output, recover_dir
from histoseek.prepare.defaults import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_TISSUE,
    DEFAULT_PATCH_SIZE,
    DEFAULT_SPLIT,
    STAIN_METHODS,
)
from histoseek.prepare.layouts import Discovery, SourceImage, discover
from histoseek.prepare.stain import StainNormalizer, fit_normalizer
from histoseek.prepare.tiling import tile_origins, tissue_fractions
from histoseek.prepare.tissue import tissue_mask
from histoseek.slide.reader import Slide, SlideError, is_slide_file, open_slide

SPLIT_NAMES = {1: ("train",), 2: ("train", "test"), 3: ("train", "val", "test")}
MAX_DEFAULT_WORKERS = 8
# Tissue is measured on the image resampled by --scale up to this size; a larger one is shrunk
# to it first (about 0.3 GB of working memory per worker).
MAX_OVERVIEW_PIXELS = 4096 * 4096
# The most patch positions one source image may have (each is held in memory while it is cut):
# far above a whole slide at 40x cut at half-patch strides, far below what exhausts memory.
MAX_PATCHES_PER_IMAGE = 4_000_000
MANIFEST = "manifest.csv"
SKIPPED = "skipped.txt"
RECORD = "prepare.json"
MANIFEST_COLUMNS = (
    "path",
    "label",
    "split",
    "source",
    "group",
    "x",
    "y",
    "scale",
    "tissue_fraction",
    "stain",
)


@dataclass(frozen=True)
class PrepareOptions:
    """How to cut a dataset into patches; everything here is recorded in prepare.json."""

    layout: str
    patch_size: int = DEFAULT_PATCH_SIZE
    stride: int | None = None
    scale: float = 1.0
    min_tissue: float = DEFAULT_MIN_TISSUE
    split: str | None = None
    seed: int = 0
    normalize: str | None = None
    reference: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    group_regex: str | None = None

    @property
    def step(self) -> int:
        """The stride actually used: the patch size unless given."""
        return self.stride or self.patch_size

    def record(self, official_split: bool) -> dict:
        """The options as JSON, with defaults resolved so that equal runs compare equal."""
        record = asdict(self)
        record["stride"] = self.step
        record["reference"] = str(self.reference.resolve()) if self.reference else None
        record["split"] = (
            "official" if official_split else parse_fractions(self.split or DEFAULT_SPLIT)
        )
        return record


@dataclass
class PrepareSummary:
    """What a preparation wrote, for the screen."""

    output: Path
    classes: list[str]
    splits: list[str]
    counts: dict[str, Counter]
    sources: int
    skipped: list[tuple[str, str]]
    sources_without_patches: int
    notes: list[str] = field(default_factory=list)

    @property
    def patches(self) -> int:
        """Patches written in all splits."""
        return sum(sum(counter.values()) for counter in self.counts.values())


@dataclass(frozen=True)
class _Task:
    """One source image for a worker: where it goes and how to cut it."""

    image: SourceImage
    split: str
    source_id: str
    staging: Path
    options: PrepareOptions
    normalizer: StainNormalizer | None


@dataclass(frozen=True)
class _Outcome:
    """A worker's answer: the manifest rows of its patches, or why the image was skipped."""

    relative: str
    label: str
    split: str
    rows: list[dict]
    skipped_because: str | None = None
    patches_cut: int = 0  # whole patches on the grid, before the tissue filter
    too_little_stain: bool = False  # for --normalize macenko: left as it was


def _tile_source(task: _Task) -> _Outcome:
    """Cut one source image into patches on disk; runs in a worker process."""
    try:
        with open_slide(task.image.path, max_pixels=task.options.max_pixels) as slide:
            return _cut(slide, task)
    except SlideError as error:
        reason = str(error).removeprefix(f"{display_path(task.image.path)}: ")
        return _Outcome(task.image.relative, task.image.label, task.split, [], reason)


def _cut(slide: Slide, task: _Task) -> _Outcome:
    """Write the patches of one opened image or slide; the outcome with their manifest rows.

    The grid is laid over the image resampled by --scale. Tissue is measured, and stains are
    fitted, on an overview of it: the resampled image itself, or for one of more than
    MAX_OVERVIEW_PIXELS a smaller copy. Each kept patch is then read on its own (a slide
    from its best pyramid level), so no large image is ever held in memory at full size.
    """
    options = task.options
    scale, size = options.scale, options.patch_size
    width, height = slide.dimensions
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    _check_grid(task, scaled)
    shrink = max(1.0, math.sqrt(scaled[0] * scaled[1] / MAX_OVERVIEW_PIXELS))
    overview_size = (max(1, round(scaled[0] / shrink)), max(1, round(scaled[1] / shrink)))
    overview = np.asarray(slide.read_scaled(0, 0, width, height, *overview_size))
    mask = tissue_mask(overview)
    recolour = task.normalizer.fitted_to(overview) if task.normalizer is not None else None
    too_little_stain = task.normalizer is not None and recolour is None
    del overview
    origins = tile_origins(scaled[0], scaled[1], size, options.step)
    folder = task.staging / task.split / task.image.label
    rows = []
    for (x, y), fraction in zip(
        origins, tissue_fractions(mask, origins, size, shrink), strict=True
    ):
        if fraction < options.min_tissue:
            continue
        patch = slide.read_scaled(x / scale, y / scale, size / scale, size / scale, size, size)
        if recolour is not None:
            patch = Image.fromarray(recolour(np.asarray(patch)))
        name = f"{task.source_id}_{x}_{y}.png"
        folder.mkdir(parents=True, exist_ok=True)
        patch.save(folder / name)
        rows.append(
            {
                "path": f"{task.split}/{task.image.label}/{name}",
                "label": task.image.label,
                "split": task.split,
                "source": task.image.relative,
                "group": task.image.group,
                "x": x,
                "y": y,
                "scale": options.scale,
                "tissue_fraction": round(fraction, 4),
                "stain": "none" if recolour is None else options.normalize,
            }
        )
    return _Outcome(
        task.image.relative,
        task.image.label,
        task.split,
        rows,
        patches_cut=len(origins),
        too_little_stain=too_little_stain,
    )


def _check_grid(task: _Task, scaled: tuple[int, int]) -> None:
    """Refuse an image whose grid of patches, after --scale and --stride, is too large to hold."""
    options = task.options
    size, step = options.patch_size, options.step
    count = max(0, (scaled[0] - size) // step + 1) * max(0, (scaled[1] - size) // step + 1)
    if count > MAX_PATCHES_PER_IMAGE:
        raise HistoseekError(
            f"{task.image.relative} resampled by --scale {options.scale:g} is "
            f"{scaled[0]}×{scaled[1]} px: --patch-size {size} and --stride {step} would cut it "
            f"into {count:,} patches, more than {MAX_PATCHES_PER_IMAGE:,}; "
            "lower --scale or raise --stride"
        )


def _validate(options: PrepareOptions, discovery: Discovery) -> tuple[str, ...]:
    """Check the options against each other and the layout; return the split names."""
    if options.patch_size < 1 or options.step < 1:
        raise HistoseekError("--patch-size and --stride must be at least 1")
    if not options.scale > 0:
        raise HistoseekError(f"--scale must be positive, not {options.scale}")
    if not 0.0 <= options.min_tissue <= 1.0:
        raise HistoseekError(f"--min-tissue is a fraction from 0 to 1, not {options.min_tissue}")
    if options.max_pixels < 1:
        raise HistoseekError("--max-pixels must be at least 1")
    if options.normalize is not None and options.normalize not in STAIN_METHODS:
        raise HistoseekError(
            f"unknown --normalize {options.normalize!r}; use one of {STAIN_METHODS}"
        )
    if (options.normalize is None) != (options.reference is None):
        raise HistoseekError("--normalize and --reference go together: give both or neither")
    if discovery.official_split:
        if options.split is not None:
            raise HistoseekError(
                f"the {options.layout} layout has an official split; --split does not apply"
            )
        return tuple(sorted({image.split for image in discovery.images}, key=_split_order))
    fractions = parse_fractions(options.split or DEFAULT_SPLIT)
    if len(fractions) not in SPLIT_NAMES:
        raise HistoseekError("--split takes 1 to 3 fractions (train[,val],test)")
    return SPLIT_NAMES[len(fractions)]


def _split_order(name: str) -> int:
    return SPLIT_NAMES[3].index(name) if name in SPLIT_NAMES[3] else len(SPLIT_NAMES[3])


def _assign_splits(options: PrepareOptions, discovery: Discovery, names: tuple[str, ...]):
    """The split of each source image: official, or stratified by class and grouped."""
    if discovery.official_split:
        return [image.split for image in discovery.images]
    fractions = parse_fractions(options.split or DEFAULT_SPLIT)
    assignment = stratified_group_split(
        [image.label for image in discovery.images],
        [image.group for image in discovery.images],
        fractions,
        options.seed,
    )
    return [names[index] for index in assignment]


#: The most of a source's stem that patch names keep: with a hash and "_<x>_<y>.png" after
#: it, a name stays within the 255 bytes file systems allow.
MAX_ID_STEM = 200


def _source_ids(images: list[SourceImage]) -> list[str]:
    """A file-name-safe id per image: its stem, plus a hash of its path where stems repeat or
    are cut to MAX_ID_STEM."""
    stems = [re.sub(r"[^A-Za-z0-9.-]+", "_", Path(image.relative).stem) for image in images]
    kept = [stem[:MAX_ID_STEM] for stem in stems]
    repeats = Counter(kept)
    return [
        short
        if repeats[short] == 1 and short == stem
        else f"{short}-{hashlib.sha1(os.fsencode(image.path)).hexdigest()[:8]}"
        for short, stem, image in zip(kept, stems, images, strict=True)
    ]


def _check_paths(src: Path, out: Path, record: dict, overwrite: bool) -> None:
    """Refuse an output that overlaps SRC or holds anything but a preparation, and one that
    holds a preparation unless --overwrite."""
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real in out_real.parents:
        raise HistoseekError(f"the output {display_path(out)} must not lie inside SRC")
    if out_real in src_real.parents:
        raise HistoseekError(f"SRC lies inside the output {display_path(out)}; choose another -o")
    if not holds_own_output(out, RECORD, "histoseek prepare") or overwrite:
        return
    try:
        previous = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("options"), dict):
        raise HistoseekError(
            f"{display_path(out / RECORD)} is damaged (it is not a preparation record); "
            "choose another -o or pass --overwrite"
        )
    mine = {key: record[key] for key in ("layout", "source", "options")}
    theirs = {key: previous.get(key) for key in mine}
    if theirs == mine:
        raise HistoseekError(
            f"{display_path(out)} already holds this preparation; pass --overwrite to redo it"
        )
    changed = sorted(
        key
        for key in set(mine["options"]) | set(theirs["options"])
        if mine["options"].get(key) != theirs["options"].get(key)
    ) + [key for key in ("layout", "source") if mine[key] != theirs[key]]
    raise HistoseekError(
        f"{display_path(out)} holds a different preparation (differs in: {', '.join(changed)}); "
        "pass --overwrite to replace it"
    )


def _check_sizes(images: list[SourceImage], max_pixels: int) -> None:
    """Refuse, before any work, plain images too large to decode under --max-pixels (slides
    are read region by region, so they are never held to it)."""
    too_large = []
    for image in images:
        if is_slide_file(image.path):
            continue
        try:
            with pixel_limit(max_pixels), Image.open(image.path) as opened:
                width, height = opened.size
        except (OSError, ValueError, SyntaxError):
            continue  # the worker lists it as unreadable
        if width * height > max_pixels:
            too_large.append((width * height, width, height, image.relative))
    if too_large:
        pixels, width, height, name = max(too_large)
        raise HistoseekError(
            f"{len(too_large)} image(s) exceed --max-pixels {max_pixels:,} (the largest, {name}, "
            f"is {width}×{height} = {pixels:,} pixels); pass --max-pixels {pixels} to read them "
            f"whole (about {pixels * 3 / 2**30:.1f} GiB each in memory), or convert them to "
            "tiled pyramidal TIFFs, which are read piece by piece"
        )


def _default_workers() -> int:
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def _run(
    tasks: list[_Task], workers: int, progress: Callable[[int, int], None] | None
) -> list[_Outcome]:
    """Tile every task, in-process (workers=0) or in a pool of spawned processes."""
    outcomes = []
    if workers == 0:
        for task in tasks:
            outcomes.append(_tile_source(task))
            if progress:
                progress(len(outcomes), len(tasks))
        return outcomes
    # Spawned, not forked: a fork of a process that has started threads (torch, BLAS) can hang.
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")
    )
    try:
        for future in as_completed([pool.submit(_tile_source, task) for task in tasks]):
            outcomes.append(future.result())
            if progress:
                progress(len(outcomes), len(tasks))
    except BrokenProcessPool:
        raise HistoseekError(
            "a worker process died while tiling (out of memory?); try fewer --workers"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _why_no_patch(outcomes: list[_Outcome], options: PrepareOptions) -> str:
    """Why these images (of one class or split) gave no patch, and the option that changes it."""
    if all(outcome.skipped_because is not None for outcome in outcomes):
        return f"all {len(outcomes)} of its image(s) are unreadable (listed in {SKIPPED})"
    if not any(outcome.patches_cut for outcome in outcomes):
        size = options.patch_size
        scaled = f" after --scale {options.scale:g}" if options.scale != 1.0 else ""
        return (
            f"its images are smaller than one {size}×{size} patch{scaled} "
            f"(--patch-size {size}); lower --patch-size to keep it"
        )
    return (
        f"every patch had less than {options.min_tissue:.0%} tissue "
        f"(--min-tissue {options.min_tissue:g}); lower --min-tissue to keep it"
    )


def _empty_warnings(
    outcomes: list[_Outcome],
    discovery: Discovery,
    split_names: tuple[str, ...],
    options: PrepareOptions,
) -> list[str]:
    """A line for each class and each split that came out without a single patch."""
    warnings = []
    for name in discovery.classes:
        mine = [outcome for outcome in outcomes if outcome.label == name]
        if mine and not any(outcome.rows for outcome in mine):
            warnings.append(f"class {name} gave no patch: {_why_no_patch(mine, options)}")
    for name in split_names:
        mine = [outcome for outcome in outcomes if outcome.split == name]
        if mine and not any(outcome.rows for outcome in mine):
            warnings.append(f"split {name} gave no patch: {_why_no_patch(mine, options)}")
    if not discovery.official_split:
        split = options.split or DEFAULT_SPLIT
        fractions = parse_fractions(split)
        # stratified_group_split fills every split with a share while groups last.
        unfilled = [
            name
            for name, fraction in zip(split_names, fractions, strict=True)
            if fraction > 0 and not any(outcome.split == name for outcome in outcomes)
        ]
        if unfilled:
            groups = len({image.group for image in discovery.images})
            shared = sum(fraction > 0 for fraction in fractions)
            warnings.append(
                f"{'splits' if len(unfilled) > 1 else 'split'} {', '.join(unfilled)} "
                f"got no source image: {groups} group(s) of images "
                f"cannot fill the {shared} splits of --split {split}; give fewer --split "
                "fractions, or more images"
            )
    return warnings


def _write_table(path: Path, rows: list[dict]) -> None:
    # surrogateescape keeps non-UTF-8 names byte-identical to the files on disk.
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def prepare_dataset(
    src: Path,
    out: Path,
    options: PrepareOptions,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    notify: Notify = lambda message: None,
) -> PrepareSummary:
    """Cut every image of `src` into labelled patches under `out`/<split>/<class>/.

    The output appears only when everything is written (built in a temporary folder beside
    it); `progress(done, total)` is called after each source image. One run at a time writes
    `out` (another is refused), and what a killed run left beside it is first put back or
    removed, which `notify` reports.
    """
    src, out = Path(src), Path(out)
    with dir_lock(out, purpose="histoseek prepare run", wait_flag=None):
        recover_dir(out, accept=lambda folder: (folder / RECORD).is_file(), notify=notify)
        return _prepare(src, out, options, workers, overwrite, progress)


def _prepare(
    src: Path,
    out: Path,
    options: PrepareOptions,
    workers: int | None,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
) -> PrepareSummary:
    discovery = discover(options.layout, src, options.group_regex)
    split_names = _validate(options, discovery)
    record = {
        "histoseek_version": __version__,
        "layout": options.layout,
        "source": str(src.resolve()),
        "options": options.record(discovery.official_split),
    }
    _check_paths(src, out, record, overwrite)
    _check_sizes(discovery.images, options.max_pixels)
    normalizer = None
    if options.normalize:
        with pixel_limit(options.max_pixels):  # the reference is read as the sources are
            normalizer = fit_normalizer(options.normalize, options.reference)
    record["normalization"] = (
        {
            "method": normalizer.method,
            "reference": record["options"]["reference"],
            "parameters": normalizer.parameters(),
        }
        if normalizer
        else None
    )
    splits = _assign_splits(options, discovery, split_names)
    ids = _source_ids(discovery.images)
    workers = _default_workers() if workers is None else workers
    with atomic_dir(out) as staging:
        tasks = [
            _Task(image, split, source_id, staging, options, normalizer)
            for image, split, source_id in zip(discovery.images, splits, ids, strict=True)
        ]
        outcomes = _run(tasks, workers, progress)
        class_order = {name: i for i, name in enumerate(discovery.classes)}
        rows = sorted(
            (row for outcome in outcomes for row in outcome.rows),
            key=lambda r: (_split_order(r["split"]), class_order[r["label"]], r["path"]),
        )
        skipped = sorted(
            [(o.relative, o.skipped_because) for o in outcomes if o.skipped_because is not None]
            + [
                (display_path(entry.path.relative_to(src).as_posix()), entry.reason)
                for entry in discovery.skipped
            ]
        )
        if outcomes and all(outcome.skipped_because is not None for outcome in outcomes):
            first, reason = skipped[0]
            raise HistoseekError(
                f"none of the {len(outcomes)} image(s) could be read (the first, {first}: {reason})"
            )
        if not rows:
            raise HistoseekError(
                f"no patch of {options.patch_size} px holds at least {options.min_tissue:.0%} "
                f"tissue ({len(skipped)} image(s) unreadable); lower --min-tissue or --patch-size"
            )
        counts = {name: Counter() for name in split_names}
        for row in rows:
            counts[row["split"]][row["label"]] += 1
        _write_table(staging / MANIFEST, rows)
        (staging / SKIPPED).write_text(
            "".join(f"{name}\t{reason}\n" for name, reason in skipped),
            encoding="utf-8",
            errors="surrogateescape",
        )
        record["classes"] = discovery.classes
        record["patches"] = {split: dict(counter) for split, counter in counts.items()}
        record["skipped"] = len(skipped)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return PrepareSummary(
        output=out,
        classes=discovery.classes,
        splits=list(split_names),
        counts=counts,
        sources=len(discovery.images),
        skipped=skipped,
        sources_without_patches=sum(
            1 for o in outcomes if not o.rows and o.skipped_because is None
        ),
        notes=discovery.notes
        + _unnormalised_note(outcomes, options)
        + _empty_warnings(outcomes, discovery, split_names, options),
    )


def _unnormalised_note(outcomes: list[_Outcome], options: PrepareOptions) -> list[str]:
    """A line naming the source images --normalize could not fit and left as they were."""
    left = [outcome.relative for outcome in outcomes if outcome.too_little_stain and outcome.rows]
    if not left:
        return []
    shown = ", ".join(left[:3]) + (f", … ({len(left) - 3} more)" if len(left) > 3 else "")
    return [
        f"{len(left)} source image(s) hold too little stain to fit --normalize "
        f"{options.normalize}; their patches are not normalised (stain none in manifest.csv): "
        f"{shown}"
    ]
