"""Embedding shards: the embeddings of one slide, or of the loose images, kept between runs.

An index run writes one shard per slide as soon as that slide is embedded, and one for the
plain images below the folder; while it embeds many plain images it keeps each finished chunk
of them as a part shard, which the next run reuses if this one is killed. A later run (after a
kill, or on a changed folder) reuses every shard whose slide, model and tiling options still
match, and builds the trees over all of them.
Each shard is a folder INDEX/shards/<name>/ holding

- `shard.json`: what it holds and how it was made (see `ShardInfo`);
- `items.jsonl`: one item per embedding, as in the index's own items.jsonl;
- `embeddings.npy`: a (items, dim) float32 array of unit vectors, row i for item i.

A slide's shard is named after its path below the indexed folder alone (`shard_name`), so
shards embedded on several machines from copies of the same folder can be put side by side.
The plain images' shard is `images`; its parts are `images.<number>.part` (`images_part_name`).
Every shard is checked before it is reused; one that fails a check is embedded again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import typing
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from histoseek import __version__
from histoseek.fsutil import atomic_dir, file_sha256
from histoseek.index.items import IndexItem, item_json, parse_item
from histoseek.index.store import read_matrix
from histoseek.inference import EMBEDDING_PRECISIONS

SHARD_FORMAT = "histoseek-shard"
SHARD_VERSION = 1
SHARD_INFO = "shard.json"
SHARD_ITEMS = "items.jsonl"
SHARD_EMBEDDINGS = "embeddings.npy"
#: The shard of the plain images below the folder (slide shards end in a hash, so never this).
IMAGES_SHARD = "images"
# A part's name ends in ".part", where a slide shard's ends in 16 hex digits.
_IMAGES_PART = re.compile(rf"{IMAGES_SHARD}\.([0-9]+)\.part")
SHARD_DTYPE = "float32"


class ShardError(ValueError):
    """A shard that cannot be trusted: its message says which check it failed."""


@dataclass(frozen=True)
class SlideRecord:
    """The slide file a shard was cut from, as it was when it was embedded."""

    path: str
    """Relative to the indexed folder, '/'-separated."""
    size: int
    mtime_ns: int
    mpp: float
    """The slide's own level-0 microns per pixel that the tiles were measured with."""
    mpp_from_option: bool
    """Whether that mpp was --slide-mpp (the file records none) rather than the file's."""


@dataclass(frozen=True)
class ShardInfo:
    """shard.json: what a shard holds and everything its embeddings depend on."""

    model_fingerprint: str
    model_config: dict
    tiling: dict | None
    """For a slide: {"mpp", "patch_size", "min_tissue"} it was tiled with; None for images."""
    slide: SlideRecord | None
    """The slide, or None for the shard of plain images."""
    items: int
    dim: int
    tta: bool = False
    """Embedded with test-time augmentation (8 flips and rotations averaged)."""
    precision: str = "fp32"
    """What the backend computed in (one of EMBEDDING_PRECISIONS)."""
    files: dict | None = None
    """sha256 of items.jsonl and embeddings.npy, by name: what ties the shard's three files
    together when shards are copied between machines (None in shards from before it)."""
    dtype: str = SHARD_DTYPE
    histoseek_version: str = __version__
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def recipe(self) -> tuple[str, dict, bool, str]:
        """How its embeddings were made: model fingerprint and config, TTA, precision."""
        return self.model_fingerprint, self.model_config, self.tta, self.precision

    def to_dict(self) -> dict:
        """The info as written to shard.json."""
        return {"format": SHARD_FORMAT, "format_version": SHARD_VERSION, **asdict(self)}


@dataclass
class Shard:
    """A checked shard: its info, its items, and its embeddings (memory-mapped)."""

    path: Path
    info: ShardInfo
    items: list[IndexItem]
    embeddings: np.ndarray


