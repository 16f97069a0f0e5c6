"""What an index holds per item: a plain image, or a tile of a slide, and how to read it back.

An item of a plain image names its file. An item of a slide tile names the slide file and the
tile's square in level-0 pixels (x, y, tile_size) and the resolution it was read at (mpp);
`read_item_image` reads exactly the pixels that were embedded, from either.
"""

from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from PIL import Image

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError
from histoseek.data.sources import ImageSource, load_source, source_name, unreadable_reason
from histoseek.errors import HistoseekError
from histoseek.index.manifest import field_problem, json_type
from histoseek.slide.folder import MULTI_FILE_SUFFIXES, parts_stat, slide_parts
from histoseek.slide.sources import SlideTile
from histoseek.slide.tiling import Tile

#: The fields only a slide tile has; all set or all None.
TILE_FIELDS = ("slide_id", "x", "y", "tile_size", "mpp")


@dataclass(frozen=True)
class IndexItem:
    """One indexed image or slide tile. `path` is relative to the indexed folder,
    '/'-separated; bytes that are not UTF-8 are kept as surrogate escapes (JSON stores them
    as \\udcXX).

    For a tile, `path` is its slide's file, `label` the slide's label, `width` and `height`
    the tile's size as read (the patch size), `size` and `mtime_ns` the slide file's, and
    the tile fields say where it lies and at which resolution it was read.
    """

    path: str
    label: str
    width: int
    height: int
    size: int
    mtime_ns: int
    slide_id: str | None = None
    """The slide's id: its file stem (its folder's name for DICOM), or as --labels says."""
    group: str | None = None
    """The patient or case: from --group-regex or --labels; for a tile, the slide id if
    neither says. A plain image has one only where --group-regex matches its path."""
    x: int | None = None
    """Left of the tile's square, in level-0 pixels of the slide."""
    y: int | None = None
    """Top of the tile's square, in level-0 pixels of the slide."""
    tile_size: int | None = None
    """Side of the tile's square, in level-0 pixels."""
    mpp: float | None = None
    """Microns per pixel the tile was read at (the index's --mpp)."""

    @property
    def is_tile(self) -> bool:
        """Whether the item is a slide tile (else a plain image)."""
        return self.x is not None

    @property
    def order(self) -> tuple[bytes, int, int]:
        """What tells items apart, and where one sits in an index: by path bytes, then a
        slide's tiles row by row."""
        return (
            os.fsencode(self.path),
            -1 if self.y is None else self.y,
            -1 if self.x is None else self.x,
        )

    def tile(self) -> Tile:
        """The slide tile this item was read from (tiles only)."""
        if not self.is_tile:
            raise ValueError(f"{display_path(self.path)} is a plain image, not a slide tile")
        return Tile(self.x, self.y, self.tile_size, self.width, self.mpp, 0.0)


def item_json(item: IndexItem) -> str:
    """One items.jsonl line: every field of a plain image's item, the tile fields only when set."""
    # Every field is a plain value, so the fields are read directly: asdict's deep copy of each
    # one cost more than the JSON itself.
    values = ((name, getattr(item, name)) for name in _FIELD_NAMES)
    return json.dumps({name: value for name, value in values if value is not None})


_ITEM_TYPES = typing.get_type_hints(IndexItem)
_FIELD_NAMES = tuple(field.name for field in fields(IndexItem))
_REQUIRED = [
    name for name, spec in IndexItem.__dataclass_fields__.items() if spec.default is MISSING
]


def _path_problem(path: str) -> str | None:
    """Why an item path is not a plain relative path inside the indexed folder, if it is not."""
    if not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute"
    if "\0" in path:
        return "holds a NUL character"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "is not a plain relative path (it has an empty, '.' or '..' part)"
    return None


