"""The index manifest: what built an index, and the checks that an index can still be used."""

from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from histoseek import __version__
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.index.defaults import DEFAULT_INDEX_DIR
from histoseek.inference import EMBEDDING_PRECISIONS
from histoseek.prepare.defaults import DEFAULT_MIN_TISSUE, DEFAULT_PATCH_SIZE
from histoseek.slide.defaults import DEFAULT_MPP

INDEX_FORMAT = "histoseek-index"
#: 2: slide tiles among the items, the tiling options in the manifest, embedding shards.
FORMAT_VERSION = 2

MANIFEST_NAME = "manifest.json"
ANNOY_NAME = "annoy.ann"
EMBEDDINGS_NAME = "embeddings.npy"
ITEMS_NAME = "items.jsonl"
SKIPPED_NAME = "skipped.txt"
SHARDS_NAME = "shards"
METRIC = "angular"
EMBEDDINGS_DTYPE = "float32"


@dataclass
class Manifest:
    """Everything needed to reuse an index, and to tell whether it still matches its model."""

    source_dir: str
    model_reference: str
    model_fingerprint: str
    model_config: dict
    backend: str
    dim: int
    trees: int
    seed: int
    items: int
    skipped: int
    slides: int = 0
    """How many slides the items are tiles of (0: only plain images)."""
    mpp: float = DEFAULT_MPP
    """Microns per pixel slide tiles were read at (--mpp): read query regions at it too."""
    patch_size: int = DEFAULT_PATCH_SIZE
    """Side in pixels of a slide tile as read (--patch-size)."""
    min_tissue: float = DEFAULT_MIN_TISSUE
    """Smallest tissue fraction of a kept tile (--min-tissue)."""
    slide_mpp: float | None = None
    """Microns per pixel given for slides whose files record none (--slide-mpp), or None."""
    tta: bool = False
    """Embedded with test-time augmentation (8 flips and rotations averaged); so are queries."""
    precision: str = "fp32"
    """What every embedding was computed in (one of EMBEDDING_PRECISIONS)."""
    metric: str = METRIC
    embeddings_dtype: str = EMBEDDINGS_DTYPE
    format_version: int = FORMAT_VERSION
    histoseek_version: str = __version__
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict:
        """The manifest as written to manifest.json."""
        return {"format": INDEX_FORMAT, **asdict(self)}


class DamagedIndexError(HistoseekError):
    """An index whose files are missing, unreadable or disagree: it can be rebuilt, not used.

    `manifest` is the index's manifest when that is whole (so it says what was indexed).
    """

    def __init__(self, index_dir: Path, file: Path, problem: str, manifest: Manifest | None = None):
        super().__init__(
            f"the index {display_path(index_dir)} is damaged: {display_path(file)}: {problem}"
        )
        self.manifest = manifest


def json_type(value: object) -> str:
    """What a JSON value is, in the words of an error message."""
    for kind, name in (
        (bool, "true/false"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "an object"),
    ):
        if isinstance(value, kind):
            return name
    return "null"


def field_problem(name: str, value: object, kind: object) -> str | None:
    """Why a JSON field's value is not of `kind` (str, int, float, dict, or one of them
    `| None`), or None when it is. An integer is a float's value too; true/false no number."""
    kinds = typing.get_args(kind) or (kind,)
    for option in kinds:
        if option is type(None):
            if value is None:
                return None
        elif isinstance(value, bool):
            if option is bool:
                return None
        elif isinstance(value, option) or (option is float and isinstance(value, int)):
            return None
    wanted = " or ".join(json_type(option()) for option in kinds)
    return f'"{name}" must be {wanted}, not {json_type(value)}'


# format_version first: another version may well have other fields.
_MANIFEST_TYPES = {"format_version": int, **typing.get_type_hints(Manifest)}
_POSITIVE = ("dim", "trees", "items", "patch_size")


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json into an index folder being built (atomic_dir swaps it in whole)."""
    (Path(index_dir) / MANIFEST_NAME).write_text(
        json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8"
    )


def read_manifest(index_dir: Path) -> Manifest:
    """Read and check an index's manifest field by field.

    Not an index, or one of another format version: HistoseekError. A manifest that is not
    valid JSON, lacks a field or has one of the wrong type or value: DamagedIndexError.
    """
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_NAME
    shown = display_path(index_dir)
    if not path.is_file():
        raise HistoseekError(f"{shown} is not a histoseek index (it has no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DamagedIndexError(index_dir, path, f"cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedIndexError(index_dir, path, f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DamagedIndexError(index_dir, path, f"{json_type(data)}, not an object")
    if data.get("format") != INDEX_FORMAT:
        raise HistoseekError(f"{shown} is not a histoseek index (unknown manifest format)")

    def damaged(problem: str) -> DamagedIndexError:
        return DamagedIndexError(index_dir, path, problem)

    # Indexes written before test-time augmentation (or INT8 and FP16 backends) existed were
    # embedded without it, in FP32.
    data.setdefault("tta", False)
    data.setdefault("precision", "fp32")
    for name, kind in _MANIFEST_TYPES.items():
        if name not in data:
            raise damaged(f'"{name}" is missing')
        problem = field_problem(name, data[name], kind)
        if problem is not None:
            raise damaged(problem)
        if name == "format_version" and data[name] != FORMAT_VERSION:
            raise HistoseekError(
                f"{shown} has index format version {data[name]}, but this histoseek "
                f"({__version__}) reads version {FORMAT_VERSION}; rebuild it with "
                f"`histoseek index DIR -o {shown} --overwrite`"
            )
    manifest = Manifest(**{name: data[name] for name in _MANIFEST_TYPES})
    for name in _POSITIVE:
        if getattr(manifest, name) < 1:
            raise damaged(f'"{name}" must be 1 or more, not {getattr(manifest, name)}')
    for name in ("skipped", "slides"):
        if getattr(manifest, name) < 0:
            raise damaged(f'"{name}" must be 0 or more, not {getattr(manifest, name)}')
    for name in ("mpp", "slide_mpp"):
        value = getattr(manifest, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise damaged(f'"{name}" must be a positive number of microns per pixel, not {value}')
    if manifest.precision not in EMBEDDING_PRECISIONS:
        raise damaged(
            f'"precision" is {manifest.precision!r}, not {" or ".join(EMBEDDING_PRECISIONS)}'
        )
    if not 0 <= manifest.min_tissue <= 1:
        raise damaged(f'"min_tissue" must be a fraction from 0 to 1, not {manifest.min_tissue}')
    if not os.path.isabs(manifest.source_dir):
        raise damaged(f'"source_dir" must be an absolute path, not {manifest.source_dir!r}')
    for name, only in (("metric", METRIC), ("embeddings_dtype", EMBEDDINGS_DTYPE)):
        if getattr(manifest, name) != only:
            raise damaged(
                f'"{name}" is {getattr(manifest, name)!r}; histoseek indexes use {only!r}'
            )
    return manifest


def locate_index(index_dir: Path | None) -> Path:
    """The index folder to query: `index_dir`, or the default one; says what to run if absent."""
    if index_dir is None:
        if not (DEFAULT_INDEX_DIR / MANIFEST_NAME).is_file():
            raise HistoseekError(
                f"no index at ./{DEFAULT_INDEX_DIR}; "
                "run `histoseek index DIR` first or pass --index"
            )
        return DEFAULT_INDEX_DIR
    if not Path(index_dir).exists():
        shown = display_path(index_dir)
        raise HistoseekError(
            f"no index at {shown}; run `histoseek index DIR -o {shown}` first or pass --index"
        )
    return Path(index_dir)