def shard_name(slide_path: str) -> str:
    """The shard folder name of a slide: its stem made safe, and a hash of its relative path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(slide_path).stem).strip("._")[:60]
    digest = hashlib.sha256(os.fsencode(slide_path)).hexdigest()[:16]
    return f"{stem or 'slide'}-{digest}"


def images_part_name(number: int) -> str:
    """The shard folder name of part `number` of the plain images (never a slide shard's)."""
    return f"{IMAGES_SHARD}.{number:06d}.part"


def images_part_number(name: str) -> int | None:
    """The number of the plain images' part named `name`; None if `name` names no part."""
    match = _IMAGES_PART.fullmatch(name)
    if match is None or images_part_name(int(match[1])) != name:
        return None
    return int(match[1])


def holds_plain_images(name: str) -> bool:
    """Whether the shard folder `name` is the plain images' shard or a part of it."""
    return name == IMAGES_SHARD or images_part_number(name) is not None


def write_shard(
    shards_dir: Path, name: str, info: ShardInfo, items: list[IndexItem], embeddings: np.ndarray
) -> Path:
    """Write a shard to shards_dir/name (replacing any there); it appears only when whole."""
    embeddings = np.ascontiguousarray(embeddings, dtype=SHARD_DTYPE)
    if embeddings.shape != (info.items, info.dim) or len(items) != info.items:
        raise ValueError(f"shard {name}: {len(items)} items, embeddings {embeddings.shape}")
    target = Path(shards_dir) / name
    with atomic_dir(target) as staging:
        np.save(staging / SHARD_EMBEDDINGS, embeddings)
        with open(staging / SHARD_ITEMS, "w", encoding="utf-8") as out:
            for item in items:
                out.write(item_json(item) + "\n")
        files = {file: file_sha256(staging / file) for file in (SHARD_ITEMS, SHARD_EMBEDDINGS)}
        (staging / SHARD_INFO).write_text(
            json.dumps(replace(info, files=files).to_dict(), indent=2) + "\n", encoding="utf-8"
        )
    return target


def _check_files(path: Path, info: ShardInfo) -> None:
    """Refuse a shard whose items.jsonl or embeddings.npy is not the file its shard.json was
    written with (say, one copied in from another machine's shard of the same slide)."""
    if info.files is None:
        return
    if sorted(info.files) != sorted((SHARD_ITEMS, SHARD_EMBEDDINGS)):
        raise ShardError(f'shard.json: "files" names {sorted(info.files)}')
    for file, recorded in info.files.items():
        try:
            found = file_sha256(path / file)
        except FileNotFoundError:
            raise ShardError(f"it has no {file}") from None
        except OSError as error:
            raise ShardError(f"{file} cannot be read ({error.strerror or error})") from None
        if found != recorded:
            raise ShardError(f"{file} is not the file its shard.json was written with")


_INFO_TYPES = typing.get_type_hints(ShardInfo)
_SLIDE_TYPES = typing.get_type_hints(SlideRecord)
_KINDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
}


def _typed(name: str, value: object, kind: object) -> object:
    """`value` if it is of `kind` (a type, or `type | None`), else ShardError."""
    options = typing.get_args(kind) or (kind,)
    for option in options:
        if option is type(None) and value is None:
            return value
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if option in _KINDS and isinstance(value, option):
            if option is int and isinstance(value, bool):
                continue
            return value
        if option is SlideRecord and isinstance(value, dict):
            return _slide_record(value)
    raise ShardError(f'shard.json: "{name}" must be {_KINDS.get(options[0], "an object")}')


def _slide_record(data: dict) -> SlideRecord:
    if set(data) != set(_SLIDE_TYPES):
        raise ShardError(f'shard.json: "slide" must have exactly {", ".join(_SLIDE_TYPES)}')
    return SlideRecord(**{name: _typed(name, data[name], _SLIDE_TYPES[name]) for name in data})


