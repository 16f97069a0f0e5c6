"""Procedurally generated H&E-like tissue patches, so tests and demos need no third-party images.

Nothing here is real tissue. Each class is a few vectorised numpy rules (jittered grids of
nuclei, Voronoi fat cells, wavy fibres, rings of glandular nuclei) that produce haematoxylin and
eosin stain amounts per pixel; the Beer-Lambert law turns those amounts into colour the way
bright-field light passing through a stained section would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from histoseek import __version__
from histoseek.callbacks import Notify
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_dir, dir_lock, holds_own_output, recover_dir

TISSUE_CLASSES: tuple[str, ...] = ("adipose", "background", "lymphocytes", "mucosa", "stroma")
"""The synthetic classes, in the sorted order a labelled-folder scan gives their folders."""

#: The file every synthetic set holds: how it was made, and the mark by which synth knows its
#: own output.
PROVENANCE_NAME = "SYNTHETIC.md"
MIN_SIZE = 16
"""Smallest width or height, in pixels, that still shows a recognisable texture."""
MAX_SIZE = 8192
"""Largest width or height: a patch is drawn whole in memory, about 60 bytes a pixel."""

# Colour of one unit of each stain on white light; its optical density is -ln(colour / 255).
_HAEMATOXYLIN_RGB = (70, 40, 120)
_EOSIN_RGB = (230, 150, 190)


def _optical_density(rgb: tuple[int, int, int]) -> np.ndarray:
    return -np.log(np.asarray(rgb, dtype=np.float32) / 255.0)


_HAEMATOXYLIN_OD = _optical_density(_HAEMATOXYLIN_RGB)
_EOSIN_OD = _optical_density(_EOSIN_RGB)

_Stains = tuple[np.ndarray, np.ndarray]


class _Canvas:
    """Pixel coordinates of one image, shaped to broadcast: ys is (h, 1), xs is (1, w)."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.ys = np.arange(height, dtype=np.float32)[:, None]
        self.xs = np.arange(width, dtype=np.float32)[None, :]


