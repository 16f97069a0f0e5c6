"""One reader for whole-slide images (through OpenSlide) and plain images (through Pillow).

Both kinds answer the same questions: level-0 size, pyramid levels, microns per pixel (mpp),
RGB regions at a level, resampled regions and a thumbnail. A plain image is a slide of one
level that is decoded whole when opened, so it is held to the `max_pixels` limit; a slide that
OpenSlide opens is only ever read region by region.
"""

from __future__ import annotations

import abc
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType

import numpy as np
from PIL import Image

from histoseek.data.folder import display_path
from histoseek.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    current_pixel_limit,
    load_rgb,
    pixel_limit,
    to_rgb,
)
from histoseek.errors import HistoseekError
from histoseek.slide.defaults import MPP_RANGE

VENDOR_EXTENSIONS = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".czi", ".dcm"}
)
"""Extensions that are always slides (formats of OpenSlide 4.0's vendor drivers)."""

TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
"""Extensions that are slides when tiled (generic, Aperio, Philips, Ventana...), else plain."""

# Level sizes are rounded, so a level meant as 4x down may measure 4.004x; this much coarser
# than asked still counts as fine enough.
LEVEL_TOLERANCE = 0.01
# Level sizes are level 0's divided by the downsample and rounded, and OpenSlide makes some
# levels from others (Hamamatsu's), rounding again: a side may be this many pixels off.
LEVEL_ROUNDING = 2
# The most pixels one region read may return (256 MiB as RGBA): larger reads go piece by piece.
MAX_REGION_PIXELS = 2**26
# Side, in pixels of the level read, of the pieces read_scaled reads one at a time.
PIECE_SIDE = 2048
THUMBNAIL_SIZE = 1024
_INSTALL = "pip install openslide-python openslide-bin"


class SlideError(HistoseekError):
    """A slide or image that cannot be opened or read; the message names the file and why."""


class UnknownMppError(SlideError):
    """A slide whose microns per pixel are unknown, so it cannot be tiled at a target mpp."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample from level 0."""

    width: int
    height: int
    downsample: float


def _openslide() -> ModuleType:
    """The openslide module, imported on first use; a missing install is one clear line."""
    try:
        import openslide
    except (ImportError, OSError) as error:
        raise HistoseekError(f"reading slides needs OpenSlide ({error}); {_INSTALL}") from None
    return openslide


def is_slide_file(path: Path | str) -> bool:
    """Whether OpenSlide should read this file: a vendor extension, or a tiled TIFF.

    A .tif/.tiff is a slide when OpenSlide recognises it (it is tiled: generic pyramidal
    TIFF, Aperio, Philips, Ventana, Trestle), or when its first directory is tiled although
    OpenSlide does not recognise it: a truncated or corrupt slide, which Pillow could still
    decode as one plain image of its level 0 (or a part of it), so it must fail as a slide.
    A stripped TIFF is a plain image.
    """
    suffix = Path(path).suffix.lower()
    if suffix in VENDOR_EXTENSIONS:
        return True
    if suffix in TIFF_EXTENSIONS:
        return _openslide().OpenSlide.detect_format(str(path)) is not None or _tiled(path)
    return False


_TILE_WIDTH = 322
# Per TIFF version (42 classic, 43 BigTIFF): where the first directory's offset is in the
# header and its format, then the format of a directory's tag count and the size of a tag.
_LAYOUT = {42: (4, "I", "H", 12), 43: (8, "Q", "Q", 20)}
# No TIFF directory holds nearly this many tags: a larger count is corrupt, and no more are read.
_MAX_TAGS = 4096