def read_shard_info(path: Path) -> ShardInfo:
    """The checked shard.json of the shard folder at `path` alone: enough to tell whether a
    shard fits before reading the rest of it (read_shard checks it all)."""
    try:
        data = json.loads((Path(path) / SHARD_INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError("it has no shard.json") from None
    except OSError as error:
        raise ShardError(f"shard.json cannot be read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardError(f"shard.json is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
        raise ShardError("shard.json is not a histoseek shard's")
    if data.get("format_version") != SHARD_VERSION:
        raise ShardError(
            f"shard format version {data.get('format_version')!r}; this histoseek writes "
            f"and reads version {SHARD_VERSION}"
        )
    # Shards written before test-time augmentation (or INT8 and FP16 backends) existed were
    # embedded without it, in FP32.
    data.setdefault("tta", False)
    data.setdefault("precision", "fp32")
    data.setdefault("files", None)
    missing = [name for name in _INFO_TYPES if name not in data]
    if missing:
        raise ShardError(f'shard.json: "{missing[0]}" is missing')
    info = ShardInfo(**{name: _typed(name, data[name], kind) for name, kind in _INFO_TYPES.items()})
    if info.items < 0 or info.dim < 1:
        raise ShardError(f"shard.json: {info.items} items of dim {info.dim}")
    if info.dtype != SHARD_DTYPE:
        raise ShardError(f"shard.json: dtype {info.dtype!r}, not {SHARD_DTYPE}")
    if info.precision not in EMBEDDING_PRECISIONS:
        raise ShardError(
            f"shard.json: precision {info.precision!r}, not {' or '.join(EMBEDDING_PRECISIONS)}"
        )
    if (info.slide is None) != (info.tiling is None):
        raise ShardError("shard.json: a slide's shard needs both slide and tiling, images neither")
    return info


def _read_embeddings(path: Path, info: ShardInfo) -> np.ndarray:
    """embeddings.npy as a memory-mapped (items, dim) array of unit vectors, checked as the
    index's own; ShardError if not."""
    try:
        array = read_matrix(path, info.items, info.dim, info.dtype, "shard.json")
    except FileNotFoundError:
        raise ShardError(f"it has no {path.name}") from None
    except OSError as error:
        raise ShardError(f"{path.name} cannot be read ({error.strerror or error})") from None
    except ValueError as error:
        raise ShardError(f"{path.name}: {error}") from None
    return array


def _read_items(path: Path, count: int) -> list[IndexItem]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardError(f"it has no {path.name}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ShardError(f"{path.name} cannot be read ({error})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(parse_item(line))
            except ValueError as error:
                raise ShardError(f"{path.name}, line {number}: {error}") from None
    if len(items) != count:
        raise ShardError(f"{path.name} lists {len(items)} items, shard.json says {count}")
    # In the index's own order (paths sorted, a slide's tiles row by row), which the index's
    # reader requires: a shard out of it would build an index that query refuses.
    for number, (earlier, later) in enumerate(itertools.pairwise(items), 2):
        if later.order <= earlier.order:
            problem = "twice" if later.order == earlier.order else "out of order"
            raise ShardError(f"{path.name}, line {number}: {later.path!r} is listed {problem}")
    return items


def _check_items(name: str, info: ShardInfo, items: list[IndexItem]) -> None:
    """Items that agree with the shard: tiles of its slide at its tiling, or plain images."""
    if info.slide is None:
        if not holds_plain_images(name):
            raise ShardError(
                f"a shard of plain images must be named {IMAGES_SHARD!r}, or "
                f"{images_part_name(1)!r} and so on for a part of it"
            )
        if any(item.is_tile for item in items):
            raise ShardError("the shard of plain images lists a slide tile")
        return
    slide = info.slide
    if name != shard_name(slide.path):
        raise ShardError(f"it is named {name!r}, but {slide.path!r}'s shard is not")
    for item in items:
        if not item.is_tile or item.path != slide.path:
            raise ShardError(f"it lists {item.path!r}, which is no tile of {slide.path!r}")
        if (item.size, item.mtime_ns) != (slide.size, slide.mtime_ns):
            raise ShardError("its items and shard.json disagree on the slide's size or mtime")
        if item.width != info.tiling.get("patch_size") or not math.isclose(
            item.mpp, info.tiling.get("mpp", math.nan)
        ):
            raise ShardError("its tiles disagree with its tiling options")


def read_shard(path: Path) -> Shard:
    """Read and check the shard folder at `path`; ShardError says what is wrong with it."""
    path = Path(path)
    info = read_shard_info(path)
    items = _read_items(path / SHARD_ITEMS, info.items)
    _check_items(path.name, info, items)
    embeddings = _read_embeddings(path / SHARD_EMBEDDINGS, info)
    _check_files(path, info)  # last: a file damaged on its own is named for what is wrong
    return Shard(path, info, items, embeddings)


def shard_folders(shards_dir: Path) -> list[Path]:
    """The shard folders in `shards_dir`, by name (hidden names are temporaries, not shards)."""
    if not Path(shards_dir).is_dir():
        return []
    return sorted(
        entry
        for entry in Path(shards_dir).iterdir()
        if not entry.name.startswith(".") and entry.is_dir()
    )


def images_parts(shards_dir: Path) -> list[Path]:
    """The part shards of plain images in `shards_dir`, oldest (lowest number) first."""
    parts = [
        (number, folder)
        for folder in shard_folders(shards_dir)
        if (number := images_part_number(folder.name)) is not None
    ]
    return [folder for _, folder in sorted(parts)]


def remove_temporaries(shards_dir: Path) -> None:
    """Remove what runs killed while writing a shard left in `shards_dir` (hold the lock)."""
    if Path(shards_dir).is_dir():
        for entry in Path(shards_dir).iterdir():
            if entry.name.startswith("."):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def link_shard(shard: Path, target: Path) -> None:
    """Put a copy of a shard folder at `target`: hard links where the file system allows,
    so keeping a shard in the next version of the index costs no space or time."""
    target.mkdir(parents=True)
    for file in (SHARD_INFO, SHARD_ITEMS, SHARD_EMBEDDINGS):
        try:
            os.link(shard / file, target / file)
        except OSError:
            shutil.copy2(shard / file, target / file)