def _smooth_noise(canvas: _Canvas, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Noise in about [-1, 1] whose blobs are roughly `scale` pixels across."""
    rows = math.ceil(canvas.height / scale) + 2
    cols = math.ceil(canvas.width / scale) + 2
    coarse = rng.uniform(-1.0, 1.0, (rows, cols)).astype(np.float32)
    upsampled = Image.fromarray(coarse).resize(
        (cols * round(scale), rows * round(scale)), Image.Resampling.BICUBIC
    )
    return np.asarray(upsampled, dtype=np.float32)[: canvas.height, : canvas.width]


def _warped(
    field: np.ndarray, canvas: _Canvas, shift: float, rng: np.random.Generator
) -> np.ndarray:
    """`field` with each pixel fetched from up to `shift` pixels away along smooth random paths."""
    # Blobs much larger than the shift keep small shapes nearly undistorted.
    scale = 12 * shift
    rows = np.rint(canvas.ys + shift * _smooth_noise(canvas, scale, rng)).astype(np.intp)
    cols = np.rint(canvas.xs + shift * _smooth_noise(canvas, scale, rng)).astype(np.intp)
    return field[_mirrored(rows, canvas.height), _mirrored(cols, canvas.width)]


def _mirrored(index: np.ndarray, length: int) -> np.ndarray:
    """Indices reflected back into [0, length): clamping instead would smear the border pixels."""
    index = np.abs(index)
    return np.minimum(index, 2 * (length - 1) - index)


def _soft_inside(distance_inside: np.ndarray) -> np.ndarray:
    """1 inside a shape, 0 outside, with a one-pixel ramp at the edge so shapes are antialiased."""
    return np.clip(distance_inside + 0.5, 0.0, 1.0)


class _Blocks:
    """A canvas cut into square `cell`-pixel blocks at a random phase, one shape per block.

    Pixels are laid out as a (rows, cell, cols, cell) array: per-block values shaped `shape`
    (rows, 1, cols, 1) broadcast against the in-block coordinates `ys` (1, cell, 1, 1) and
    `xs` (1, 1, 1, cell), so per-pixel maths needs no gathering. The random phase keeps layers
    drawn with the same block size from lining up.
    """

    def __init__(self, canvas: _Canvas, cell: int, rng: np.random.Generator) -> None:
        self.canvas = canvas
        self.cell = cell
        self.phase_y, self.phase_x = (int(phase) for phase in rng.integers(0, cell, 2))
        self.rows = (canvas.height + self.phase_y) // cell + 1
        self.cols = (canvas.width + self.phase_x) // cell + 1
        self.shape = (self.rows, 1, self.cols, 1)
        local = np.arange(cell, dtype=np.float32)
        self.ys = local[None, :, None, None]
        self.xs = local[None, None, None, :]

    def uniform(self, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
        """One uniform random value per block."""
        return rng.uniform(low, high, self.shape).astype(np.float32)

    def centres(self, margin: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """A random in-block (y, x) per block, at least `margin` pixels inside its borders."""
        room = self.cell - 2 * margin
        return margin + self.uniform(0, 1, rng) * room, margin + self.uniform(0, 1, rng) * room

    def to_canvas(self, blocks: np.ndarray) -> np.ndarray:
        """The canvas-sized image of a (rows, cell, cols, cell) block array."""
        full_shape = (self.rows, self.cell, self.cols, self.cell)
        image = np.broadcast_to(blocks, full_shape).reshape(
            self.rows * self.cell, self.cols * self.cell
        )
        return image[
            self.phase_y : self.phase_y + self.canvas.height,
            self.phase_x : self.phase_x + self.canvas.width,
        ]


def _nuclei(
    canvas: _Canvas,
    rng: np.random.Generator,
    *,
    cell: int,
    presence: float,
    long_radius: tuple[float, float],
    short_radius: tuple[float, float],
    angle: float | None = None,
    angle_spread: float = 0.0,
) -> np.ndarray:
    """Soft masks of elliptical nuclei scaled by their darkness, at most one per block.

    Each nucleus sits wholly inside its own block, so none gets clipped by a block border;
    `angle` None orients them at random, otherwise around `angle` (radians) give or take
    `angle_spread`.
    """
    blocks = _Blocks(canvas, cell, rng)
    long_axis = blocks.uniform(*long_radius, rng)
    short_axis = blocks.uniform(*short_radius, rng)
    centre_y, centre_x = blocks.centres(np.minimum(long_axis + 1.5, cell / 2), rng)
    if angle is None:
        theta = blocks.uniform(0.0, math.pi, rng)
    else:
        theta = (angle + rng.normal(0.0, angle_spread, blocks.shape)).astype(np.float32)
    darkness = blocks.uniform(0.75, 1.0, rng) * (blocks.uniform(0, 1, rng) < presence)

    dy = blocks.ys - centre_y
    dx = blocks.xs - centre_x
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    along = (dx * cos_t + dy * sin_t) / long_axis
    across = (dy * cos_t - dx * sin_t) / short_axis
    radius = np.sqrt(along * along + across * across)
    return blocks.to_canvas(_soft_inside((1.0 - radius) * short_axis) * darkness)


def _lymphocytes(canvas: _Canvas, rng: np.random.Generator) -> _Stains:
    # Overlaid sparse layers of different block sizes, bent by a smooth warp, pack nuclei
    # densely without showing the blocks' lattice.
    presence = rng.uniform(0.7, 0.9)
    round_nuclei = [
        _nuclei(
            canvas,
            rng,
            cell=cell,
            presence=presence,
            long_radius=(4.6, 5.8),
            short_radius=(4.0, 5.0),
        )
        for cell in (19, 22, 25, 29)
    ]
    larger_paler = 0.55 * _nuclei(
        canvas, rng, cell=41, presence=0.2, long_radius=(6.5, 8.5), short_radius=(5.5, 7.0)
    )
    nuclei = _warped(np.maximum(np.maximum.reduce(round_nuclei), larger_paler), canvas, 9.0, rng)
    haematoxylin = 0.06 + 1.05 * nuclei
    eosin = 0.28 + 0.1 * _smooth_noise(canvas, 30, rng)
    return haematoxylin, eosin


def _mucosa(canvas: _Canvas, rng: np.random.Generator) -> _Stains:
    cell = int(rng.integers(84, 110))
    blocks = _Blocks(canvas, cell, rng)
    epithelium = blocks.uniform(14.0, 19.0, rng)
    lumen = np.minimum(blocks.uniform(9.0, 24.0, rng), cell / 2 - 7 - epithelium)
    outer = lumen + epithelium
    centre_y, centre_x = blocks.centres(outer + 3, rng)
    present = blocks.uniform(0, 1, rng) < 0.9
    wobble = [blocks.uniform(0.0, 0.09, rng) for _ in range(2)]
    wobble_phase = [blocks.uniform(0.0, 2 * math.pi, rng) for _ in range(2)]

    dy = blocks.ys - centre_y
    dx = blocks.xs - centre_x
    theta = np.arctan2(dy, dx)
    stretch = (
        1.0
        + wobble[0] * np.sin(2 * theta + wobble_phase[0])
        + wobble[1] * np.sin(3 * theta + wobble_phase[1])
    )
    radius = np.sqrt(dx * dx + dy * dy) / stretch
    in_lumen = _soft_inside(lumen - radius) * present
    in_gland = _soft_inside(outer - radius) * present
    in_epithelium = in_gland - in_lumen

    # Epithelial nuclei stand in a ring near the gland's outer (basal) edge, long axis radial.
    ring_radius = lumen + 0.62 * epithelium
    per_ring = np.floor(2 * math.pi * ring_radius / 7.0)
    slots = int(per_ring.max())
    slot = np.minimum(np.floor((theta + math.pi) / (2 * math.pi) * per_ring), per_ring - 1)
    slot_angle = (slot + 0.5) * (2 * math.pi / per_ring) - math.pi
    block_number = np.arange(blocks.rows * blocks.cols).reshape(blocks.shape)
    slot_number = block_number * slots + slot.astype(np.int64)
    count = blocks.rows * blocks.cols * slots
    nucleus_long = rng.uniform(4.2, 5.6, count).astype(np.float32)[slot_number]
    nucleus_darkness = (rng.uniform(0.7, 1.0, count) * (rng.random(count) < 0.9)).astype(
        np.float32
    )[slot_number]
    across = radius * np.sin(theta - slot_angle) / 2.4
    along = (radius - ring_radius) / nucleus_long
    nucleus = _soft_inside((1.0 - np.sqrt(along * along + across * across)) * 2.4)
    epithelial_nuclei = blocks.to_canvas(nucleus * nucleus_darkness * in_epithelium)
    near_gland = blocks.to_canvas(_soft_inside(outer + 3 - radius) * present)
    in_gland = blocks.to_canvas(in_gland)
    in_lumen = blocks.to_canvas(in_lumen)
    in_epithelium = blocks.to_canvas(in_epithelium)

    # The lamina propria between glands holds scattered round nuclei of passing immune cells.
    lamina_nuclei = [
        _nuclei(
            canvas, rng, cell=17, presence=0.22, long_radius=(3.4, 4.6), short_radius=(2.8, 3.8)
        )
        * (1.0 - near_gland)
        for _ in range(2)
    ]
    lamina = 0.55 + 0.12 * _smooth_noise(canvas, 25, rng)
    eosin = lamina * (1 - in_gland) + 0.42 * in_epithelium + 0.04 * in_lumen
    haematoxylin = (
        0.05
        + 0.12 * in_epithelium
        + np.maximum(0.95 * epithelial_nuclei, np.maximum.reduce(lamina_nuclei))
    )
    return haematoxylin, eosin


def _stroma(canvas: _Canvas, rng: np.random.Generator) -> _Stains:
    direction = rng.uniform(0.0, math.pi)
    spacing = rng.uniform(6.0, 10.0)
    across = canvas.ys * math.cos(direction) - canvas.xs * math.sin(direction)
    waviness = rng.uniform(10.0, 18.0) * _smooth_noise(canvas, rng.uniform(50.0, 90.0), rng)
    fibres = (0.5 + 0.5 * np.sin(across * (2 * math.pi / spacing) + waviness)) ** 2
    eosin = 0.32 + 0.6 * fibres + 0.1 * _smooth_noise(canvas, 20, rng)
    nuclei = _nuclei(
        canvas,
        rng,
        cell=30,
        presence=rng.uniform(0.2, 0.35),
        long_radius=(7.0, 11.0),
        short_radius=(1.8, 2.6),
        angle=direction,
        angle_spread=0.2,
    )
    return 0.04 + 0.9 * nuclei, eosin


def _adipose(canvas: _Canvas, rng: np.random.Generator) -> _Stains:
    cell = int(rng.integers(70, 100))
    rows = canvas.height // cell + 3
    cols = canvas.width // cell + 3
    jitter = rng.uniform(0.15, 0.85, (2, rows, cols))
    seed_y = ((np.arange(rows)[:, None] - 1 + jitter[0]) * cell).astype(np.float32).ravel()
    seed_x = ((np.arange(cols)[None, :] - 1 + jitter[1]) * cell).astype(np.float32).ravel()
    # Warping the coordinates bends the straight Voronoi edges into plump membranes.
    ys = canvas.ys + 4.0 * _smooth_noise(canvas, 40, rng)
    xs = canvas.xs + 4.0 * _smooth_noise(canvas, 40, rng)
    row = np.clip(ys // cell, 0, rows - 3).astype(np.int32) + 1
    col = np.clip(xs // cell, 0, cols - 3).astype(np.int32) + 1
    own_cell = row * cols + col
    nearest = np.full(ys.shape, np.inf, dtype=np.float32)
    second = np.full(ys.shape, np.inf, dtype=np.float32)
    for step_y in (-1, 0, 1):
        for step_x in (-1, 0, 1):
            neighbour = own_cell + (step_y * cols + step_x)
            dy = ys - seed_y[neighbour]
            dx = xs - seed_x[neighbour]
            squared = dy * dy + dx * dx
            np.minimum(second, np.maximum(nearest, squared), out=second)
            np.minimum(nearest, squared, out=nearest)
    to_membrane = (np.sqrt(second) - np.sqrt(nearest)) / 2
    membrane = _soft_inside(rng.uniform(0.9, 1.5) - to_membrane)
    flat_nuclei = _nuclei(
        canvas, rng, cell=45, presence=0.25, long_radius=(5.5, 8.0), short_radius=(1.8, 2.4)
    ) * _soft_inside(5.0 - to_membrane)
    eosin = 0.02 + 0.8 * membrane
    return 0.01 + 0.05 * membrane + 0.85 * flat_nuclei, eosin


def _background(canvas: _Canvas, rng: np.random.Generator) -> _Stains:
    haze = np.clip(_smooth_noise(canvas, rng.uniform(40.0, 120.0), rng), 0.0, 1.0)
    eosin = 0.025 + rng.uniform(0.0, 0.08) * haze
    haematoxylin = 0.01 + 0.01 * _smooth_noise(canvas, 15, rng)
    return haematoxylin, eosin


_RENDERERS: dict[str, Callable[[_Canvas, np.random.Generator], _Stains]] = {
    "adipose": _adipose,
    "background": _background,
    "lymphocytes": _lymphocytes,
    "mucosa": _mucosa,
    "stroma": _stroma,
}


def _to_image(haematoxylin: np.ndarray, eosin: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Beer-Lambert: light through both stains, with per-image stain and lamp variation."""
    grain = rng.standard_normal(haematoxylin.shape, dtype=np.float32)
    haematoxylin = np.clip(haematoxylin * (1.0 + 0.15 * grain), 0.0, None)
    eosin = np.clip(eosin * (1.0 + 0.08 * grain), 0.0, None)
    haematoxylin_od = _HAEMATOXYLIN_OD * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    eosin_od = _EOSIN_OD * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    lamp = rng.uniform(242.0, 255.0, 3).astype(np.float32)
    density = haematoxylin[..., None] * haematoxylin_od + eosin[..., None] * eosin_od
    rgb = np.clip(lamp * np.exp(-density) + 0.5, 0, 255).astype(np.uint8)
    # A touch of optical blur, as a real objective has, softens the per-pixel grain.
    return Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(0.6))