def _tiled(path: Path | str) -> bool:
    """Whether the TIFF's first directory has a TileWidth tag, from its header alone.

    Parsed here rather than with Pillow or tifffile: they check the image size against the
    pixel limit or log warnings about broken headers, and only this one tag is needed. A file
    that is no TIFF, or whose header is cut short, counts as not tiled (Pillow then says why).
    """
    try:
        with open(path, "rb") as file:
            header = file.read(16)
            order = {b"II": "<", b"MM": ">"}.get(header[:2])
            if order is None:
                return False
            layout = _LAYOUT.get(struct.unpack_from(order + "H", header, 2)[0])
            if layout is None:
                return False
            offset_at, offset_format, count_format, tag_size = layout
            file.seek(struct.unpack_from(order + offset_format, header, offset_at)[0])
            count_field = file.read(struct.calcsize(count_format))
            (count,) = struct.unpack(order + count_format, count_field)
            tags = file.read(min(count, _MAX_TAGS) * tag_size)
    except (OSError, ValueError, struct.error):
        return False
    return any(
        struct.unpack_from(order + "H", tags, start)[0] == _TILE_WIDTH
        for start in range(0, len(tags) - 1, tag_size)
    )


def best_level(downsamples: tuple[float, ...], factor: float) -> int:
    """The most down-sampled level that is still at least as fine as `factor` (level-0 pixels
    per output pixel); level 0 when even that is coarser."""
    fine_enough = [
        index
        for index, downsample in enumerate(downsamples)
        if downsample <= factor * (1.0 + LEVEL_TOLERANCE)
    ]
    return max(fine_enough, key=lambda index: downsamples[index], default=0)


def check_mpp(mpp: float, option: str = "--slide-mpp") -> float:
    """A microns-per-pixel value given as `option`, refused unless it is a microscope's."""
    low, high = MPP_RANGE
    if not (math.isfinite(mpp) and low <= mpp <= high):
        raise HistoseekError(f"{option} is microns per pixel, from {low} to {high}; not {mpp}")
    return float(mpp)


def _plausible(mpp: float, where: str) -> tuple[float | None, str]:
    """(mpp, where) when mpp is a microscope's resolution, else (None, why it is not)."""
    low, high = MPP_RANGE
    if math.isfinite(mpp) and low <= mpp <= high:
        return mpp, where
    return None, f"{where} say {mpp:.4g} µm/px, which is no microscope's resolution"


_FALLBACK_SOURCE = "--slide-mpp"


def _or_fallback(
    found: tuple[float | None, str], slide_mpp: float | None
) -> tuple[float | None, str]:
    """The recorded (mpp, where), or --slide-mpp where the file records no usable mpp."""
    if found[0] is None and slide_mpp is not None:
        return slide_mpp, f"{_FALLBACK_SOURCE}, as {found[1]}"
    return found


def _square(mpp_x: float, mpp_y: float, name: str) -> float:
    """The mpp of square pixels; non-square ones would distort every tile."""
    if abs(mpp_x - mpp_y) > 0.02 * max(mpp_x, mpp_y):
        raise SlideError(
            f"{name}: pixels are not square ({mpp_x:.4g} × {mpp_y:.4g} µm); "
            "histoseek reads square pixels only"
        )
    return (mpp_x + mpp_y) / 2