def parse_item(line: str) -> IndexItem:
    """One items.jsonl line as an IndexItem, every field checked; ValueError says what is
    wrong. The fields of a slide tile come all together or not at all (`item_json` leaves
    out those of a plain image)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_type(data)}, not an object")
    unknown = sorted(set(data) - set(_ITEM_TYPES))
    if unknown:
        raise ValueError(f'"{unknown[0]}" is not an item field')
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ValueError(f'"{missing[0]}" is missing')
    for name, value in data.items():
        problem = field_problem(name, value, _ITEM_TYPES[name])
        if problem is not None:
            raise ValueError(problem)
    problem = _path_problem(data["path"])
    if problem is not None:
        raise ValueError(f'"path" {problem}: {data["path"]!r}')
    for name in ("width", "height", "size", "x", "y"):
        if (data.get(name) or 0) < 0:
            raise ValueError(f'"{name}" must be 0 or more, not {data[name]}')
    tile_fields = [name for name in TILE_FIELDS if data.get(name) is not None]
    if tile_fields:
        missing = [name for name in (*TILE_FIELDS, "group") if data.get(name) is None]
        if missing:
            raise ValueError(f'a slide tile needs "{missing[0]}" too')
        if not data["width"] == data["height"] >= 1 or data["tile_size"] < 1:
            raise ValueError(
                f"a slide tile is a square of 1 pixel or more, not {data['width']}×"
                f"{data['height']} of a {data['tile_size']}-pixel square"
            )
        if not (math.isfinite(data["mpp"]) and data["mpp"] > 0):
            raise ValueError(f'"mpp" must be a positive number, not {data["mpp"]}')
        data["mpp"] = float(data["mpp"])
    return IndexItem(**data)


def item_source(index_root: Path | str, item: IndexItem) -> ImageSource:
    """What to read for an item of the index of `index_root`: its file, or its slide tile."""
    path = Path(index_root) / item.path
    return SlideTile(path, item.tile()) if item.is_tile else path


@dataclass(frozen=True)
class IndexedSource:
    """An item's pixels as the index embedded them: read only while its file is as it was
    when indexed, since a file changed since then would show other pixels as the hit."""

    path: Path
    """The item's file (for a tile, the file OpenSlide opens)."""
    item: IndexItem

    def load(self) -> Image.Image:
        """The item's pixels, or UnreadableImageError when the file has changed since."""
        if self.changed():
            raise UnreadableImageError("it has changed since it was indexed")
        source = SlideTile(self.path, self.item.tile()) if self.item.is_tile else self.path
        return load_source(source)

    def changed(self) -> bool:
        """Whether the file (for a multi-file slide, any of its files) differs from what the
        index recorded (not when one cannot be stat'ed: reading it then says what is wrong)."""
        multi_file = self.item.is_tile and self.path.suffix.lower() in MULTI_FILE_SUFFIXES
        try:
            if multi_file:
                # The index recorded the total size and newest mtime of all the slide's files.
                found = parts_stat(slide_parts(self.path))
            else:
                info = os.stat(self.path)
                found = info.st_size, info.st_mtime_ns
        except OSError:
            return False
        return found != (self.item.size, self.item.mtime_ns)

    def __str__(self) -> str:
        where = f" (tile at {self.item.x}, {self.item.y})" if self.item.is_tile else ""
        return f"{display_path(self.path)}{where}"


def read_item_image(index_root: Path | str, item: IndexItem) -> Image.Image:
    """An item's pixels as RGB: its image file decoded whole, or its tile read again from its
    slide at the same place, level and resolution as when it was embedded (a patch_size ×
    patch_size image, the very pixels embedded).

    `index_root` is the indexed folder (the manifest's source_dir). A file that cannot be
    read any more, or that has changed since it was indexed, is one HistoseekError.
    """
    source = IndexedSource(Path(index_root) / item.path, item)
    try:
        return load_source(source)
    except UnreadableImageError as error:
        reason = unreadable_reason(source, error)
        raise HistoseekError(f"cannot read {source_name(source)}: {reason}") from None