def _check_size(width: int, height: int) -> None:
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise HistoseekError(
            f"synthetic images are {MIN_SIZE} to {MAX_SIZE} pixels a side, got {width}x{height}"
            " (for larger, draw slides with --slides)"
        )


def render_tissue(tissue: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Render one synthetic H&E-like RGB image of `tissue` with `size` = (width, height) pixels.

    The image depends only on the arguments and the state of `rng`, and its texture has a fixed
    pixel scale (about 0.5 micrometre per pixel), so a larger size shows a larger field of view.
    """
    checked_classes([tissue])
    width, height = size
    _check_size(width, height)
    canvas = _Canvas(width, height)
    haematoxylin, eosin = _RENDERERS[tissue](canvas, rng)
    return _to_image(haematoxylin, eosin, rng)


def checked_classes(
    classes: Sequence[str] | None,
    allowed: Sequence[str] = TISSUE_CLASSES,
    refused: Mapping[str, str] | None = None,
) -> list[str]:
    """The classes asked for, once each in the order given (None: all of `allowed`); an
    empty or unknown choice is one line, and `refused` says why a known name is not allowed."""
    if classes is None:
        return list(allowed)
    names = list(dict.fromkeys(classes))
    choose = f"choose from {', '.join(allowed)}"
    if not names:
        raise HistoseekError(f"no tissue classes given; {choose}")
    for name in names:
        if refused and name in refused:
            raise HistoseekError(f"{refused[name]} ({choose})")
        if name not in allowed:
            raise HistoseekError(f"unknown tissue class {name!r}; {choose}")
    return names


def provenance(title: str, body: str, facts: Mapping[str, object], command: str) -> str:
    """The SYNTHETIC.md of a generated folder: what it is (never real tissue), its settings
    and the command that regenerates it."""
    listed = "".join(f"- {name}: {value}\n" for name, value in facts.items())
    return (
        f"# {title} - not real tissue\n\n{body}\n\n{listed}\n"
        f"The same histoseek version regenerates identical files with:\n\n    {command}\n"
    )


def _provenance(per_class: int, width: int, height: int, seed: int, names: list[str]) -> str:
    command = (
        f"histoseek synth OUT --per-class {per_class} --size {width} --height {height} "
        f"--classes {','.join(names)} --seed {seed}"
    )
    body = (
        "Every image in this folder was generated procedurally by `histoseek synth` "
        f"(histoseek {__version__}). None of them shows real tissue or comes from a real slide: "
        "they are drawn from simple rules (round nuclei, rings of glandular nuclei, wavy fibres, "
        "fat-cell membranes) in haematoxylin-and-eosin colours, for tests, demos and checking a "
        "pipeline end to end. Results measured on them say nothing about real histopathology.\n\n"
        "Layout: `<class>/synthetic_<class>_<NNNN>.png`; the folder name is the label."
    )
    facts = {
        "classes": ", ".join(names),
        "images per class": per_class,
        "image size": f"{width}x{height} pixels",
        "seed": seed,
    }
    return provenance("Synthetic H&E-like patches", body, facts, command)


@contextmanager
def replacing_output(out: Path, overwrite: bool, notify: Notify) -> Iterator[Path]:
    """Yield the folder to write a synthetic set into; it replaces `out` when the block ends.

    One run at a time writes `out` (another is refused); what a killed run left beside it is
    first put back or removed, which `notify` reports. Anything at `out` but an earlier
    synthetic set is refused, and such a set unless `overwrite`.
    """
    with dir_lock(out, purpose="histoseek synth run", wait_flag=None):
        recover_dir(out, accept=lambda folder: (folder / PROVENANCE_NAME).is_file(), notify=notify)
        if holds_own_output(out, PROVENANCE_NAME, "histoseek synth") and not overwrite:
            raise HistoseekError(
                f"{display_path(out)} already holds a synthetic set; use --overwrite to replace it"
            )
        with atomic_dir(out) as staging:
            yield staging


def write_synthetic_set(
    out: Path,
    per_class: int,
    size: int,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    height: int | None = None,
    overwrite: bool = False,
    notify: Notify = lambda message: None,
) -> list[Path]:
    """Write `per_class` synthetic PNGs of each class to out/<class>/ atomically; return them.

    Images are `size` pixels wide and `height` (default `size`) high. Image i of a class
    depends only on (seed, class, i), so the same options always give byte-identical files,
    and asking for more images or fewer classes leaves the others unchanged. One run at a
    time writes `out`, and what a killed one left beside it is first put back or removed,
    which `notify` reports.
    """
    out = Path(out)
    names = checked_classes(classes)
    width, height = size, size if height is None else height
    if per_class < 1:
        raise HistoseekError(f"need at least 1 image per class, got {per_class}")
    _check_size(width, height)
    if seed < 0:
        raise HistoseekError(f"the seed must be 0 or more, got {seed}")
    written: list[Path] = []
    with replacing_output(out, overwrite, notify) as staging:
        for name in names:
            (staging / name).mkdir()
            class_number = TISSUE_CLASSES.index(name)
            for number in range(per_class):
                rng = np.random.default_rng([seed, class_number, number])
                file_name = f"synthetic_{name}_{number:04d}.png"
                image = render_tissue(name, (width, height), rng)
                # Fast compression: these files are cheap to regenerate, large ones slow to pack.
                image.save(staging / name / file_name, compress_level=1)
                written.append(out / name / file_name)
        (staging / PROVENANCE_NAME).write_text(
            _provenance(per_class, width, height, seed, names), encoding="utf-8"
        )
    return written