class Slide(abc.ABC):
    """An open slide or image: size, levels, mpp, and RGB regions (transparent areas white)."""

    def __init__(
        self, path: Path, levels: tuple[Level, ...], mpp: float | None, mpp_source: str, vendor: str
    ) -> None:
        self.path = path
        self.levels = levels
        self.mpp = mpp
        self.mpp_source = mpp_source
        """Where the mpp came from ("the file's metadata", "--slide-mpp, as ..."), or why it
        is unknown."""
        self.vendor = vendor
        """OpenSlide's format name (aperio, generic-tiff, ...) or "image" for a plain image."""

    @property
    def name(self) -> str:
        """The path, printable."""
        return display_path(self.path)

    @property
    def mpp_from_option(self) -> bool:
        """Whether the mpp is --slide-mpp's, because the file records none (or none usable)."""
        return self.mpp_source.startswith(_FALLBACK_SOURCE)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.levels[0].width, self.levels[0].height

    def require_mpp(self) -> float:
        """The mpp, or UnknownMppError with a one-line reason naming --slide-mpp."""
        if self.mpp is None:
            raise UnknownMppError(
                f"{self.name}: microns per pixel unknown ({self.mpp_source}); "
                "pass --slide-mpp to give it"
            )
        return self.mpp

    def best_level(self, factor: float) -> int:
        """The level to read for `factor` level-0 pixels per output pixel."""
        return best_level(tuple(level.downsample for level in self.levels), factor)

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        """An RGB image of width × height pixels of `level`, its top left at level-0 (x, y);
        areas outside the slide or transparent in it are white."""
        if not 0 <= level < len(self.levels):
            raise SlideError(f"{self.name}: no level {level} (it has {len(self.levels)})")
        if width < 1 or height < 1 or width * height > MAX_REGION_PIXELS:
            raise SlideError(
                f"{self.name}: cannot read a region of {width}×{height} pixels at once "
                f"(1 to {MAX_REGION_PIXELS:,} pixels)"
            )
        return self._read(int(x), int(y), level, int(width), int(height))

    def read_scaled(
        self, x: int, y: int, width: int, height: int, out_width: int, out_height: int
    ) -> Image.Image:
        """The level-0 region (x, y, width, height) resampled to out_width × out_height.

        It is read from the best level for that scale, in pieces of at most PIECE_SIDE pixels
        a side, so memory stays bounded whatever the region's size.
        """
        if min(width, height, out_width, out_height) < 1:
            raise SlideError(
                f"{self.name}: empty region {width}×{height} → {out_width}×{out_height}"
            )
        if out_width * out_height > MAX_REGION_PIXELS:
            raise SlideError(
                f"{self.name}: an output of {out_width}×{out_height} pixels is too large "
                f"(at most {MAX_REGION_PIXELS:,})"
            )
        level = self.best_level(min(width / out_width, height / out_height))
        downsample = self.levels[level].downsample
        left, top = x / downsample, y / downsample
        scale_x = width / downsample / out_width
        scale_y = height / downsample / out_height
        step_x = max(1, int(PIECE_SIDE / scale_x))
        step_y = max(1, int(PIECE_SIDE / scale_y))
        if step_x >= out_width and step_y >= out_height:
            box = (left, top, left + out_width * scale_x, top + out_height * scale_y)
            return self._resampled(level, box, (out_width, out_height))
        result = Image.new("RGB", (out_width, out_height))
        for out_y in range(0, out_height, step_y):
            for out_x in range(0, out_width, step_x):
                size = (min(step_x, out_width - out_x), min(step_y, out_height - out_y))
                box = (
                    left + out_x * scale_x,
                    top + out_y * scale_y,
                    left + (out_x + size[0]) * scale_x,
                    top + (out_y + size[1]) * scale_y,
                )
                result.paste(self._resampled(level, box, size), (out_x, out_y))
        return result

    def _resampled(
        self, level: int, box: tuple[float, float, float, float], size: tuple[int, int]
    ) -> Image.Image:
        """The `box` of `level` (in that level's pixels, fractional) resized to `size`."""
        downsample = self.levels[level].downsample
        origin = (box[0] * downsample, box[1] * downsample)
        if _whole(box + origin) and (box[2] - box[0], box[3] - box[1]) == size:
            # Whole pixels at the level's own scale: read them, no resampling at all.
            return self.read_region(round(origin[0]), round(origin[1]), level, *size)
        # Lanczos looks 3 source pixels (times the shrink factor) beyond each output pixel.
        margin = math.ceil(3 * max(1.0, (box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1]))
        x0 = math.floor((math.floor(box[0]) - margin) * downsample)
        y0 = math.floor((math.floor(box[1]) - margin) * downsample)
        # OpenSlide starts a level's read at level-0 (x0, y0) / downsample, fractional or not.
        start_x, start_y = x0 / downsample, y0 / downsample
        piece = self.read_region(
            x0,
            y0,
            level,
            math.ceil(box[2] - start_x) + margin,
            math.ceil(box[3] - start_y) + margin,
        )
        local = (box[0] - start_x, box[1] - start_y, box[2] - start_x, box[3] - start_y)
        return piece.resize(size, Image.Resampling.LANCZOS, box=local)

    def thumbnail(self, max_size: int = THUMBNAIL_SIZE) -> Image.Image:
        """The whole slide, its longer side at most `max_size` pixels (never enlarged)."""
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return self.read_scaled(0, 0, width, height, *size)

    @abc.abstractmethod
    def _read(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        """read_region without the argument checks."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file and the memory it holds."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _scales(side0: int, side: int) -> tuple[float, float]:
    """The scales that make `side` of `side0` pixels, give or take LEVEL_ROUNDING pixels."""
    low = side0 / (side + LEVEL_ROUNDING)
    return low, side0 / (side - LEVEL_ROUNDING) if side > LEVEL_ROUNDING else math.inf


def _scaled_down(base: Level, level: Level) -> bool:
    """Whether `level` is level 0 (`base`) scaled down by its downsample, up to rounding.

    Another image among the levels (a wide label strip taken for level 0, say) fails: read
    through such a pyramid, a region of one level is not the same place on another.
    """
    if level.width > base.width or level.height > base.height:
        return False
    low_x, high_x = _scales(base.width, level.width)
    low_y, high_y = _scales(base.height, level.height)
    # One scale must make both sides (the aspect ratio holds). OpenSlide's downsample is the
    # mean of the two sides' ratios, so it need only lie between the two sides' scales.
    return max(low_x, low_y) <= min(high_x, high_y) and (
        min(low_x, low_y) <= level.downsample <= max(high_x, high_y)
    )


def _whole(values: tuple[float, ...]) -> bool:
    return all(abs(value - round(value)) < 1e-9 for value in values)


class _OpenSlideSlide(Slide):
    """A slide read through OpenSlide, region by region."""

    def __init__(self, path: Path, slide_mpp: float | None) -> None:
        openslide = _openslide()
        name = display_path(path)
        try:
            self._handle = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(
                f"{name}: OpenSlide cannot open it (unsupported format, corrupt or truncated)"
            ) from None
        except (openslide.OpenSlideError, OSError) as error:
            raise SlideError(f"{name}: OpenSlide cannot open it ({error})") from None
        self._error_type = openslide.OpenSlideError
        try:
            levels = self._levels(name)
            found = _or_fallback(self._recorded_mpp(openslide, name), slide_mpp)
        except BaseException:
            self._handle.close()
            raise
        vendor = self._handle.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        super().__init__(path, levels, found[0], found[1], vendor)

    def _levels(self, name: str) -> tuple[Level, ...]:
        """The pyramid, checked: positive sizes, downsamples from 1 upwards, and every level
        level 0 scaled down by its downsample (`_scaled_down`)."""
        levels = tuple(
            Level(int(width), int(height), float(downsample))
            for (width, height), downsample in zip(
                self._handle.level_dimensions, self._handle.level_downsamples, strict=True
            )
        )
        downsamples = [level.downsample for level in levels]
        if (
            not levels
            or any(level.width < 1 or level.height < 1 for level in levels)
            or abs(downsamples[0] - 1.0) > 1e-6
            or downsamples != sorted(downsamples)
        ):
            raise SlideError(f"{name}: its pyramid makes no sense ({levels})")
        for number, level in enumerate(levels[1:], 1):
            if not _scaled_down(levels[0], level):
                raise SlideError(
                    f"{name}: its pyramid levels do not agree: level {number} is "
                    f"{level.width}×{level.height} at downsample {level.downsample:.4g}, but "
                    f"level 0 is {levels[0].width}×{levels[0].height}"
                )
        return levels

    def _recorded_mpp(self, openslide: ModuleType, name: str) -> tuple[float | None, str]:
        """The mpp the file records (OpenSlide reads vendor metadata and TIFF resolution tags)."""
        properties = self._handle.properties
        values = (
            properties.get(openslide.PROPERTY_NAME_MPP_X),
            properties.get(openslide.PROPERTY_NAME_MPP_Y),
        )
        if None in values:
            return None, "the file records none"
        try:
            mpp_x, mpp_y = (float(value) for value in values)
        except ValueError:
            return None, f"the file records {values[0]!r} × {values[1]!r}, not numbers"
        return _plausible(_square(mpp_x, mpp_y, name), "the file's metadata")

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        try:
            region = self._handle.read_region((x, y), level, (width, height))
        except self._error_type as error:
            raise SlideError(
                f"{self.name}: cannot read {width}×{height} pixels at ({x}, {y}) of level "
                f"{level} ({error})"
            ) from None
        return to_rgb(region)

    def close(self) -> None:
        self._handle.close()


def _tiff_tag_mpp(image: Image.Image, name: str) -> tuple[float | None, str]:
    """The mpp from a TIFF's XResolution/YResolution/ResolutionUnit, or why there is none."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None, f"a {image.format} image records none"
    if 282 not in tags or 283 not in tags:
        return None, "its TIFF tags record no resolution"
    microns_per_unit = {2: 25400.0, 3: 10000.0}.get(int(tags.get(296, 2)))  # inch (default), cm
    resolution_x, resolution_y = float(tags[282]), float(tags[283])
    if microns_per_unit is None or resolution_x <= 0 or resolution_y <= 0:
        return None, "its TIFF resolution tags have no unit of length"
    mpp = _square(microns_per_unit / resolution_x, microns_per_unit / resolution_y, name)
    return _plausible(mpp, "its TIFF resolution tags")


class _ImageSlide(Slide):
    """A plain image (png, jpg, bmp, stripped tif), decoded whole: a slide of one level."""

    def __init__(self, path: Path, slide_mpp: float | None, max_pixels: int) -> None:
        name = display_path(path)
        try:
            with pixel_limit(max_pixels):  # also lifts Pillow's own check
                with Image.open(path) as header:
                    width, height = header.size
                    found = _or_fallback(_tiff_tag_mpp(header, name), slide_mpp)
                if width * height > max_pixels:
                    raise SlideError(
                        f"{name}: {width}×{height} = {width * height:,} pixels exceeds "
                        f"--max-pixels {max_pixels:,}; a plain image is decoded whole (about "
                        f"{width * height * 3 / 2**30:.1f} GiB): raise --max-pixels or convert "
                        "it to a tiled pyramidal TIFF"
                    )
                with load_rgb(path) as image:
                    # Regions are sliced from an array: Pillow before 13 puts a crop as large
                    # as the image through its decompression-bomb check, which the limit
                    # lifted here no longer covers.
                    self._pixels = np.asarray(image)
        except UnreadableImageError as error:
            raise SlideError(f"{name}: not a readable image ({error.__cause__})") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise SlideError(f"{name}: not a readable image ({error})") from None
        decoded = self._pixels.shape[1::-1]
        if decoded != (width, height):
            raise SlideError(f"{name}: decodes to {decoded}, not {(width, height)}")
        super().__init__(path, (Level(width, height, 1.0),), found[0], found[1], "image")

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        region = np.full((height, width, 3), 255, np.uint8)
        left, top = max(x, 0), max(y, 0)
        right = min(x + width, self._pixels.shape[1])
        bottom = min(y + height, self._pixels.shape[0])
        if left < right and top < bottom:
            inside = self._pixels[top:bottom, left:right]
            region[top - y : bottom - y, left - x : right - x] = inside
        return Image.fromarray(region)

    def close(self) -> None:
        self._pixels = np.empty((0, 0, 3), np.uint8)


def open_slide(
    path: Path | str, slide_mpp: float | None = None, max_pixels: int | None = None
) -> Slide:
    """Open a whole-slide image or a plain image for reading; close it (or use `with`).

    `slide_mpp` (--slide-mpp) is the mpp of a file that records none, or none usable; a
    recorded one always wins. Plain images are decoded whole and must hold at most
    `max_pixels` pixels (default: the limit `pixel_limit` sets, as for every other image);
    slides are never decoded whole. Raises SlideError (one line naming the file) when the
    file cannot be opened.
    """
    path = Path(path)
    if max_pixels is None:
        max_pixels = current_pixel_limit()
    if slide_mpp is not None:
        slide_mpp = check_mpp(slide_mpp)
    if not path.is_file():
        raise SlideError(f"{display_path(path)}: no such file")
    if is_slide_file(path):
        return _OpenSlideSlide(path, slide_mpp)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _ImageSlide(path, slide_mpp, max_pixels)
    known = sorted(VENDOR_EXTENSIONS | IMAGE_EXTENSIONS)
    raise SlideError(
        f"{display_path(path)}: not a slide or image histoseek reads ({', '.join(known)})"
    )
