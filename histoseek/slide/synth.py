"""Synthetic whole-slide images: pieces of one synthetic tissue class on glass, as TIFF pyramids.

Nothing here is real tissue: each piece is drawn by histoseek.data.synth (the same rules as the
synthetic patches) and cut to a rounded, wobbly outline, as sections lie on a slide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoseek import __version__
from histoseek.callbacks import Notify, Progress
from histoseek.data.synth import (
    PROVENANCE_NAME,
    TISSUE_CLASSES,
    checked_classes,
    provenance,
    render_tissue,
    replacing_output,
)
from histoseek.errors import HistoseekError
from histoseek.slide.defaults import DEFAULT_SLIDE_SIZE, DEFAULT_SLIDES_PER_CLASS, SLIDE_CLASSES
from histoseek.slide.pyramid import write_pyramidal_tiff

SLIDE_MPP = 0.5
"""Level-0 microns per pixel of every synthetic slide (the synthetic textures' own scale)."""

MIN_SLIDE_SIDE = 1024
MAX_SLIDE_SIDE = 16384
"""Slides are drawn whole in memory before writing: 16384² px is 0.75 GiB of RGB."""

GLASS = 243
# Tissue pieces sit one per cell of a grid of about this many pixels a side; drawing cost
# grows with a piece's area, so pieces stay below MAX_PIECE_SIDE.
CELL_SIDE = 2700
MAX_PIECE_SIDE = 2048
# A separate random stream from the synthetic patches' (seed, class, number).
_SLIDE_STREAM = 1


def _outline(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Opacity in 0..1 of a rounded blob filling a width × height box, its edge wobbling."""
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height * 2 - 1
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width * 2 - 1
    radius = np.sqrt(xs * xs + ys * ys)
    angle = np.arctan2(ys, xs)
    edge = np.full_like(radius, 0.86)
    for lobes in (2, 3, 5):
        edge += rng.uniform(0.02, 0.06) * np.sin(lobes * angle + rng.uniform(0, 2 * math.pi))
    # Distance to the edge in pixels (roughly): a 3-pixel ramp antialiases the outline.
    inside = (edge - radius) * (min(width, height) / 2)
    return np.clip(inside / 3.0 + 0.5, 0.0, 1.0)


def render_slide(tissue: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 slide of `tissue` pieces on glass, from `rng` alone."""
    canvas = np.full((height, width, 3), GLASS, dtype=np.uint8)
    columns = max(1, round(width / CELL_SIDE))
    rows = max(1, round(height / CELL_SIDE))
    cell_width, cell_height = width // columns, height // rows
    for row in range(rows):
        for column in range(columns):
            piece_width = min(MAX_PIECE_SIDE, int(cell_width * rng.uniform(0.6, 0.85)))
            piece_height = min(MAX_PIECE_SIDE, int(cell_height * rng.uniform(0.6, 0.85)))
            x = column * cell_width + int(rng.integers(0, cell_width - piece_width + 1))
            y = row * cell_height + int(rng.integers(0, cell_height - piece_height + 1))
            texture = np.asarray(render_tissue(tissue, (piece_width, piece_height), rng))
            opacity = _outline(piece_width, piece_height, rng)[..., None]
            region = canvas[y : y + piece_height, x : x + piece_width]
            mixed = region * (1.0 - opacity) + texture * opacity
            region[:] = np.rint(mixed).astype(np.uint8)
    return canvas


def slide_description(tissue: str, number: int, seed: int) -> str:
    """The ImageDescription of a synthetic slide: says plainly that it is not real tissue."""
    return (
        f"histoseek synthetic slide - NOT REAL TISSUE - class {tissue}, number {number}, "
        f"seed {seed}, {SLIDE_MPP} um/px at level 0, drawn by histoseek {__version__}"
    )


NO_BLANK_SLIDES = "synthetic slides show tissue on glass; 'background' would be a blank slide"


def _provenance(per_class: int, width: int, height: int, seed: int, names: list[str]) -> str:
    command = (
        f"histoseek synth OUT --slides --per-class {per_class} --size {width} --height {height} "
        f"--classes {','.join(names)} --seed {seed}"
    )
    body = (
        "Every slide in this folder was generated procedurally by `histoseek synth --slides` "
        f"(histoseek {__version__}). None of them shows real tissue or comes from a scanner: "
        "each holds a few pieces of one synthetic tissue class (the same drawing rules as "
        "`histoseek synth` patches) on blank glass, for tests, demos and checking the slide "
        "pipeline end to end. Results measured on them say nothing about real histopathology. "
        "Each file's ImageDescription says so too.\n\n"
        "Layout: `<class>/synthetic_<class>_slide_<NNNN>.tif`; the folder name is the label. "
        f"Each is a tiled, zlib-compressed pyramidal TIFF (levels halving down to at most "
        f"512 px), {SLIDE_MPP} µm per pixel at level 0, recorded in its resolution tags."
    )
    facts = {
        "classes": ", ".join(names),
        "slides per class": per_class,
        "level-0 size": f"{width}x{height} pixels",
        "seed": seed,
    }
    return provenance("Synthetic H&E-like whole-slide images", body, facts, command)


def write_synthetic_slides(
    out: Path,
    per_class: int = DEFAULT_SLIDES_PER_CLASS,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    size: tuple[int, int] = DEFAULT_SLIDE_SIZE,
    overwrite: bool = False,
    progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> list[Path]:
    """Write `per_class` synthetic pyramidal slides of each class to out/<class>/; return them.

    `size` is level 0's (width, height). Slide i of a class depends only on (seed, class, i),
    so the same options give byte-identical files. The folder appears only when complete;
    `progress(done, total)` is called after each slide. One run at a time writes `out`, and
    what a killed one left beside it is first put back or removed, which `notify` reports.
    """
    out = Path(out)
    names = checked_classes(
        classes,
        SLIDE_CLASSES,
        {"background": NO_BLANK_SLIDES},
    )
    width, height = size
    if per_class < 1:
        raise HistoseekError(f"need at least 1 slide per class, got {per_class}")
    if not (
        MIN_SLIDE_SIDE <= width <= MAX_SLIDE_SIDE and MIN_SLIDE_SIDE <= height <= MAX_SLIDE_SIDE
    ):
        raise HistoseekError(
            f"synthetic slides are {MIN_SLIDE_SIDE} to {MAX_SLIDE_SIDE} pixels a side, "
            f"not {width}x{height}"
        )
    if seed < 0:
        raise HistoseekError(f"the seed must be 0 or more, got {seed}")
    written: list[Path] = []
    total = len(names) * per_class
    with replacing_output(out, overwrite, notify) as staging:
        for name in names:
            class_number = TISSUE_CLASSES.index(name)
            for number in range(per_class):
                rng = np.random.default_rng([seed, class_number, number, _SLIDE_STREAM])
                file_name = f"synthetic_{name}_slide_{number:04d}.tif"
                write_pyramidal_tiff(
                    staging / name / file_name,
                    render_slide(name, width, height, rng),
                    slide_description(name, number, seed),
                    SLIDE_MPP,
                )
                written.append(out / name / file_name)
                if progress:
                    progress(len(written), total)
        (staging / PROVENANCE_NAME).write_text(
            _provenance(per_class, width, height, seed, names), encoding="utf-8"
        )
    return written
